"""``auto`` on a CPU: measure the candidates once per machine + graph + versions, keep the
fastest one whose accuracy is known to hold.

No fixed preference order is right on every robot computer: on an AVX2 part ONNX Runtime
FP32 is at the core's FP32 peak, on an AVX-512-VNNI or AMX part OpenVINO INT8 or bf16 is
2-3x faster. So when TensorRT cannot run, ``auto`` builds each candidate that exists here
(:data:`DEFAULT_CANDIDATES`; with an asked precision only that one, plus an fp32
reference: :func:`choosable`), times them in interleaved rounds on real frames, and admits
a candidate by the rules of :mod:`refinenet_ros.backends.admission` (an accuracy record,
else pixel agreement with FP32), named in the logged table.

The fastest admitted candidate (median of its timed calls) is chosen, the table (with each
candidate's spread) is logged, and the decision is written beside the ONNX graph
(``<graph>.auto.json``, atomically) keyed by the graph's sha256, the runtime versions, the
CPU (model, SIMD/AMX flags, usable CPUs), the accuracy record and the options that change
the answer. The next configure with the same key builds the chosen backend and measures
nothing; a change of any of them measures again.

The calls are interleaved (one call per candidate per round, the order rotating), so a
background job slows every candidate alike; at least :data:`MIN_ROUNDS` timed rounds run,
more while :data:`MEASURE_BUDGET_S` lasts. One-off work the caches keep anyway (export,
INT8 graph, OpenVINO compilation) is reported per candidate as ``setup s``, not counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.admission import (
    AGREEMENT_BAR,
    SANITY_AGREEMENT,
    accuracy_for,
    admission,
    read_json,
)
from refinenet_ros.backends.base import Backend, BackendError
from refinenet_ros.backends.engine_cache import sha256_file
from refinenet_ros.backends.int8_ranges import own_calibration, shipped_ranges
from refinenet_ros.backends.prepare import require_build
from refinenet_ros.errors import option
from refinenet_ros.io import atomic_write_text
from refinenet_ros.machine import cpu_info, installed_versions
from refinenet_ros.stats import percentiles
from refinenet_ros.weights.records import MIOU_LOSS_LIMIT, AccuracyRecord

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig

log = logging.getLogger("refinenet_ros")

FRAMES = 4
"""Real frames measured on; every round calls each candidate on the next one."""
MIN_ROUNDS = 4
"""Timed rounds every surviving candidate gets, whatever the budget (after one warm-up)."""
MAX_ROUNDS = 15
"""Timed rounds at most."""
MEASURE_BUDGET_S = 2.0
"""Seconds of timed calls, all candidates together, beyond which no new round starts."""
SLOWER_GIVE_UP = 3.0
"""A candidate whose warm-up call takes this many times the fastest warm-up is not timed
further (warm-ups run 1-2x slower than steady state; 3x cannot catch up)."""
DYNAMIC_MEASURE_SIZE = (480, 640)
"""(H, W) measured at when the graph takes any size: VGA, the commonest robot camera mode."""
BUSY_LOAD = 1.5
"""Load average per usable CPU above which a measurement counts as taken on a busy machine:
measured again at the next configure that finds the machine quiet (:data:`QUIET_LOAD`)."""
QUIET_LOAD = 0.75
"""Load average per usable CPU at or below which the machine counts as quiet."""
DECISION_FORMAT = 2
"""Part of the decision key: bump when what is measured or how it is judged changes."""
VERSIONED = ("refinenet_ros", "torch", "onnxruntime", "openvino")


@dataclass(frozen=True)
class Candidate:
    """One (backend, precision) ``auto`` may choose."""

    kind: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.precision}"


DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("onnxruntime", "fp32"),  # first fp32 that builds is the agreement reference
    Candidate("openvino", "fp32"),
    Candidate("torch", "fp32"),
    Candidate("openvino", "bf16"),
    Candidate("openvino", "int8"),
    Candidate("onnxruntime", "int8"),
)


@dataclass(frozen=True)
class Measurement:
    """One row of the table: what was measured and the verdict (``status``)."""

    kind: str
    precision: str
    status: str
    ms: float | None = None
    agreement: float | None = None
    setup_s: float | None = None
    spread: float | None = None
    """(p90 - p10) / p50 of the timed calls: how much the machine moved them."""
    calls: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind} {self.precision}"


@dataclass(frozen=True)
class AutoDecision:
    """The chosen candidate, the table behind it, and where it is cached."""

    kind: str
    precision: str
    table: tuple[Measurement, ...]
    key: dict[str, Any]
    path: Path
    measured_s: float
    cached: bool = False

    def why(self) -> str:
        chosen = next((m for m in self.table if m.label == f"{self.kind} {self.precision}"), None)
        speed = f"{chosen.ms:.1f} ms" if chosen and chosen.ms is not None else "?"
        source = f"cached in {self.path.name}" if self.cached else f"measured in {self.measured_s:.1f} s"
        rule = chosen.status.split(": ", 1)[1] if chosen and ": " in chosen.status else "admitted"
        return f"fastest of {len(self.table)} CPU candidates, {speed}, {rule}; {source}"

    def table_text(self) -> str:
        from refinenet_ros.stats import format_table

        rows = [
            [m.label, m.ms, None if m.spread is None else f"{100 * m.spread:.0f} %", m.calls or None,
             None if m.agreement is None else f"{100 * m.agreement:.2f} %", m.setup_s,
             m.status if len(m.status) <= 110 else m.status[:107] + "..."]
            for m in self.table
        ]  # fmt: skip
        return format_table(["candidate", "p50 ms", "spread", "calls", "agree", "setup s", "verdict"], rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": {"kind": self.kind, "precision": self.precision},
            "measured_s": round(self.measured_s, 2),
            "load_average_1m": load_average(),
            "table": [asdict(m) for m in self.table],
            "key": self.key,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> AutoDecision:
        return cls(
            kind=str(data["chosen"]["kind"]),
            precision=str(data["chosen"]["precision"]),
            table=tuple(Measurement(**m) for m in data["table"]),
            key=dict(data["key"]),
            path=path,
            measured_s=float(data["measured_s"]),
            cached=True,
        )


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def measured_when_busy(cached: dict[str, Any], usable_cpus: int) -> str | None:
    """Why a cached decision should be measured again although its key matches: it was
    measured while other work kept the CPUs busy (load above the usable CPUs) and the
    machine is quiet now, so a busy hour's noise is not kept for good. None to keep it."""
    then, now = cached.get("load_average_1m"), load_average()
    if not isinstance(then, (int, float)) or now is None:
        return None
    if then > BUSY_LOAD * usable_cpus and now <= QUIET_LOAD * usable_cpus:
        return f"it was measured on a busy machine (load {then:.1f} on {usable_cpus} CPUs; now {now:.1f})"
    return None


def runtime_versions() -> dict[str, str | None]:
    """Versions that change speed or numerics (None: not installed)."""
    return installed_versions(VERSIONED)


def machine_key() -> dict[str, Any]:
    """The CPU as far as speed goes: model, SIMD/AMX units, usable CPUs."""
    from refinenet_ros.backends.openvino_backend import relevant_cpu_flags

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {"cpu": cpu_info().model, "flags": relevant_cpu_flags(), "usable_cpus": usable}


def decision_path(graph: Path, variant: str = "") -> Path:
    """Where the decision for ``graph`` is cached; ``variant`` names a narrower question
    (``int8``, ``openvino``: an asked precision or backend) so it never overwrites the
    default one's."""
    return graph.with_name(f"{graph.stem}{f'.{variant}' if variant else ''}.auto.json")


def decision_key(
    graph: Path,
    options: BackendOptions,
    candidates: Sequence[Candidate],
    accuracy: AccuracyRecord | None,
    int8_source: str | None = None,
) -> dict[str, Any]:
    """Everything the decision depends on; a different key measures again.

    ``int8_source``: what the INT8 candidates' graph is built from (the weights' ranges'
    digest), since a new range table makes another INT8 graph from the same FP32 one.
    """
    record = None
    if accuracy is not None:
        blob = json.dumps({"source": accuracy.source, **accuracy.to_json()}, sort_keys=True).encode()
        record = hashlib.sha256(blob).hexdigest()[:16]
    return {
        "format": DECISION_FORMAT,
        "graph_sha256": sha256_file(graph),
        "versions": runtime_versions(),
        "machine": machine_key(),
        "threads": options.threads,
        "max_batch": options.max_batch,
        "precision": options.precision,
        "candidates": [c.label for c in candidates],
        "rules": {
            "agreement_bar": AGREEMENT_BAR,
            "miou_loss_limit": MIOU_LOSS_LIMIT,
            "sanity": SANITY_AGREEMENT,
        },
        # images, bag, topic, count: only when they calibrate (else the weights' ranges do)
        "calibration": list(astuple(options.calibration)) if own_calibration(options) else None,
        "int8_source": int8_source,
        "accuracy": record,
    }


def agreement_frames(size: tuple[int, int], count: int = FRAMES) -> list[npt.NDArray[np.uint8]]:
    """``count`` pictures at network ``size`` (H, W): street photos, then scikit-image's,
    else drawn street scenes (a robot installed by colcon alone has neither).

    Agreement on random noise says little (every path is unsure there); real frames have
    the edges and flat regions where precision loss shows, and the drawn scenes imitate them.
    """
    from refinenet_ros.backends.calibration import preprocess
    from refinenet_ros.samples import sample_images, street_images, street_scenes

    pictures = [image for _, image in street_images()]
    if len(pictures) < count:
        try:
            pictures += [image for _, image in sample_images()]
        except RuntimeError as exc:  # scikit-image not installed
            log.warning("auto: %s", exc)
    if not pictures:
        log.warning("auto: no sample pictures installed: checking agreement on drawn street scenes")
        pictures = street_scenes(count)
    return [preprocess(pictures[i % len(pictures)], size) for i in range(count)]


Builder = Callable[[Candidate], Backend]


@dataclass
class _Live:
    """A built candidate being measured."""

    cand: Candidate
    backend: Backend
    setup_s: float
    labels: dict[int, npt.NDArray[np.integer]]
    times: list[float]


def measure(
    candidates: Sequence[Candidate],
    build: Builder,
    frames: Sequence[npt.NDArray[np.uint8]],
    *,
    precision: str = "auto",
    accuracy: AccuracyRecord | None = None,
    budget_s: float = MEASURE_BUDGET_S,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[list[Measurement], Backend | None, float]:
    """Build, time and judge every candidate; returns the table, the chosen backend, seconds.

    Every candidate is built first; then each runs one warm-up call on frame 0 and timed
    rounds, one call per candidate per round on the next frame, in rotating order. The
    first fp32 candidate that builds is the agreement reference. With ``precision`` other
    than ``auto`` only that precision may be chosen (the reference is still measured).
    """
    rows: dict[str, Measurement] = {}
    live: list[_Live] = []
    for cand in candidates:
        if cand.kind == "torch" and any(item.cand.precision == "fp32" for item in live):
            # eager torch is the fallback where no compiled runtime builds: on CPUs it ran
            # 1.5-4x slower than ONNX Runtime/OpenVINO fp32, so building it only costs time
            skip = "not measured: a compiled fp32 runtime runs here"
            rows[cand.label] = Measurement(cand.kind, cand.precision, skip)
            continue
        t0 = time.perf_counter()
        try:
            backend = build(cand)
        except (BackendError, ImportError, ValueError) as exc:
            rows[cand.label] = Measurement(cand.kind, cand.precision, f"unavailable: {exc}")
            continue
        live.append(_Live(cand, backend, round(time.perf_counter() - t0, 2), {}, []))

    def call(item: _Live, index: int) -> float:
        t = time.perf_counter()
        out, _ = item.backend.infer(frames[index % len(frames)][None])
        elapsed = time.perf_counter() - t
        item.labels.setdefault(index % len(frames), np.asarray(out[0]))
        return elapsed

    spent = 0.0
    warm: dict[str, float] = {}
    for item in list(live):
        try:
            warm[item.cand.label] = call(item, 0)
        except Exception as exc:  # a runtime failing on this graph is a verdict, not a crash
            rows[item.cand.label] = Measurement(item.cand.kind, item.cand.precision, f"failed: {exc}",
                                                setup_s=item.setup_s)  # fmt: skip
            live.remove(item)
    fastest = min(warm.values(), default=0.0)
    reference = next((item for item in live if item.cand.precision == "fp32"), None)
    for item in list(live):
        w = warm[item.cand.label]
        if w > SLOWER_GIVE_UP * fastest and item is not reference:
            rows[item.cand.label] = Measurement(
                item.cand.kind, item.cand.precision,
                f"too slow: warm-up {1e3 * w:.0f} ms, {w / fastest:.1f}x the fastest", round(1e3 * w, 2),
                setup_s=item.setup_s,
            )  # fmt: skip
            live.remove(item)
    for r in range(1, max_rounds + 1):
        if r > min_rounds and spent > budget_s:
            break
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for item in order:
            item.times.append(call(item, r))
            spent += item.times[-1]

    best: tuple[float, _Live] | None = None
    for item in live:
        agree = None
        if reference is not None:
            shared = sorted(set(item.labels) & set(reference.labels))
            agree = float(np.mean([np.mean(item.labels[i] == reference.labels[i]) for i in shared]))
        verdict = admission(item.cand.label, agree, accuracy)
        if item is reference:
            verdict = "admitted: the fp32 reference"
        if verdict.startswith("admitted") and precision != "auto" and item.cand.precision != precision:
            verdict = f"reference only ({precision} asked for)"
        stats = percentiles((1e3 * t for t in item.times), (10, 50, 90))
        p50 = stats["p50"]
        rows[item.cand.label] = Measurement(
            item.cand.kind, item.cand.precision, verdict, round(p50, 2),
            None if agree is None else round(agree, 5), item.setup_s,
            round((stats["p90"] - stats["p10"]) / p50, 3) if p50 > 0 else None, len(item.times),
        )  # fmt: skip
        if verdict.startswith("admitted") and (best is None or p50 < best[0]):
            best = (p50, item)
    table = [rows[c.label] for c in candidates if c.label in rows]
    if best is not None:
        chosen = rows[best[1].cand.label]
        table = [replace(m, status="chosen, " + m.status) if m is chosen else m for m in table]
    return table, (best[1].backend if best else None), spent


def choosable(candidates: Sequence[Candidate], precision: str) -> tuple[Candidate, ...]:
    """The candidates worth building for ``precision``: all of them for ``auto``; else those
    of that precision, plus the first fp32 one as the agreement reference.

    An asked precision is the only one that may be chosen, so building the others would
    only fill the table (and INT8 calibration on frames costs seconds)."""
    if precision == "auto":
        return tuple(candidates)
    reference = next((c for c in candidates if c.precision == "fp32"), None)
    return tuple(c for c in candidates if c.precision == precision or c == reference)


def select_backend(
    model_cfg: ModelConfig,
    options: BackendOptions,
    graph: Path,
    *,
    candidates: Sequence[Candidate] | None = None,
    build: Builder,
) -> tuple[Backend, AutoDecision]:
    """The backend ``auto`` chooses on this CPU for ``graph`` (the FP32 export), and why.

    ``build`` makes one candidate's backend (the factory passes
    :func:`~refinenet_ros.backends.factory.candidate_builder`). Reuses ``<graph>.auto.json``
    when its key matches; otherwise measures and writes it.
    """
    candidates = choosable(DEFAULT_CANDIDATES if candidates is None else candidates, options.precision)
    if options.onnx is not None:  # the torch candidate would run the model, not this graph
        candidates = tuple(c for c in candidates if c.kind != "torch")
    accuracy, rule = accuracy_for(model_cfg, options, graph)
    ranges = shipped_ranges(model_cfg, options)
    int8_source = (
        hashlib.sha256(json.dumps(ranges["ranges"], sort_keys=True).encode()).hexdigest()[:16]
        if ranges
        else None
    )
    key = decision_key(graph, options, candidates, accuracy, int8_source)
    kinds = {c.kind for c in candidates}
    asked = (kinds.pop() if len(kinds) == 1 else "", options.precision)
    variant = "-".join(v for v in asked if v and v != "auto")
    path = decision_path(graph, variant)
    cached = read_json(path)
    busy = measured_when_busy(cached, key["machine"]["usable_cpus"]) if cached is not None else None
    if busy is not None:
        log.info("auto: %s: %s; measuring again", path.name, busy)
    elif cached is not None and cached.get("key") == key:
        decision = AutoDecision.from_json(cached, path)
        try:
            backend = build(Candidate(decision.kind, decision.precision))
        except BackendError as exc:
            log.warning("auto: cached choice %s no longer builds (%s); measuring again", decision.kind, exc)
        else:
            log.info("auto: %s %s from %s (measured before; delete it to measure again)",
                     decision.kind, decision.precision, path)  # fmt: skip
            return backend, decision
    elif cached is not None and cached.get("key") != key:
        changed = sorted(k for k in key if cached.get("key", {}).get(k) != key[k])
        what = ", ".join(changed) or "format"
        log.info("auto: %s no longer matches (%s changed); measuring again", path.name, what)
    require_build(f"auto: measuring the CPU candidates on {graph.name}")
    size = options.input_size or DYNAMIC_MEASURE_SIZE
    frames = agreement_frames(size)
    log.info("auto: measuring %d CPU candidates (%s) on %d real frames at %dx%d, once per machine + "
             "graph; %s", len(candidates), ", ".join(c.label for c in candidates), len(frames), size[1],
             size[0], rule)  # fmt: skip
    t0 = time.perf_counter()
    rows, chosen_backend, _ = measure(
        candidates, build, frames, precision=options.precision, accuracy=accuracy
    )
    elapsed = time.perf_counter() - t0
    chosen = next((m for m in rows if m.status.startswith("chosen")), None)
    partial = AutoDecision("", "", tuple(rows), key, path, elapsed)
    if chosen is None or chosen_backend is None:
        raise BackendError(
            f"auto: no CPU candidate both ran and was admitted at precision {options.precision}:\n"
            f"{partial.table_text()}\npin one with {option('backend')} {option('precision')}"
        )
    decision = replace(partial, kind=chosen.kind, precision=chosen.precision)
    log.info(
        "auto: chose %s %s in %.1f s of:\n%s", chosen.kind, chosen.precision, elapsed, decision.table_text()
    )
    try:
        atomic_write_text(path, json.dumps(decision.to_json(), indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only cache: the choice stands, it is just measured again next time
        log.warning("auto: decision not cached (%s)", exc)
    return chosen_backend, decision
