"""``auto`` on a CPU: measure the candidates once per machine + graph + versions, keep the fast
correct one.

No fixed preference order is right on every robot computer: on an AVX2 part ONNX Runtime
FP32 is at the core's FP32 peak, on an AMX part OpenVINO bf16 is 3x faster, and INT8 wins or
loses by model. So when TensorRT cannot run, ``auto`` builds each candidate that exists here
(:data:`DEFAULT_CANDIDATES`) in the asked precision (plus an fp32 reference; see
:func:`choosable`), times a few calls on real frames, and keeps only those whose
labels agree with the FP32 reference on >= :data:`AGREEMENT_BAR` of the pixels (and, when an
accuracy record exists for the graph, lose no more than :data:`MIOU_LOSS_LIMIT` mIoU points).
The fastest survivor is chosen, the table is logged, and the decision is written beside the
ONNX graph (``<graph>.auto.json``, atomically) keyed by the graph's sha256, the runtime
versions, the CPU (model, SIMD/AMX flags, usable CPUs) and the options that change the
answer. The next configure with the same key builds the chosen backend and measures nothing;
a new graph, runtime version or CPU measures again.

The calls are capped (:data:`CALLS_PER_CANDIDATE`, :data:`MEASURE_BUDGET_S` shared by the
candidates; never fewer than a warm-up and one timed call each, so every candidate is
compared even on a busy machine). One-off work the caches keep anyway (export, INT8
calibration, OpenVINO compilation) is reported per candidate as ``setup s``, not counted.
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

from refinenet_ros.backends.base import Backend, BackendError
from refinenet_ros.backends.engine_cache import sha256_file
from refinenet_ros.backends.prepare import require_build
from refinenet_ros.io import atomic_write_text
from refinenet_ros.machine import cpu_info, installed_versions

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig

log = logging.getLogger("refinenet_ros")

AGREEMENT_BAR = 0.995
"""Fraction of pixels whose labels must equal the FP32 reference's on real frames."""
MIOU_LOSS_LIMIT = 1.0
"""mIoU points a path may lose against FP32 (from an accuracy record) and still be chosen."""
CALLS_PER_CANDIDATE = 4
"""Calls per candidate, one per frame: the first is the warm-up (its labels still count)."""
MEASURE_BUDGET_S = 10.0
"""Seconds of calls, shared evenly by the candidates; a slow candidate gets fewer calls."""
SLOWER_GIVE_UP = 4.0
"""A candidate whose warm-up call alone takes this many times the best so far is not timed
further (warm-ups run 1-2x slower than steady state; 4x cannot catch up)."""
DYNAMIC_MEASURE_SIZE = (480, 640)
"""(H, W) measured at when the graph takes any size: VGA, the commonest robot camera mode."""
DECISION_FORMAT = 1
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
        return f"fastest of {len(self.table)} CPU candidates agreeing with FP32 ({speed}; {source})"

    def table_text(self) -> str:
        from refinenet_ros.stats import format_table

        rows = [
            [m.label, m.ms, None if m.agreement is None else f"{100 * m.agreement:.2f} %", m.setup_s,
             m.status if len(m.status) <= 90 else m.status[:87] + "..."]
            for m in self.table
        ]  # fmt: skip
        return format_table(["candidate", "min ms", "agree", "setup s", "verdict"], rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": {"kind": self.kind, "precision": self.precision},
            "measured_s": round(self.measured_s, 2),
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


def decision_path(graph: Path) -> Path:
    return graph.with_name(f"{graph.stem}.auto.json")


def accuracy_path(graph: Path) -> Path:
    return graph.with_name(f"{graph.stem}.accuracy.json")


def record_accuracy(graph: Path, kind: str, precision: str, miou: float, dataset: str) -> None:
    """Add one path's val mIoU (in %) to the graph's accuracy record, read by :func:`decide`.

    Keyed by label (``"openvino int8"``); ``"<fp32 kind> fp32"`` entries are the reference.
    Writing it changes the decision key, so the next configure measures again.
    """
    path = accuracy_path(graph)
    data = _read_json(path) or {"graph_sha256": sha256_file(graph), "dataset": dataset, "miou": {}}
    data["miou"][f"{kind} {precision}"] = round(float(miou), 3)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def accuracy_rejection(label: str, record: dict[str, Any] | None) -> str | None:
    """Why the accuracy record rules ``label`` out (None when it does not, or says nothing)."""
    if not record or label not in record.get("miou", {}):
        return None
    refs = [v for k, v in record["miou"].items() if k.endswith(" fp32")]
    if not refs:
        return None
    loss = max(refs) - float(record["miou"][label])
    if loss > MIOU_LOSS_LIMIT:
        where = record.get("dataset", "val")
        return f"rejected: loses {loss:.2f} mIoU points on {where} (limit {MIOU_LOSS_LIMIT})"
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def decision_key(
    graph: Path, options: BackendOptions, candidates: Sequence[Candidate], accuracy: dict[str, Any] | None
) -> dict[str, Any]:
    """Everything the decision depends on; a different key measures again."""
    return {
        "format": DECISION_FORMAT,
        "graph_sha256": sha256_file(graph),
        "versions": runtime_versions(),
        "machine": machine_key(),
        "threads": options.threads,
        "max_batch": options.max_batch,
        "precision": options.precision,
        "candidates": [c.label for c in candidates],
        "agreement_bar": AGREEMENT_BAR,
        "calibration": list(astuple(options.calibration)),  # images, bag, topic, count
        "accuracy": hashlib.sha256(json.dumps(accuracy, sort_keys=True).encode()).hexdigest()[:16]
        if accuracy
        else None,
    }


def agreement_frames(size: tuple[int, int], count: int = CALLS_PER_CANDIDATE) -> list[npt.NDArray[np.uint8]]:
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


def measure(
    candidates: Sequence[Candidate],
    build: Builder,
    frames: Sequence[npt.NDArray[np.uint8]],
    *,
    precision: str = "fp32",
    accuracy: dict[str, Any] | None = None,
    budget_s: float = MEASURE_BUDGET_S,
) -> tuple[list[Measurement], Backend | None, float]:
    """Build, time and check every candidate; returns the table, the chosen backend, seconds.

    The first fp32 candidate that builds is the reference. With ``precision`` other than
    fp32 only that precision may be chosen (the reference is still measured, to compare).
    """
    rows: list[Measurement] = []
    reference: list[npt.NDArray[np.integer]] | None = None
    best: tuple[float, int, Backend] | None = None
    spent = 0.0
    share = budget_s / max(1, len(candidates))
    for cand in candidates:
        t0 = time.perf_counter()
        try:
            backend = build(cand)
        except (BackendError, ImportError, ValueError) as exc:
            rows.append(Measurement(cand.kind, cand.precision, f"unavailable: {exc}"))
            continue
        setup = time.perf_counter() - t0
        give_up = SLOWER_GIVE_UP * best[0] / 1e3 if best is not None else float("inf")
        try:
            labels, times = _time_calls(backend, frames, share, give_up)
        except Exception as exc:  # a runtime failing on this graph is a verdict, not a crash
            rows.append(Measurement(cand.kind, cand.precision, f"failed: {exc}", setup_s=round(setup, 2)))
            continue
        spent += sum(times)
        ms = round(1e3 * min(times[1:] or times), 2)
        if len(times) == 1:  # gave up after the warm-up: far slower than the best so far
            rows.append(Measurement(cand.kind, cand.precision, f"too slow: warm-up {ms:.0f} ms", ms,
                                    None, round(setup, 2)))  # fmt: skip
            continue
        if reference is None and cand.precision == "fp32":
            reference = labels
        agree = (
            float(np.mean([np.mean(a == b) for a, b in zip(labels, reference, strict=False)]))
            if reference is not None
            else None
        )
        verdict = "ok"
        if agree is None:
            verdict = "rejected: no fp32 reference built to compare with"
        elif agree < AGREEMENT_BAR:
            verdict = f"rejected: agrees on {100 * agree:.2f} % < {100 * AGREEMENT_BAR:.1f} %"
        elif cand.precision != precision:
            verdict = f"reference only ({precision} asked for)"
        else:
            verdict = accuracy_rejection(cand.label, accuracy) or "ok"
        rows.append(
            Measurement(cand.kind, cand.precision, verdict, ms, None if agree is None else round(agree, 5),
                        round(setup, 2))
        )  # fmt: skip
        if verdict == "ok" and (best is None or ms < best[0]):
            best = (ms, len(rows) - 1, backend)
        else:
            del backend  # only the fastest so far stays alive
    if best is not None:
        rows[best[1]] = replace(rows[best[1]], status="chosen")
    return rows, (best[2] if best else None), spent


def _time_calls(
    backend: Backend, frames: Sequence[npt.NDArray[np.uint8]], share_s: float, give_up_s: float
) -> tuple[list[npt.NDArray[np.integer]], list[float]]:
    """Labels of every frame and the call times; the first call (frame 0) is the warm-up.

    Up to one timed call per further frame, fewer when the warm-up says they would overrun
    this candidate's share of the budget — but at least one, so every candidate is timed
    and checked on two frames even on a busy machine — unless the warm-up alone took
    ``give_up_s`` (far slower than the best so far: it cannot win, stop paying for it).
    """
    labels: list[npt.NDArray[np.integer]] = []
    times: list[float] = []
    for i, frame in enumerate(frames):
        if i == 1 and times[0] > give_up_s:
            break
        if i >= 2 and sum(times) + times[0] > share_s:
            break
        t = time.perf_counter()
        out, _ = backend.infer(frame[None])
        times.append(time.perf_counter() - t)
        labels.append(np.asarray(out[0]))
    return labels, times


def choosable(candidates: Sequence[Candidate], precision: str) -> tuple[Candidate, ...]:
    """The candidates worth building for ``precision``: those of that precision, plus the
    first fp32 one as the agreement reference.

    Only the asked precision may be chosen, so building the others only fills the table, and
    one of them is costly: INT8 calibration took 14-32 s of the first measurement's 24-38 s
    (the <= 10 s goal) on 2 cores with ``precision`` fp32, where int8 could never be chosen."""
    reference = next((c for c in candidates if c.precision == "fp32"), None)
    return tuple(c for c in candidates if c.precision == precision or c == reference)


def select_backend(
    model_cfg: ModelConfig,
    options: BackendOptions,
    graph: Path,
    *,
    candidates: Sequence[Candidate] | None = None,
    build: Builder | None = None,
) -> tuple[Backend, AutoDecision]:
    """The backend ``auto`` chooses on this CPU for ``graph`` (the FP32 export), and why.

    Reuses ``<graph>.auto.json`` when its key matches; otherwise measures and writes it.
    """
    from refinenet_ros.backends.factory import create_backend

    candidates = choosable(DEFAULT_CANDIDATES if candidates is None else candidates, options.precision)
    if options.onnx is not None:  # the torch candidate would run the model, not this graph
        candidates = tuple(c for c in candidates if c.kind != "torch")
    if build is None:

        def build(cand: Candidate) -> Backend:
            return create_backend(model_cfg, replace(options, kind=cand.kind, precision=cand.precision))

    accuracy = _read_json(accuracy_path(graph))
    key = decision_key(graph, options, candidates, accuracy)
    path = decision_path(graph)
    cached = _read_json(path)
    if cached is not None and cached.get("key") == key:
        decision = AutoDecision.from_json(cached, path)
        try:
            backend = build(Candidate(decision.kind, decision.precision))
        except BackendError as exc:
            log.warning("auto: cached choice %s no longer builds (%s); measuring again", decision.kind, exc)
        else:
            log.info("auto: %s %s from %s (measured before; delete it to measure again)",
                     decision.kind, decision.precision, path)  # fmt: skip
            return backend, decision
    elif cached is not None:
        changed = sorted(k for k in key if cached.get("key", {}).get(k) != key[k])
        what = ", ".join(changed) or "format"
        log.info("auto: %s no longer matches (%s changed); measuring again", path.name, what)
    require_build(f"auto: measuring the CPU candidates on {graph.name}")
    size = options.input_size or DYNAMIC_MEASURE_SIZE
    frames = agreement_frames(size)
    log.info("auto: measuring %d CPU candidates on %d real frames at %dx%d (once per machine + graph)",
             len(candidates), len(frames), size[1], size[0])  # fmt: skip
    t0 = time.perf_counter()
    rows, chosen_backend, _ = measure(
        candidates, build, frames, precision=options.precision, accuracy=accuracy
    )
    elapsed = time.perf_counter() - t0
    chosen = next((m for m in rows if m.status == "chosen"), None)
    partial = AutoDecision("", "", tuple(rows), key, path, elapsed)
    if chosen is None or chosen_backend is None:
        raise BackendError(
            f"auto: no CPU candidate both ran and agreed with FP32 at {options.precision}:\n"
            f"{partial.table_text()}\npin one with --backend/--precision (-p backend:=... -p precision:=...)"
        )
    decision = replace(partial, kind=chosen.kind, precision=chosen.precision)
    log.info("auto: chose %s %s of:\n%s", chosen.kind, chosen.precision, decision.table_text())
    try:
        atomic_write_text(path, json.dumps(decision.to_json(), indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only cache: the choice stands, it is just measured again next time
        log.warning("auto: decision not cached (%s)", exc)
    return chosen_backend, decision
