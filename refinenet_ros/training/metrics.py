"""Confusion-matrix segmentation metrics: mIoU, per-class IoU, pixel / mean class accuracy, fwIoU.

Every number comes from one integer confusion matrix accumulated over the whole data set
(rows = ground truth, columns = prediction), never from per-image averages: that is how
the published VOC / Cityscapes numbers are computed, so a user can compare against them.
Pixels whose ground truth is the ignore index (255: VOC boundaries, Cityscapes void) are
left out entirely. A class absent from both ground truth and prediction has no IoU (NaN)
and does not enter the mean, so evaluating on a subset does not score unseen classes as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.labels import IGNORE_INDEX


@dataclass
class ConfusionMatrix:
    """Accumulates (ground truth, prediction) pixel pairs into a C x C int64 matrix."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    matrix: npt.NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, target: npt.NDArray[np.integer], prediction: npt.NDArray[np.integer]) -> None:
        """Add one image (or a batch) of labels; shapes must match exactly.

        Ground-truth values other than 0..C-1 and the ignore index mean the labels do not
        belong to this label set (wrong ``--labels`` or an un-mapped dataset), so they
        raise instead of silently counting as wrong pixels.
        """
        if target.shape != prediction.shape:
            raise ValueError(
                f"label shape {target.shape} differs from prediction shape {prediction.shape}; "
                "predict at the label image's resolution"
            )
        t = np.asarray(target).reshape(-1).astype(np.int64, copy=False)
        p = np.asarray(prediction).reshape(-1).astype(np.int64, copy=False)
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        c = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= c):
            bad = np.unique(t[(t < 0) | (t >= c)])[:8].tolist()
            raise ValueError(
                f"ground truth holds values {bad} outside 0..{c - 1} (ignore index "
                f"{self.ignore_index}); check --labels and the dataset's label mapping/offset"
            )
        if p.size and (p.min() < 0 or p.max() >= c):
            bad = np.unique(p[(p < 0) | (p >= c)])[:8].tolist()
            raise ValueError(f"prediction holds values {bad} outside 0..{c - 1}")
        self.matrix += np.bincount(t * c + p, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class matrix into {self.num_classes}")
        self.matrix += other.matrix

    def reset(self) -> None:
        self.matrix[...] = 0

    def compute(self) -> SegmentationMetrics:
        return SegmentationMetrics.from_matrix(self.matrix)


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class SegmentationMetrics:
    """The standard numbers, all in [0, 1] (NaN where undefined).

    ``iou[c]`` = TP / (TP + FP + FN), NaN when class c is neither labelled nor predicted;
    ``class_accuracy[c]`` = TP / labelled pixels of c, NaN when c is never labelled.
    """

    miou: float
    iou: tuple[float, ...]
    pixel_accuracy: float
    mean_class_accuracy: float
    class_accuracy: tuple[float, ...]
    fw_iou: float
    class_pixels: tuple[int, ...]
    num_pixels: int

    @classmethod
    def from_matrix(cls, matrix: npt.NDArray[np.integer]) -> SegmentationMetrics:
        m = np.asarray(matrix, dtype=np.float64)
        tp = np.diag(m)
        gt = m.sum(axis=1)
        pred = m.sum(axis=0)
        union = gt + pred - tp
        total = float(gt.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        freq = gt / total if total > 0 else np.zeros_like(gt)
        present = gt > 0
        fw = float((freq[present] * iou[present]).sum()) if total > 0 else math.nan
        return cls(
            miou=_nanmean(iou),
            iou=tuple(float(v) for v in iou),
            pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
            mean_class_accuracy=_nanmean(acc),
            class_accuracy=tuple(float(v) for v in acc),
            fw_iou=fw,
            class_pixels=tuple(int(v) for v in gt),
            num_pixels=int(total),
        )

    def first(self, count: int) -> SegmentationMetrics:
        """The metrics of classes ``0..count-1`` only, the rest being prediction-only columns
        (a fine class that no coarse class covers): their pixels stay counted as misses."""
        iou = np.array(self.iou[:count])
        acc = np.array(self.class_accuracy[:count])
        return SegmentationMetrics(
            miou=_nanmean(iou), iou=self.iou[:count], pixel_accuracy=self.pixel_accuracy,
            mean_class_accuracy=_nanmean(acc), class_accuracy=self.class_accuracy[:count],
            fw_iou=self.fw_iou, class_pixels=self.class_pixels[:count], num_pixels=self.num_pixels,
        )  # fmt: skip

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready (NaN becomes None, which JSON can represent)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise ValueError(f"{len(names)} class names for {len(self.iou)} classes")

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_class_accuracy": clean(self.mean_class_accuracy),
            "fw_iou": clean(self.fw_iou),
            "num_pixels": self.num_pixels,
            "per_class": {
                name: {
                    "iou": clean(iou),
                    "accuracy": clean(acc),
                    "pixels": pixels,
                }
                for name, iou, acc, pixels in zip(
                    names, self.iou, self.class_accuracy, self.class_pixels, strict=True
                )
            },
        }

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A fixed-width text table: one row per class, then the summary numbers (in %)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]
        width = max([len(n) for n in names] + [len("frequency-weighted IoU")])

        def pct(v: float) -> str:
            return "     -" if math.isnan(v) else f"{100.0 * v:6.2f}"

        lines = [f"{'class':<{width}}  {'IoU %':>6}  {'acc %':>6}  {'pixels':>12}"]
        for name, iou, acc, px in zip(names, self.iou, self.class_accuracy, self.class_pixels, strict=True):
            lines.append(f"{name:<{width}}  {pct(iou)}  {pct(acc)}  {px:>12d}")
        lines.append("-" * len(lines[0]))
        lines.append(f"{'mIoU':<{width}}  {pct(self.miou)}")
        lines.append(f"{'pixel accuracy':<{width}}  {pct(self.pixel_accuracy)}")
        lines.append(f"{'mean class accuracy':<{width}}  {pct(self.mean_class_accuracy)}")
        lines.append(f"{'frequency-weighted IoU':<{width}}  {pct(self.fw_iou)}")
        return "\n".join(lines)
