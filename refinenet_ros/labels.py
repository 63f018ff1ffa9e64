"""Class sets and palettes: CamVid (the bundled default) and the seven RefineNet datasets.

Each :class:`LabelSet` holds class names in network output order and an RGB palette with
one distinct colour per class. Cityscapes keeps its official palette (users recognise it in
rviz); the others use the PASCAL VOC bit-interleaved colour map, which gives 256 distinct
colours. Sets without a background class start that map at index 1 so no real class is
drawn black (black stays free for the ignore index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IGNORE_INDEX = 255
"""Label value meaning "not annotated" in ground truth; never predicted."""


def voc_colormap(n: int = 256) -> npt.NDArray[np.uint8]:
    """The PASCAL VOC colour map: bits of the index interleaved into R, G, B."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


@dataclass(frozen=True)
class LabelSet:
    """Names and colours of one dataset's classes, in network output order."""

    name: str
    dataset: str
    classes: tuple[str, ...]
    palette: npt.NDArray[np.uint8] = field(repr=False, compare=False)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label_dtype(self) -> type[np.unsignedinteger]:
        """uint8 holds up to 255 classes (255 is the ignore index); above that, uint16."""
        return np.uint8 if self.num_classes < IGNORE_INDEX else np.uint16

    def lut(self) -> npt.NDArray[np.uint8]:
        """A colour lookup table indexable by any label value of :attr:`label_dtype`.

        Values past the class count (including the ignore index) map to black, so a
        colourised image never raises on unexpected values.
        """
        size = 256 if self.label_dtype == np.uint8 else 65536
        table = np.zeros((size, 3), dtype=np.uint8)
        table[: self.num_classes] = self.palette
        return table


def _voc_palette(n: int, skip_black: bool) -> npt.NDArray[np.uint8]:
    start = 1 if skip_black else 0
    return voc_colormap(256)[start : start + n].copy()


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""Cityscapes ``*_labelIds.png`` values to the 19 evaluated train ids (rest: ignore)."""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

NYUD40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor mat", "clothes", "ceiling", "books", "refrigerator",
    "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person",
    "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # fmt: skip

SUNRGBD_CLASSES = NYUD40_CLASSES[:37]
"""SUN-RGBD's 37 classes are the first 37 of NYUDv2-40, in the same order."""

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

PASCAL_CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird",
    "boat", "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling",
    "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light",
    "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window",
    "wood",
)  # fmt: skip

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
#: The CamVid palette of the SegNet tutorial's 11-class release (its ``camvid.py`` /
#: ``Models/*.prototxt`` colour table), which CamVid users recognise.
CAMVID_PALETTE = np.array(
    [
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ],
    dtype=np.uint8,
)  # fmt: skip

PERSON_PART_CLASSES = (
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
)  # fmt: skip


def _make_sets() -> dict[str, LabelSet]:
    sets = [
        LabelSet("camvid", "CamVid (11 classes, SegNet release)", CAMVID_CLASSES, CAMVID_PALETTE),
        LabelSet("cityscapes", "Cityscapes (19 train ids)", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE),
        LabelSet("voc", "PASCAL VOC 2012", VOC_CLASSES, _voc_palette(21, skip_black=False)),
        LabelSet("nyud40", "NYUDv2 (40 classes)", NYUD40_CLASSES, _voc_palette(40, skip_black=True)),
        LabelSet("sunrgbd", "SUN RGB-D (37 classes)", SUNRGBD_CLASSES, _voc_palette(37, skip_black=True)),
        LabelSet("ade20k", "ADE20K / SceneParsing (150)", ADE20K_CLASSES, _voc_palette(150, skip_black=True)),
        LabelSet(
            "pascal_context", "PASCAL-Context (59 + background)", PASCAL_CONTEXT_CLASSES,
            _voc_palette(60, skip_black=False),
        ),
        LabelSet("person_part", "PASCAL-Person-Part", PERSON_PART_CLASSES, _voc_palette(7, skip_black=False)),
    ]  # fmt: skip
    return {s.name: s for s in sets}


LABEL_SETS: dict[str, LabelSet] = _make_sets()
LABEL_SET_NAMES: tuple[str, ...] = tuple(LABEL_SETS)


def get_label_set(name: str) -> LabelSet:
    """Look a label set up by name; the error lists the valid names."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown label set {name!r}; choose one of: {', '.join(LABEL_SET_NAMES)}") from None


def colorize(
    labels: npt.NDArray[np.integer],
    label_set: LabelSet | str = "voc",
    out: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """Label image (H, W) -> RGB image (H, W, 3) through the set's palette.

    ``out`` lets callers fill a preallocated (or message-backed) buffer in place.
    The ignore index and out-of-range values come out black.
    """
    ls = get_label_set(label_set) if isinstance(label_set, str) else label_set
    if labels.ndim != 2:
        raise ValueError(f"colorize expects a 2-D label image, got shape {labels.shape}")
    if out is None:
        out = np.empty((*labels.shape, 3), dtype=np.uint8)
    if (
        labels.dtype == np.uint8
        and ls.label_dtype == np.uint8
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        # Three 1-channel cv2.LUT passes + one merge: 5.6x faster than np.take at 1080p
        # (1.5 ms vs 8.5 ms here), which matters for the node's ~/color and ~/overlay.
        import cv2

        r, g, b = _channel_luts(ls)
        cv2.merge([cv2.LUT(labels, r), cv2.LUT(labels, g), cv2.LUT(labels, b)], dst=out)
        return out
    lut = ls.lut()
    idx = labels if labels.dtype in (np.uint8, np.uint16) else np.clip(labels, 0, len(lut) - 1)
    np.take(lut, idx, axis=0, out=out)
    return out


_CHANNEL_LUTS: dict[tuple[str, bytes], tuple[npt.NDArray[np.uint8], ...]] = {}


def _channel_luts(ls: LabelSet) -> tuple[npt.NDArray[np.uint8], ...]:
    """Per-channel 256-entry tables of a uint8 label set, built once per palette."""
    key = (ls.name, ls.palette.tobytes())
    luts = _CHANNEL_LUTS.get(key)
    if luts is None:
        table = ls.lut()
        luts = tuple(np.ascontiguousarray(table[:, c]) for c in range(3))
        _CHANNEL_LUTS[key] = luts
    return luts
