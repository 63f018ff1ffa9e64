"""Which measured ``auto`` candidates may run: a candidate is admitted by one of two rules.

* **accuracy record** (preferred): the val mIoU of each path, packed into the weights
  (``refinenet-ros weights --pack``) or recorded from the user's own labelled data
  (``refinenet-ros evaluate --record``, at least
  :data:`~refinenet_ros.weights.records.MIN_RECORD_FRAMES` frames). A path within
  :data:`~refinenet_ros.weights.records.MIOU_LOSS_LIMIT` mIoU of FP32 is admitted, one
  that loses more is rejected. INT8 typically changes 7-12 % of the labels (boundary pixels)
  at the same mIoU, so only a record can tell that it is as accurate.
* **pixel agreement** (no record for the path: a user's own checkpoint): its labels must
  equal the FP32 reference's on >= :data:`AGREEMENT_BAR` of the pixels.

A record never admits a path that agrees on fewer than :data:`SANITY_AGREEMENT` of the
pixels: that is a broken runtime, not the path the record measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refinenet_ros.backends.base import BackendError
from refinenet_ros.backends.engine_cache import sha256_file
from refinenet_ros.backends.int8_ranges import own_calibration
from refinenet_ros.io import atomic_write_text
from refinenet_ros.weights.records import MIOU_LOSS_LIMIT, AccuracyRecord, weights_accuracy

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig

AGREEMENT_BAR = 0.995
"""Without an accuracy record: the fraction of pixels whose labels must equal the FP32
reference's on real frames (a path changing more may or may not be as accurate; only a
record can tell)."""
SANITY_AGREEMENT = 0.75
"""With an accuracy record: the fewest pixels a path must still agree on; below it the
runtime computes something else than the path the record measured."""


def accuracy_path(graph: Path) -> Path:
    return graph.with_name(f"{graph.stem}.accuracy.json")


def record_accuracy(
    graph: Path,
    kind: str,
    precision: str,
    miou: float,
    dataset: str,
    *,
    frames: int,
    network_size: tuple[int, int] | None = None,
) -> Path:
    """Add one path's mIoU (in %) on the user's labelled data to the graph's accuracy record,
    which :func:`select_backend` then prefers to the weights' record (``evaluate --record``).

    Keyed by label (``"openvino int8"``); ``"<kind> fp32"`` entries are the reference. A
    record from another data set replaces the old one rather than mixing two data sets.
    Writing it changes the decision key, so the next configure measures again.
    """
    from refinenet_ros.weights.records import MIN_RECORD_FRAMES

    if frames < MIN_RECORD_FRAMES:
        raise BackendError(
            f"an accuracy record needs at least {MIN_RECORD_FRAMES} labelled frames, got {frames}"
        )
    path = accuracy_path(graph)
    data = read_json(path)
    if data is None or data.get("dataset") != dataset or data.get("frames") != frames:
        data = {"graph_sha256": sha256_file(graph), "dataset": dataset, "frames": frames, "miou": {}}
    data["network_size"] = list(network_size) if network_size else None
    data["miou"][f"{kind} {precision}"] = round(float(miou), 3)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def user_accuracy(graph: Path) -> AccuracyRecord | None:
    """The record ``evaluate --record`` left for ``graph`` (None when there is none, or it
    was written for another graph)."""
    data = read_json(accuracy_path(graph))
    if data is None or data.get("graph_sha256") not in (None, sha256_file(graph)):
        return None
    return AccuracyRecord.from_json(data, "your evaluate --record")


def accuracy_for(
    model_cfg: ModelConfig | None, options: BackendOptions, graph: Path
) -> tuple[AccuracyRecord | None, str]:
    """The accuracy record ``auto`` judges by, and a line saying which (or why none applies).

    The user's own record (``evaluate --record``) wins; else the weights' record, when it was
    measured at this network size; its INT8 figures only count with the weights' own INT8
    ranges (calibrating on your frames makes another INT8 graph).
    """
    from dataclasses import replace as dc_replace

    mine = user_accuracy(graph)
    if mine is not None:
        return mine, f"accuracy: your evaluate --record on {mine.dataset} ({mine.frames} frames)"
    if model_cfg is None or options.onnx is not None:
        return (
            None,
            f"accuracy: no record for {graph.name}: pixel-agreement rule (>= {100 * AGREEMENT_BAR:.1f} %)",
        )
    record = weights_accuracy(model_cfg.weights)
    if record is None:
        return None, (
            f"accuracy: the weights record none: pixel-agreement rule (>= {100 * AGREEMENT_BAR:.1f} %); "
            "`refinenet-ros evaluate --record` on your labelled frames records one"
        )
    if (
        record.network_size is not None
        and options.input_size is not None
        and record.network_size != options.input_size
    ):
        h, w = record.network_size
        return None, (
            f"accuracy: the weights' record is for {h}x{w}, this graph runs at "
            f"{options.input_size[0]}x{options.input_size[1]}: pixel-agreement rule"
        )
    if own_calibration(options):
        record = dc_replace(record, miou={k: v for k, v in record.miou.items() if not k.endswith(" int8")},
                            int8_ranges=False)  # fmt: skip
    return record, f"accuracy: the weights' record on {record.dataset} ({record.frames} frames)"


def admission(label: str, agreement: float | None, record: AccuracyRecord | None) -> str:
    """The verdict on one measured candidate: ``admitted: <rule>`` or ``rejected: <rule>``."""
    if agreement is None:
        return "rejected: no fp32 reference built to compare with"
    loss = record.loss(label) if record is not None else None
    if record is not None and loss is not None:
        where = f"{record.source}, {record.dataset}"
        if agreement < SANITY_AGREEMENT:
            return (
                f"rejected: agrees on only {100 * agreement:.1f} % < {100 * SANITY_AGREEMENT:.0f} % "
                f"with FP32 here, whatever {where} says"
            )
        if loss > MIOU_LOSS_LIMIT:
            return f"rejected: loses {loss:.2f} mIoU points by {where} (limit {MIOU_LOSS_LIMIT})"
        return f"admitted: {-loss:+.2f} mIoU vs FP32 by {where}"
    if agreement >= AGREEMENT_BAR:
        return f"admitted: agrees on {100 * agreement:.2f} % >= {100 * AGREEMENT_BAR:.1f} % (no record)"
    return f"rejected: agrees on {100 * agreement:.2f} % < {100 * AGREEMENT_BAR:.1f} % (no accuracy record)"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's contents; None when it is missing, unreadable or not an object
    (a cache or record that is not there yet, or was damaged: measured or written anew)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
