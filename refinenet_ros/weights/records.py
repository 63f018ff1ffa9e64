"""What a weights file records besides its tensors: its accuracy per backend and precision,
and the INT8 activation ranges its QDQ graph is built from.

Both live in the checkpoint's metadata (``extra``), written by ``refinenet-ros weights
--pack`` when the weights are made, so they travel with the file to every robot:

* ``accuracy``: the val mIoU (in %) of each path (``"onnxruntime fp32"``, ``"openvino
  int8"``, ...), measured with ``evaluate`` on the labelled val set named in the record.
  ``auto`` admits a path whose record is within :data:`MIOU_LOSS_LIMIT` of FP32's.
* ``int8_ranges``: one (low, high) pair per activation tensor of the exported graph,
  calibrated once on the training frames. ONNX Runtime, OpenVINO and TensorRT all run the
  QDQ graph built from them, so INT8 needs no frames on the robot.

The records are small (a few kB of JSON-like data), so reading them is cheap: the file is
memory-mapped and only its metadata is decoded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("refinenet_ros")

ACCURACY_KEY = "accuracy"
RANGES_KEY = "int8_ranges"

MIOU_LOSS_LIMIT = 0.5
"""mIoU points a path may lose against FP32, by a recorded evaluation, and still be chosen by ``auto``."""

MIN_RECORD_FRAMES = 50
"""Fewest labelled frames an ``evaluate --record`` may record from: a handful of frames
moves mIoU by more than :data:`MIOU_LOSS_LIMIT` by chance alone."""


@dataclass(frozen=True)
class AccuracyRecord:
    """Val mIoU (%) per path (``"openvino int8"``) on one labelled set, and where it came from.

    ``source``: who measured it ("the weights' record", "your evaluate --record");
    ``network_size``: the (H, W) it was measured at (None: not recorded);
    ``int8_ranges``: True when the INT8 figures are for the weights' shipped ranges.
    """

    miou: dict[str, float]
    dataset: str
    frames: int
    source: str
    network_size: tuple[int, int] | None = None
    int8_ranges: bool = True

    def reference(self) -> float | None:
        """The best FP32 figure: what every other path is compared with."""
        refs = [v for k, v in self.miou.items() if k.endswith(" fp32")]
        return max(refs) if refs else None

    def loss(self, label: str) -> float | None:
        """mIoU points ``label`` loses against FP32 by this record; None when it does not say."""
        ref = self.reference()
        if ref is None or label not in self.miou:
            return None
        return ref - self.miou[label]

    def to_json(self) -> dict[str, Any]:
        return {
            "miou": {k: round(float(v), 3) for k, v in sorted(self.miou.items())},
            "dataset": self.dataset,
            "frames": int(self.frames),
            "network_size": list(self.network_size) if self.network_size else None,
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> AccuracyRecord | None:
        """The record in ``data``, or None when it is missing or malformed (a hand-edited file)."""
        if not isinstance(data, dict) or not isinstance(data.get("miou"), dict):
            return None
        try:
            miou = {str(k): float(v) for k, v in data["miou"].items()}
            size = data.get("network_size")
            return cls(
                miou=miou,
                dataset=str(data.get("dataset", "val")),
                frames=int(data.get("frames", 0)),
                source=source,
                network_size=(int(size[0]), int(size[1])) if size else None,
            )
        except (TypeError, ValueError, IndexError):
            return None


_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


def _extra(weights: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The ``extra`` metadata of our own checkpoint file (empty for anything else)."""
    if weights is None:
        return {}
    path = Path(weights)
    try:
        st = path.stat()
    except OSError:
        return {}
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        from refinenet_ros.models.checkpoint_file import CheckpointError, read_checkpoint_metadata

        try:
            meta = read_checkpoint_metadata(path) or {}
        except CheckpointError:
            meta = {}
        extra = meta.get("extra")
        _CACHE[key] = dict(extra) if isinstance(extra, dict) else {}
    return _CACHE[key]


def weights_accuracy(weights: str | os.PathLike[str] | None) -> AccuracyRecord | None:
    """The accuracy record packed into a weights file, or None."""
    return AccuracyRecord.from_json(_extra(weights).get(ACCURACY_KEY), "the weights' record")


def weights_int8_ranges(weights: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The INT8 range table packed into a weights file (see
    :func:`refinenet_ros.backends.ort_quantize.calibrate_ranges`), or None."""
    ranges = _extra(weights).get(RANGES_KEY)
    if isinstance(ranges, dict) and isinstance(ranges.get("ranges"), dict) and ranges["ranges"]:
        return ranges
    return None
