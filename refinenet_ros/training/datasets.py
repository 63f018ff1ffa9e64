"""Labelled image sets in the layouts users have, and the training augmentation.

Readers only list (image, label) file pairs up front — failing early, with the folder
they looked in, when a layout is wrong or a label is missing — and decode lazily, so a
5000-image Cityscapes split costs nothing until it is iterated.

Every reader yields labels as network class ids with :data:`IGNORE_INDEX` for pixels
not to score: Cityscapes ``labelIds`` go through ``CITYSCAPES_ID_TO_TRAINID``; VOC
palette PNGs already hold class ids (255 = boundary); exports that reserve 0 for
"unlabelled" (ADE20K, NYUDv2-40, SUN-RGBD) take ``label_offset=1`` (value - 1, 0 → ignore).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.io import read_rgb
from refinenet_ros.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, LabelMapping

log = logging.getLogger("refinenet_ros")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".pgm", ".bmp")
DATASET_FORMATS: tuple[str, ...] = ("camvid", "cityscapes", "voc", "ade20k", "idd_lite", "folders")
DEFAULT_SPLITS = {"camvid": "val", "cityscapes": "val", "voc": "val", "ade20k": "validation",
                  "idd_lite": "val", "folders": ""}  # fmt: skip
#: CamVid (SegNet release) marks unlabelled pixels with class 11.
CAMVID_UNLABELLED = 11


class DatasetError(RefineNetRosError, ValueError):
    """The data set layout is not what the reader expects; the message says where and why."""


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path


def _lut_from_mapping(mapping: dict[int, int], size: int = 65536) -> npt.NDArray[np.uint16]:
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint16)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def _offset_lut(offset: int, size: int = 65536) -> npt.NDArray[np.uint16]:
    values = np.arange(size, dtype=np.int64) - offset
    lut = np.where(values < 0, IGNORE_INDEX, values).astype(np.uint16)
    lut[IGNORE_INDEX] = IGNORE_INDEX  # an explicit ignore stays ignore
    return lut


def read_label(path: Path) -> npt.NDArray[np.uint16]:
    """Label image -> HxW class values without colour mapping (palette or greyscale)."""
    from refinenet_ros.io import UnreadableImage, read_label_png

    try:
        arr = read_label_png(path)
    except UnreadableImage:
        raise
    except ValueError as exc:
        raise DatasetError(
            f"{exc}; colour-coded (RGB) label images must first be converted to class ids"
        ) from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: label image must be single-channel, got shape {arr.shape}")
    return arr.astype(np.uint16, copy=False)


class SegmentationDataset:
    """A list of (image, label) files plus the label mapping; indexable, lazy."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        description: str,
        lut: npt.NDArray[np.uint16] | None = None,
    ) -> None:
        if not samples:
            raise DatasetError(f"{description}: no labelled images found")
        self.samples = list(samples)
        self.description = description
        self.lut = lut
        #: the label set a mapping brought the labels to (None: the files' own classes)
        self.mapped_to: str | None = None
        #: coarse labels: the union mapping from the file's classes to the model's (labels
        #: then stay source class ids; train and evaluate go through the unions)
        self.unions: LabelMapping | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16]]:
        """(RGB uint8 HxWx3, labels uint16 HxW with IGNORE_INDEX for unscored pixels)."""
        s = self.samples[index]
        image = read_rgb(s.image)
        label = read_label(s.label)
        if self.lut is not None:
            label = self.lut[label]
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{s.name}: image {s.image.name} is {image.shape[1]}x{image.shape[0]} but label "
                f"{s.label.name} is {label.shape[1]}x{label.shape[0]}"
            )
        return image, label

    def subset(self, count: int) -> SegmentationDataset:
        """The first ``count`` samples (quick checks on a big split)."""
        subset = SegmentationDataset(self.samples[:count], description=self.description, lut=self.lut)
        subset.mapped_to = self.mapped_to
        subset.unions = self.unions
        return subset


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder``, sorted: what a data set (and the labelling tool) sees."""
    return _files(folder, IMAGE_SUFFIXES)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: folder {path} does not exist")
    return path


def cityscapes(root: str | Path, split: str = "val") -> SegmentationDataset:
    """ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png + ROOT/gtFine/SPLIT/CITY/*_gtFine_labelIds.png."""
    root = Path(root)
    img_dir = _require_dir(root / "leftImg8bit" / split, "cityscapes images")
    gt_dir = _require_dir(root / "gtFine" / split, "cityscapes labels")
    samples: list[Sample] = []
    missing: list[str] = []
    for img in sorted(img_dir.rglob("*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        label = gt_dir / img.parent.relative_to(img_dir) / f"{stem}_gtFine_labelIds.png"
        if label.is_file():
            samples.append(Sample(stem, img, label))
        else:
            missing.append(str(label))
    if missing:
        raise DatasetError(f"cityscapes: {len(missing)} images have no gtFine labelIds, e.g. {missing[0]}")
    return SegmentationDataset(
        samples, description=f"cityscapes {split} ({root})", lut=_lut_from_mapping(CITYSCAPES_ID_TO_TRAINID)
    )


def camvid(root: str | Path, split: str = "val") -> SegmentationDataset:
    """ROOT/SPLIT/*.png + ROOT/SPLITannot/*.png (the SegNet tutorial's 11-class CamVid).

    Splits: ``train``, ``val``, ``test``, or several joined with ``+`` (``train+val``: the
    CamVid literature retrains the chosen recipe on both). Label 11 (unlabelled) is ignored.
    """
    root = Path(root)
    samples: list[Sample] = []
    for part in split.split("+"):
        img_dir = _require_dir(root / part, f"camvid {part} images")
        lab_dir = _require_dir(root / f"{part}annot", f"camvid {part} labels")
        for img in _files(img_dir, IMAGE_SUFFIXES):
            label = lab_dir / f"{img.stem}.png"
            if not label.is_file():
                raise DatasetError(f"camvid: {img.name} in {img_dir} has no label {label}")
            samples.append(Sample(img.stem, img, label))
    return SegmentationDataset(
        samples,
        description=f"camvid {split} ({root})",
        lut=_lut_from_mapping({v: v for v in range(CAMVID_UNLABELLED)}),
    )


IDD_LITE_MAPPING = "idd_level1_to_camvid"
"""The bundled mapping of IDD-Lite's 7 level-1 classes onto CamVid's (unions)."""
IDD_LITE_SPLITS = ("train", "val", "train_fit", "train_holdout")


def idd_lite_holdout(sequence: str) -> bool:
    """The held-out slice of IDD-Lite train: whole sequence folders whose name ends in 0
    (about a tenth of the frames), so no near-duplicate of a held-out frame is trained on."""
    return sequence.endswith("0")


def idd_lite(root: str | Path, split: str = "val") -> SegmentationDataset:
    """ROOT/leftImg8bit/SPLIT/SEQ/ID_image.jpg + ROOT/gtFine/SPLIT/SEQ/ID_label.png (IDD-Lite).

    Labels are the 7 IDD level-1 ids (0 drivable .. 6 sky, 255 void), kept as they are:
    a model of other classes reads them through a union mapping (``idd_level1_to_camvid``).
    Besides ``train`` and ``val``: ``train_holdout``, the sequences of train that
    :func:`idd_lite_holdout` keeps back for selecting a model, and ``train_fit``, the rest.
    """
    root = Path(root)
    if split not in IDD_LITE_SPLITS:
        raise DatasetError(f"idd_lite: unknown split {split!r}; choose one of {', '.join(IDD_LITE_SPLITS)}")
    part = "train" if split.startswith("train") else split
    img_dir = _require_dir(root / "leftImg8bit" / part, "idd_lite images")
    gt_dir = _require_dir(root / "gtFine" / part, "idd_lite labels")
    samples: list[Sample] = []
    for img in sorted(img_dir.rglob("*_image.jpg"), key=lambda p: (p.parent.name, p.name)):
        seq = img.parent.name
        if split in ("train_fit", "train_holdout") and idd_lite_holdout(seq) != (split == "train_holdout"):
            continue
        label = gt_dir / img.parent.relative_to(img_dir) / (img.name[: -len("_image.jpg")] + "_label.png")
        if not label.is_file():
            raise DatasetError(f"idd_lite: {img} has no label {label}")
        samples.append(Sample(f"{seq}/{img.name[: -len('_image.jpg')]}", img, label))
    return SegmentationDataset(samples, description=f"idd_lite {split} ({root})")


class MixedDataset(SegmentationDataset):
    """Two labelled sets drawn in a fixed proportion: ``ratio`` of the items come from
    ``other`` (e.g. coarse IDD-Lite frames beside CamVid's fine ones), whatever the sets'
    sizes. The smaller share is repeated, so one pass over the items sees each set whole."""

    def __init__(self, main: SegmentationDataset, other: SegmentationDataset, ratio: float) -> None:
        if not 0.0 < ratio < 1.0:
            raise DatasetError(f"mix ratio {ratio}: must be between 0 and 1 (exclusive)")
        total = max(len(main) / (1.0 - ratio), len(other) / ratio)
        self.main_count = max(len(main), round(total * (1.0 - ratio)))
        self.other_count = max(len(other), round(total * ratio))
        self.main, self.other = main, other
        samples = [main.samples[i % len(main)] for i in range(self.main_count)]
        samples += [other.samples[i % len(other)] for i in range(self.other_count)]
        super().__init__(samples, description=f"{main.description} + {other.description} ({ratio:.0%})")

    def __getitem__(self, index: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16]]:
        if index < self.main_count:
            return self.main[index % len(self.main)]
        return self.other[(index - self.main_count) % len(self.other)]

    def subset(self, count: int) -> SegmentationDataset:
        raise DatasetError("a mixed training set has no subset; limit each set instead")


def voc(root: str | Path, split: str = "val") -> SegmentationDataset:
    """ROOT/JPEGImages/ID.jpg + ROOT/SegmentationClass/ID.png for the ids in the split file.

    ROOT may be ``VOC2012`` or the ``VOCdevkit`` above it; ``split`` is a name under
    ImageSets/Segmentation (train, val, trainval) or a path to any split file.
    """
    root = Path(root)
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012" / "JPEGImages").is_dir():
        root = root / "VOC2012"
    img_dir = _require_dir(root / "JPEGImages", "voc images")
    gt_dir = _require_dir(root / "SegmentationClass", "voc labels")
    split_file = (
        Path(split) if Path(split).is_file() else root / "ImageSets" / "Segmentation" / f"{split}.txt"
    )
    if not split_file.is_file():
        raise DatasetError(f"voc: split file {split_file} does not exist (pass --split train|val|FILE)")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    samples = []
    for sid in ids:
        img, label = img_dir / f"{sid}.jpg", gt_dir / f"{sid}.png"
        if not img.is_file():
            raise DatasetError(f"voc: {split_file.name} lists {sid} but {img} does not exist")
        if not label.is_file():
            raise DatasetError(f"voc: {split_file.name} lists {sid} but {label} does not exist")
        samples.append(Sample(sid, img, label))
    return SegmentationDataset(samples, description=f"voc {split_file.stem} ({root})")


def _labelled_a_subset(lab_dir: Path) -> bool:
    """Whether ``refinenet-ros label --every N`` (N > 1) wrote this folder: its record says so,
    and the images it skipped on purpose are then no mismatch."""
    import json

    try:
        record = json.loads((lab_dir / "labelling.json").read_text())
        return int(record["options"]["every"]) > 1
    except (OSError, ValueError, KeyError, TypeError):
        return False


def folder_pairs(
    images: str | Path, labels: str | Path, *, label_offset: int = 0, description: str | None = None
) -> SegmentationDataset:
    """Any image folder + label folder, matched by relative path without suffix (or file stem).

    Label files may carry a suffix after the image stem (``0001.jpg`` ↔ ``0001_label.png``).
    """
    img_dir = _require_dir(Path(images), "image folder")
    lab_dir = _require_dir(Path(labels), "label folder")
    label_files = _files(lab_dir, LABEL_SUFFIXES)
    by_key = {str(p.relative_to(lab_dir).with_suffix("")): p for p in label_files}
    by_stem: dict[str, list[Path]] = {}
    for p in label_files:
        by_stem.setdefault(p.stem, []).append(p)
    samples = []
    unmatched: list[Path] = []
    for img in _files(img_dir, IMAGE_SUFFIXES):
        key = str(img.relative_to(img_dir).with_suffix(""))
        label = by_key.get(key)
        if label is None:
            exact = by_stem.get(img.stem, [])
            prefixed = [p for s, ps in by_stem.items() if s.startswith(img.stem + "_") for p in ps]
            candidates = exact or prefixed
            label = candidates[0] if len(candidates) == 1 else None
        if label is None:
            unmatched.append(img)
        else:
            samples.append(Sample(key, img, label))
    if unmatched and not samples:
        raise DatasetError(
            f"no image in {img_dir} has a label in {lab_dir} (matched by name without suffix), "
            f"e.g. {unmatched[0].name}"
        )
    if unmatched and _labelled_a_subset(lab_dir):
        log.info("%s: %d of %d images have no label (the labelling run took every N-th image)",
                 img_dir, len(unmatched), len(unmatched) + len(samples))  # fmt: skip
        unmatched = []
    if unmatched:
        raise DatasetError(
            f"{len(unmatched)} of {len(unmatched) + len(samples)} images in {img_dir} have no label "
            f"in {lab_dir}, e.g. {unmatched[0].name}"
        )
    lut = _offset_lut(label_offset) if label_offset else None
    return SegmentationDataset(samples, description=description or f"{img_dir} + {lab_dir}", lut=lut)


def folders(root: str | Path, split: str = "", *, label_offset: int = 0) -> SegmentationDataset:
    """ROOT/images[/SPLIT] + ROOT/labels[/SPLIT] (``annotations`` also accepted for labels)."""
    root = Path(root)
    img_dir = _require_dir(root / "images", "folders images") / split
    lab_root = root / "labels" if (root / "labels").is_dir() else root / "annotations"
    lab_dir = _require_dir(lab_root, "folders labels (labels/ or annotations/)") / split
    return folder_pairs(img_dir, lab_dir, label_offset=label_offset, description=f"{root} {split}".strip())


def ade20k(root: str | Path, split: str = "validation") -> SegmentationDataset:
    """ADEChallengeData2016: images/SPLIT/*.jpg + annotations/SPLIT/*.png, 0 = other (ignored)."""
    return folders(root, split, label_offset=1)


def open_dataset(
    fmt: str,
    root: str | Path | None = None,
    split: str | None = None,
    *,
    images: str | Path | None = None,
    labels: str | Path | None = None,
    label_offset: int | None = None,
) -> SegmentationDataset:
    """One entry point for the CLI: a named layout under ``root``, or ``images`` + ``labels``."""
    if images is not None or labels is not None:
        if images is None or labels is None:
            raise DatasetError("an image folder and a label folder go together: give both")
        return folder_pairs(images, labels, label_offset=label_offset or 0)
    if root is None:
        raise DatasetError("no data set: give a format with its root folder, or an image and a label folder")
    if fmt not in DATASET_FORMATS:
        raise DatasetError(f"unknown data set format {fmt!r}; choose one of {', '.join(DATASET_FORMATS)}")
    split = DEFAULT_SPLITS[fmt] if split is None else split
    if fmt == "camvid":
        return camvid(root, split)
    if fmt == "cityscapes":
        return cityscapes(root, split)
    if fmt == "voc":
        return voc(root, split)
    if fmt == "idd_lite":
        return idd_lite(root, split)
    if fmt == "ade20k":
        return folders(root, split, label_offset=1 if label_offset is None else label_offset)
    return folders(root, split, label_offset=label_offset or 0)


@dataclass(frozen=True)
class TrainAugment:
    """Random scale, pad, crop and horizontal flip to a fixed crop size (the RefineNet recipe).

    Images are padded with the ImageNet mean colour (zero after normalisation) and labels
    with the ignore index, so padding never teaches the network anything.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    ignore_index: int = IGNORE_INDEX
    pad_color: tuple[int, int, int] = (124, 116, 104)
    #: photometric jitter strength j: brightness, contrast and saturation each scaled by a
    #: factor drawn from [1 - j, 1 + j] (0 = off); colour, not geometry, so labels stay.
    jitter: float = 0.0

    def __call__(
        self,
        image: npt.NDArray[np.uint8],
        label: npt.NDArray[np.integer],
        rng: random.Random,
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        import cv2

        img: npt.NDArray[Any] = image
        lab: npt.NDArray[Any] = label
        lo, hi = self.scale_range
        s = rng.uniform(lo, hi)
        h, w = lab.shape
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            lab = cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST)
        ch, cw = self.crop_size
        ph, pw = max(0, ch - nh), max(0, cw - nw)
        if ph or pw:
            img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.pad_color)
            lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore_index)
        y = rng.randint(0, img.shape[0] - ch)
        x = rng.randint(0, img.shape[1] - cw)
        img = img[y : y + ch, x : x + cw]
        lab = lab[y : y + ch, x : x + cw]
        if self.flip and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if self.jitter > 0:
            img = photometric_jitter(img, rng, self.jitter)
        return np.ascontiguousarray(img, dtype=np.uint8), np.ascontiguousarray(lab).astype(np.int64)


def photometric_jitter(
    image: npt.NDArray[np.uint8], rng: random.Random, strength: float
) -> npt.NDArray[np.uint8]:
    """Brightness, contrast and saturation, each by a factor in [1 - strength, 1 + strength].

    Done on the crop (small) in float32; the draws come from ``rng`` so a resumed training
    run sees the same pixels as an uninterrupted one.
    """
    b, c, s = (rng.uniform(1 - strength, 1 + strength) for _ in range(3))
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = grey[..., None] + (x - grey[..., None]) * s
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def write_shapes_dataset(
    root: str | Path,
    split: str,
    count: int,
    size: tuple[int, int] = (64, 64),
    *,
    classes: int = 4,
    seed: int = 0,
) -> Path:
    """A toy data set with learnable structure: coloured discs/boxes on grey noise.

    Class 0 is the noisy background; class c >= 1 is a filled shape of one fixed hue per
    class (with brightness jitter), so a network that learns anything at all separates
    them. Written as ROOT/images/SPLIT/*.png + ROOT/labels/SPLIT/*.png (the ``folders``
    layout); used by the training test and as a smoke test of ``train`` on a new machine.
    """
    import cv2

    from refinenet_ros.io import write_label_png, write_rgb_png
    from refinenet_ros.labels import LabelSet, voc_colormap

    hues = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40), (200, 50, 210), (40, 210, 210)]
    if not 2 <= classes <= len(hues) + 1:
        raise ValueError(f"classes must be within 2..{len(hues) + 1}")
    palette = LabelSet("shapes", "shapes", tuple(str(i) for i in range(classes)), voc_colormap(classes))
    rng = np.random.default_rng([seed, len(split)])
    h, w = size
    root = Path(root)
    for i in range(count):
        grey = rng.integers(40, 200, (h, w, 1))
        image = np.clip(grey + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
        label = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            c = int(rng.integers(1, classes))
            color = np.clip(np.array(hues[c - 1]) * rng.uniform(0.75, 1.1), 0, 255)
            mask = np.zeros((h, w), np.uint8)
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            r = int(rng.integers(min(h, w) // 8, min(h, w) // 3))
            if c % 2:
                cv2.circle(mask, (cx, cy), r, 1, -1)
            else:
                cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 1, -1)
            on = mask.astype(bool)
            noise = rng.integers(-15, 16, (int(on.sum()), 3))
            image[on] = np.clip(color + noise, 0, 255).astype(np.uint8)
            label[on] = c
        write_rgb_png(root / "images" / split / f"{i:04d}.png", image)
        write_label_png(root / "labels" / split / f"{i:04d}.png", label, palette)
    return root
