"""What every benchmark shares: the JSON file and the stdout table (percentiles: ``stats``).

Every JSON file has the same envelope (``benchmark``, ``machine``, ``versions``,
``settings``, ``created_utc``) so two runs, even of different subcommands, can be put side
by side; the subcommand adds its own figures at the top level.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refinenet_ros.io import atomic_write_text
from refinenet_ros.machine import CpuInfo, machine_info, versions


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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns (numbers right-aligned) for a terminal."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(r) for r in text)
    return "\n".join(out)
