"""Figures for people. Percentiles of timing samples: one definition for the node's
diagnostics, the demo's summary and every benchmark, so a p95 means the same computation
wherever it is printed. :func:`format_table`: the aligned text tables bench and ``auto`` log.

Each caller keeps the output it always had: ``digits`` rounds (the benchmarks' JSON shows
0.01 ms), ``None`` keeps full precision (diagnostics format it themselves, the demo's
summary.json always had it). An empty sample gives NaN per quantile everywhere (JSON null
after the benchmarks' strict-JSON pass): no sample is not a zero latency.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def percentiles(
    samples: Iterable[float], qs: Sequence[float] = (50, 95, 99), *, digits: int | None = None
) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (keys ``p{q:g}``, in the order of ``qs``),
    numpy's linear interpolation; rounded to ``digits`` decimals unless it is None."""
    arr = np.fromiter(samples, dtype=np.float64)
    keys = [f"p{q:g}" for q in qs]
    if arr.size == 0:
        return dict.fromkeys(keys, float("nan"))
    values = [float(v) for v in np.percentile(arr, list(qs))]
    if digits is not None:
        values = [round(v, digits) for v in values]
    return dict(zip(keys, values, strict=True))


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
