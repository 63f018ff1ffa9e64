"""Percentiles of timing samples: one definition for the node's diagnostics, the demo's
summary and every benchmark, so a p95 means the same computation wherever it is printed.

Each caller keeps the output it always had: ``digits`` rounds (the benchmarks' JSON shows
0.01 ms), ``None`` keeps full precision (diagnostics format it themselves, the demo's
summary.json always had it). An empty sample gives NaN per quantile everywhere (JSON null
after the benchmarks' strict-JSON pass): no sample is not a zero latency.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
