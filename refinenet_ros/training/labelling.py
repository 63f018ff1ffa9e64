"""Teacher labelling: label PNGs for a student to train on, from a folder of images or a bag.

``refinenet-ros label`` runs a :class:`~refinenet_ros.training.teacher.Teacher` over images
and writes one label PNG per image in the layout ``train`` and ``evaluate`` read:

- a folder ``IMAGES`` -> ``OUT/<relative path>.png`` (train with ``--images IMAGES
  --labels-dir OUT``);
- a bag topic -> ``OUT/images/<frame>.png`` + ``OUT/labels/<frame>.png`` (the ``folders``
  data set: train with ``--root OUT``).

A teacher's classes become the target label set's through a :class:`LabelMapping` (the
probability of a target class is the sum of its members'); pixels whose target probability
stays below ``min_confidence`` become ignore (255), so a student never learns the teacher's
guesses. Mirror images and scales are averaged in probability before that.

The job is resumable and deterministic: a label that exists is complete (every file is
written atomically) and is skipped; the run's settings are recorded in ``OUT/labelling.json``
and a second run with other settings is refused rather than mixing two teachers' labels.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.io import bag_errors
from refinenet_ros.labels import IGNORE_INDEX, LabelMapping, LabelSet

if TYPE_CHECKING:
    import torch

    from refinenet_ros.training.teacher import Teacher

log = logging.getLogger("refinenet_ros")

RECORD_NAME = "labelling.json"


class LabellingError(RefineNetRosError, ValueError):
    """The labelling job cannot run as asked; the message names the option to change."""


@dataclass(frozen=True)
class LabelOptions:
    """What a labelling run is asked (resolved once, by the CLI or a caller)."""

    min_confidence: float = 0.0
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    topic: str | None = None
    every: int = 1
    limit: int = 0
    max_pixels: int = 0

    def record(self) -> dict[str, Any]:
        """What changes the labels (and so must match on resume)."""
        return {"min_confidence": self.min_confidence, "flip": self.flip, "scales": list(self.scales),
                "topic": self.topic, "every": self.every}  # fmt: skip


@dataclass
class LabelSummary:
    """What a run did."""

    labelled: int = 0
    skipped: int = 0
    seconds: float = 0.0
    ignored_fraction: float = 0.0
    class_fractions: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def teacher_labels(
    teacher: Teacher, rgb: npt.NDArray[np.uint8], mapping: LabelMapping | None, options: LabelOptions
) -> npt.NDArray[np.uint8]:
    """One image's labels: the teacher's probabilities (mapped, averaged) -> uint8 with ignore."""
    import torch

    matrix = None if mapping is None else torch.from_numpy(mapping.matrix())
    probs = teacher.probabilities(rgb, flip=options.flip, scales=options.scales, matrix=matrix)
    return to_labels(probs, options.min_confidence)


def to_labels(probs: torch.Tensor, min_confidence: float) -> npt.NDArray[np.uint8]:
    """Target probabilities -> uint8 labels, ignore (255) below ``min_confidence``."""
    import torch

    conf, labels = torch.max(probs, dim=0)
    out = labels.to(torch.uint8)
    if min_confidence > 0:
        out[conf < min_confidence] = IGNORE_INDEX
    return out.numpy()


def resolve_mapping(
    teacher: Teacher, mapping: LabelMapping | None, probe: npt.NDArray[np.uint8]
) -> LabelMapping | None:
    """The mapping fitted to the teacher's outputs: a teacher with one leading extra output
    (TensorFlow's "other" in front of ADE20K's 150) gets the mapping's leading-other form."""
    if mapping is None:
        return None
    if teacher.num_classes == 0:  # file teachers learn their class count on the first image
        teacher.probabilities(probe)
    if teacher.num_classes == len(mapping.source) + 1:
        return mapping.with_leading_other()
    if teacher.num_classes != len(mapping.source):
        raise LabellingError(
            f"the teacher has {teacher.num_classes} outputs but mapping {mapping.name} maps "
            f"{len(mapping.source)} source classes; give the mapping of this teacher's classes"
        )
    return mapping


def _check_record(out: Path, record: dict[str, Any]) -> None:
    """Refuse to mix two teachers' (or settings') labels in one folder."""
    from refinenet_ros.io import atomic_write_text

    path = out / RECORD_NAME
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        keys = ("teacher", "mapping", "options")
        if isinstance(previous, dict) and any(previous.get(k) != record.get(k) for k in keys):
            changed = [k for k in keys if previous.get(k) != record.get(k)]
            raise LabellingError(
                f"{out} holds labels made with other settings ({', '.join(changed)} differ, see "
                f"{RECORD_NAME}); label into a new --out folder, or repeat the earlier options to resume"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


class _Stats:
    def __init__(self, classes: Sequence[str]) -> None:
        self.counts = np.zeros(len(classes) + 1, dtype=np.int64)
        self.classes = classes

    def add(self, labels: npt.NDArray[np.uint8]) -> None:
        values = np.where(labels == IGNORE_INDEX, len(self.classes), labels)
        self.counts += np.bincount(values.ravel(), minlength=len(self.counts))[: len(self.counts)]

    def fill(self, summary: LabelSummary) -> None:
        total = max(1, int(self.counts.sum()))
        summary.ignored_fraction = round(float(self.counts[-1]) / total, 4)
        summary.class_fractions = {
            c: round(float(n) / total, 4) for c, n in zip(self.classes, self.counts[:-1], strict=True)
        }


def label_folder(
    teacher: Teacher,
    images: Path,
    out: Path,
    options: LabelOptions,
    *,
    mapping: LabelMapping | None,
    label_set: LabelSet,
    progress: bool = True,
) -> LabelSummary:
    """Label every image under ``images`` into ``out`` (same relative paths, ``.png``)."""
    from refinenet_ros.io import read_rgb, write_label_png
    from refinenet_ros.training.datasets import IMAGE_SUFFIXES, image_files

    files = image_files(images)
    if not files:
        raise LabellingError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    files = files[:: options.every]
    if options.limit:
        files = files[: options.limit]
    targets = [out / f.relative_to(images).with_suffix(".png") for f in files]
    todo = [(f, t) for f, t in zip(files, targets, strict=True) if not t.exists()]
    summary = LabelSummary(skipped=len(files) - len(todo))
    mapping = resolve_mapping(teacher, mapping, read_rgb(todo[0][0])) if todo else mapping
    _check_record(out, _record(teacher, mapping, options, images))
    if summary.skipped:
        log.info("label: %d of %d images already labelled in %s, skipped", summary.skipped, len(files), out)

    def write(item: tuple[Path, Path], labels: npt.NDArray[np.uint8]) -> None:
        write_label_png(item[1], labels, label_set)

    return _label_all(teacher, todo, lambda item: read_rgb(item[0]), write, mapping, options, label_set,
                      summary, progress)  # fmt: skip


def _label_all(
    teacher: Teacher,
    todo: list[Any],
    image_of: Callable[[Any], npt.NDArray[np.uint8]],
    write: Callable[[Any, npt.NDArray[np.uint8]], None],
    mapping: LabelMapping | None,
    options: LabelOptions,
    label_set: LabelSet,
    summary: LabelSummary,
    progress: bool,
) -> LabelSummary:
    """The one labelling loop of folders and bags: teacher -> labels -> ``write``, with statistics."""
    stats = _Stats(label_set.classes)
    start = time.monotonic()
    for item in _progress(todo, progress, "label"):
        labels = teacher_labels(teacher, image_of(item), mapping, options)
        write(item, labels)
        stats.add(labels)
        summary.labelled += 1
    summary.seconds = round(time.monotonic() - start, 1)
    stats.fill(summary)
    return summary


def label_bag(
    teacher: Teacher,
    bag: Path,
    out: Path,
    options: LabelOptions,
    *,
    mapping: LabelMapping | None,
    label_set: LabelSet,
    progress: bool = True,
) -> LabelSummary:
    """Label every ``every``-th frame of a bag's image topic into ``out/images`` + ``out/labels``."""
    from refinenet_ros.io import write_label_png, write_rgb_png

    frames = list(_bag_frames(bag, options))
    if not frames:
        raise LabellingError(f"{bag}: topic {options.topic} has no frames to label")
    summary = LabelSummary()
    todo = []
    for name, rgb in frames:
        if (out / "labels" / f"{name}.png").exists() and (out / "images" / f"{name}.png").exists():
            summary.skipped += 1
        else:
            todo.append((name, rgb))
    mapping = resolve_mapping(teacher, mapping, todo[0][1]) if todo else mapping
    _check_record(out, _record(teacher, mapping, options, bag))

    def write(item: tuple[str, npt.NDArray[np.uint8]], labels: npt.NDArray[np.uint8]) -> None:
        write_rgb_png(out / "images" / f"{item[0]}.png", item[1])
        write_label_png(out / "labels" / f"{item[0]}.png", labels, label_set)

    return _label_all(teacher, todo, lambda item: item[1], write, mapping, options, label_set, summary,
                      progress)  # fmt: skip


def _bag_frames(bag: Path, options: LabelOptions) -> Iterator[tuple[str, npt.NDArray[np.uint8]]]:
    """``(frame name, RGB)`` of every ``every``-th frame on the topic; names carry the stamp."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from refinenet_ros.bag.topics import COMPRESSED_TYPE, IMAGE_TYPE
    from refinenet_ros.images.encodings import decode_message

    try:
        reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except Exception as exc:  # whatever a missing or corrupt bag makes the reader raise
        raise LabellingError(f"cannot open {bag} as a rosbag2: {type(exc).__name__}: {exc}") from None
    try:
        images = {c.topic: c for c in reader.connections if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)}
        if options.topic not in images:
            found = ", ".join(sorted(images)) or "none"
            raise LabellingError(f"{bag}: no image topic {options.topic!r}; --image-topic one of: {found}")
        conn = images[options.topic]
        slug = options.topic.strip("/").replace("/", "_") or "image"
        limit = options.max_pixels
        count = 0
        with bag_errors(LabellingError, f"cannot read {bag}"):
            for index, (c, timestamp, raw) in enumerate(reader.messages(connections=[conn])):
                if index % options.every:
                    continue
                msg: Any = reader.deserialize(raw, c.msgtype)
                rgb = decode_message(msg, max_pixels=limit, limit_name="--max-image-pixels")
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec or timestamp
                yield f"{slug}_{stamp:020d}", np.array(rgb)
                count += 1
                if options.limit and count >= options.limit:
                    return
    finally:
        reader.close()


def _record(
    teacher: Teacher, mapping: LabelMapping | None, options: LabelOptions, source: Path
) -> dict[str, Any]:
    return {
        "teacher": teacher.description,
        "mapping": None if mapping is None else {"name": mapping.name, "target": mapping.target.name,
                                                 "table": list(mapping.table)},
        "options": options.record(),
        "source": str(source.resolve()),
        "note": "labels made by a teacher model (pseudo-labels), not by people",
    }  # fmt: skip


def _progress(items: list[Any], enabled: bool, what: str) -> Iterator[Any]:
    """A progress bar with rate and ETA (tqdm) on a terminal or log, or the items as they are."""
    if not enabled or not items:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=what, unit="img", mininterval=2.0, smoothing=0.05)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in scales)
    if not values or any(not math.isfinite(s) or s <= 0 or s > 4 for s in values):
        raise LabellingError(f"--scales {' '.join(map(str, scales))}: each must be a number in (0, 4]")
    return values
