"""What every benchmark shares: the JSON file and the stdout table (percentiles: ``stats``).

Every JSON file has the same envelope (``benchmark``, ``machine``, ``versions``,
``settings``, ``created_utc``) so two runs, even of different subcommands, can be put side
by side; the subcommand adds its own figures at the top level.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from refinenet_ros.io import atomic_write_text
from refinenet_ros.machine import CpuInfo, machine_info, versions

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig


def model_json(model_cfg: ModelConfig, options: BackendOptions, batch: int) -> dict[str, Any]:
    """The settings every bench that runs a Segmenter reports the same way: which model,
    weights and label set, on which backend, precision, device, size and batch."""
    cfg = model_cfg.resolved()
    return {
        "model": cfg.model,
        "labels": cfg.labels,
        "weights": cfg.weights,
        "backend": options.kind,
        "precision": options.precision,
        "device": options.device,
        "network_size": list(options.input_size) if options.input_size else None,
        "batch": batch,
    }


def _jsonable(value: Any) -> Any:
    """NaN/inf become null (strict JSON), numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class Report:
    """One benchmark run: envelope + figures, written atomically as strict JSON."""

    benchmark: str
    cpu: CpuInfo
    settings: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "benchmark": self.benchmark,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(self.cpu),
            "versions": versions(),
            "settings": self.settings,
        }
        doc.update(self.figures)
        return _jsonable(doc)

    def write(self, path: str) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
