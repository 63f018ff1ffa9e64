"""``bench fleet``: ``refinenet-ros fleet`` on Ray against the plain bag job, on the same bags.

It measures the fleet's two goals: one worker at >= 0.9x the plain bag job (what Ray
costs), and two one-thread workers at >= 1.7x one worker on a 2-core machine (how far
workers scale). This bench generates ``bags`` small bags with the sample-bag
writer and times, with the same model, backend, batch and threads:

- ``bag``: the bag job (``bag.run_bag``) over every bag in series, in this process, one
  Segmenter loaded once (what ``refinenet-ros bag`` in a loop does, minus its start-up);
- ``fleet_N``: :func:`refinenet_ros.fleet.run_fleet` with N workers x ``threads`` threads
  each, a fresh output folder per run (no manifest skips).

Each path is reported twice: *total* frames/s over its whole wall time (the bag path
including its model load; a fleet run including its workers' start and model loads) and
*steady* frames/s once the model is loaded (bag: the bag job alone; fleet: from the
first worker being ready to the end). Ray's own start-up (embedded local Ray) is timed
once, separately, and added to the fleet totals in ``*_with_ray_fps``. The goals are
judged on the steady figures, which a long fleet run approaches; the totals show what
bounds a short one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from refinenet_ros.backends.base import BackendOptions
from refinenet_ros.bench import BenchError
from refinenet_ros.bench.report import model_json
from refinenet_ros.config import ModelConfig
from refinenet_ros.fleet.cluster import import_ray
from refinenet_ros.machine import busy_cores, cpu_times
from refinenet_ros.stats import format_table

log = logging.getLogger("refinenet_ros")

GENERATED_TOPIC = "/camera/image_raw"
ONE_WORKER_GOAL = 0.9
"""fleet with one worker >= 0.9x the plain bag job: what Ray may cost."""
TWO_WORKER_GOAL = 1.7
"""two one-thread workers >= 1.7x one worker on a 2-core machine: how far workers scale."""


@dataclass(frozen=True)
class FleetBenchSettings:
    """The bags to generate and the one model/backend every path runs."""

    model_cfg: ModelConfig
    backend: BackendOptions
    """``max_batch`` is the bag job's batch; ``threads`` is replaced by ``threads``."""
    bags: int = 4
    frames: int = 30
    image_size: tuple[int, int] = (480, 640)  # (H, W) of the generated frames
    storage: str = "mcap"
    workers: tuple[int, ...] = (1, 2)
    threads: int = 1
    """CPU threads of the bag path and of each fleet worker (Ray CPUs per worker)."""
    keep: str | None = None
    """Keep the generated and output bags in this folder (None: a temporary one)."""
    ray_address: str | None = None
    """None: an embedded local Ray, started (and timed) by this bench."""
    outputs: tuple[str, ...] = field(default=())
    """Output kinds (empty: all, as bag and fleet default to)."""

    def check(self) -> None:
        if self.bags < 1 or self.frames < 1:
            raise BenchError(f"--bags {self.bags} --frames {self.frames}: both must be >= 1")
        if self.threads < 1:
            raise BenchError(f"--threads {self.threads}: each worker needs at least 1")
        if not self.workers or min(self.workers) < 1:
            raise BenchError(f"--workers {' '.join(map(str, self.workers))}: each must be >= 1")

    @property
    def batch(self) -> int:
        return max(1, self.backend.max_batch)

    def run_backend(self) -> BackendOptions:
        """What every path runs: ``threads`` threads, and a CPU unless a device was named
        (a fleet worker without a GPU of its own must not find one, as ``fleet`` does)."""
        device = "cpu" if self.backend.device == "auto" else self.backend.device
        return replace(self.backend, threads=self.threads, device=device)

    def to_json(self) -> dict[str, Any]:
        return {
            **model_json(self.model_cfg, self.run_backend(), self.batch),
            "bags": self.bags,
            "frames_per_bag": self.frames,
            "image_size": list(self.image_size),
            "storage": self.storage,
            "workers": list(self.workers),
            "threads_per_worker": self.threads,
            "ray_address": self.ray_address,
        }


def generate_bags(folder: Path, settings: FleetBenchSettings) -> list[Path]:
    """``bags`` sample bags of ``frames`` frames each, as ``bench bag`` generates one."""
    from refinenet_ros.bag import write_sample_bag

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(settings.bags):
        path = folder / f"bag_{i:03d}"
        if path.exists():
            raise BenchError(f"{path} exists: give another --keep folder")
        write_sample_bag(path, frames=settings.frames, size=settings.image_size, topic=GENERATED_TOPIC,
                         storage=settings.storage)  # fmt: skip
        paths.append(path)
    return paths


def _bag_options(settings: FleetBenchSettings) -> Any:
    from refinenet_ros.bag import OUTPUT_KINDS, BagOptions

    return BagOptions(
        image_topics=(GENERATED_TOPIC,),
        outputs=settings.outputs or OUTPUT_KINDS,
        storage=settings.storage,
        batch=settings.batch,
        progress=False,
        force=True,
    )


def run_serial_bag(settings: FleetBenchSettings, bags: list[Path], out: Path) -> dict[str, Any]:
    """The plain bag job over every bag, one Segmenter, in this process."""
    from refinenet_ros.bag import overlap_helps, run_bag
    from refinenet_ros.segmenter import build_segmenter

    backend = settings.run_backend()
    t0 = time.perf_counter()
    segmenter = build_segmenter(settings.model_cfg.resolved(), backend)
    load_s = time.perf_counter() - t0
    # what a fleet worker (and `refinenet-ros bag --overlap auto`) picks for this device/threads
    overlap = overlap_helps(segmenter.backend.device, backend.threads)
    options = replace(_bag_options(settings), overlap=overlap)
    frames = 0
    t1 = time.perf_counter()
    for path in bags:
        frames += run_bag(path, out / path.name, segmenter, options).frames
    steady_s = time.perf_counter() - t1
    return {
        "frames": frames,
        "backend": segmenter.backend.name,
        "overlap": overlap,
        "model_load_s": round(load_s, 3),
        "seconds": round(load_s + steady_s, 3),
        "steady_seconds": round(steady_s, 3),
        "total_fps": round(frames / (load_s + steady_s), 3),
        "steady_fps": round(frames / steady_s, 3) if steady_s > 0 else 0.0,
    }


def start_ray(settings: FleetBenchSettings) -> tuple[bool, float | None]:
    """Ray as ``refinenet-ros fleet`` starts it; (whether this bench started it, seconds).

    A process already connected to Ray (a notebook, a test) keeps its instance: no
    start-up to time (None)."""
    try:
        ray = import_ray()
    except ImportError:
        raise BenchError(
            "bench fleet needs Ray: pip install 'refinenet_ros[fleet]' (or ray==2.60.0)"
        ) from None
    from refinenet_ros.fleet import FleetError, FleetSettings
    from refinenet_ros.fleet.cluster import init_ray

    if ray.is_initialized():
        return False, None
    fleet_settings = FleetSettings(
        address=settings.ray_address, workers=max(settings.workers), threads_per_worker=settings.threads
    )
    t0 = time.perf_counter()
    try:
        init_ray(fleet_settings)
    except FleetError as exc:  # --ray-address with no cluster there
        raise BenchError(str(exc)) from None
    except Exception as exc:  # Ray's own start-up (raylet registration on a busy machine)
        ray.shutdown()
        raise BenchError(
            f"Ray did not start: {str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
        ) from None
    return True, time.perf_counter() - t0


def run_fleet_once(settings: FleetBenchSettings, inputs: Path, out: Path, workers: int) -> dict[str, Any]:
    """``run_fleet`` with ``workers`` workers into a fresh folder; its figures."""
    from refinenet_ros.fleet import FleetError, FleetJob, FleetSettings, discover, run_fleet

    bags = discover([inputs], out)
    job = FleetJob(settings.model_cfg.resolved(), settings.run_backend(), _bag_options(settings), "auto")
    fleet = FleetSettings(
        address=settings.ray_address, workers=workers, threads_per_worker=settings.threads, progress=False
    )
    try:
        summary = run_fleet(bags, out, job, fleet)
    except FleetError as exc:  # no worker could load the model
        raise BenchError(f"fleet with {workers} workers: {exc}") from None
    if not summary.ok:
        raise BenchError(
            f"fleet with {workers} workers: {summary.failed[0]['input']}: {summary.failed[0]['error']}"
        )
    steady_s = summary.seconds - summary.startup_s
    loads = [float(w.get("load_s", 0.0)) for w in summary.workers.values()]
    return {
        "workers": workers,
        # workers that came up before the bags ran out (a short run can end on fewer)
        "workers_used": len(summary.workers),
        "frames": summary.frames,
        "seconds": round(summary.seconds, 3),
        "startup_s": round(summary.startup_s, 3),
        "model_load_s": [round(x, 3) for x in loads],
        "steady_seconds": round(steady_s, 3),
        "total_fps": round(summary.fps, 3),
        "steady_fps": round(summary.frames / steady_s, 3) if steady_s > 0 else 0.0,
        "worker_busy_fps": {k: w.get("fps") for k, w in sorted(summary.workers.items())},
        "bags_per_worker": {k: w.get("bags") for k, w in sorted(summary.workers.items())},
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def run_fleet_bench(settings: FleetBenchSettings) -> dict[str, Any]:
    """Generate the bags, run the bag path then each fleet width; the JSON figures."""
    settings.check()
    try:
        ray = import_ray()
    except ImportError:
        raise BenchError(
            "bench fleet needs Ray: pip install 'refinenet_ros[fleet]' (or ray==2.60.0)"
        ) from None
    work = Path(settings.keep) if settings.keep else Path(tempfile.mkdtemp(prefix="refinenet-bench-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    torch_threads = _torch_threads()
    started = False
    try:
        inputs = work / "inputs"
        bags = generate_bags(inputs, settings)
        # One untimed load first: an ONNX export or a graph build the cache keeps would
        # otherwise be charged to whichever path runs first.
        from refinenet_ros.segmenter import build_segmenter

        t0 = time.perf_counter()
        build_segmenter(settings.model_cfg.resolved(), settings.run_backend())
        prepare_s = time.perf_counter() - t0
        bag = _with_load(partial(run_serial_bag, settings, bags, work / "bag_out"))
        _restore_torch_threads(torch_threads)  # the backend set this process's pool to `threads`
        started, ray_start_s = start_ray(settings)
        runs: dict[str, dict[str, Any]] = {}
        for n in settings.workers:
            out = work / f"fleet_{n}_out"
            runs[f"fleet_{n}"] = _with_load(partial(run_fleet_once, settings, inputs, out, n))
    finally:
        if started:
            ray.shutdown()
        _restore_torch_threads(torch_threads)
        if not settings.keep:
            shutil.rmtree(work, ignore_errors=True)
    ray_s = ray_start_s or 0.0
    for r in runs.values():
        r["total_with_ray_fps"] = round(r["frames"] / (r["seconds"] + ray_s), 3)
    figures: dict[str, Any] = {
        "frames": bag["frames"],
        "prepare_s": round(prepare_s, 3),
        "ray_start_s": None if ray_start_s is None else round(ray_start_s, 3),
        "bag": bag,
        **runs,
    }
    one, two = runs.get("fleet_1"), runs.get("fleet_2")
    goals: dict[str, Any] = {}
    if one is not None:
        steady = _ratio(one["steady_fps"], bag["steady_fps"])
        goals["fleet1_vs_bag"] = {
            "goal": ONE_WORKER_GOAL,
            "steady": steady,
            "total": _ratio(one["total_fps"], bag["total_fps"]),
            "total_with_ray": _ratio(one["total_with_ray_fps"], bag["total_fps"]),
            "met": steady is not None and steady >= ONE_WORKER_GOAL,
        }
    if one is not None and two is not None:
        steady = _ratio(two["steady_fps"], one["steady_fps"])
        goals["fleet2_vs_fleet1"] = {
            "goal": TWO_WORKER_GOAL,
            "steady": steady,
            "total": _ratio(two["total_fps"], one["total_fps"]),
            "met": steady is not None and steady >= TWO_WORKER_GOAL,
        }
    figures["goals"] = goals
    return {"fleet": figures}


def _with_load(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``'s figures plus what the whole machine did meanwhile: average busy cores
    (this bench's own processes and anyone else's) and the 1-minute load before. One
    worker using 2 busy cores, or two using 1, says the run did not have the cores it
    assumed (another process had them), which no frames/s figure shows by itself."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    before = cpu_times()
    figures = measure()
    figures["busy_cores"] = busy_cores(before, cpu_times())
    figures["load_1m_before"] = None if load is None else round(load, 2)
    return figures


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _restore_torch_threads(n: int | None) -> None:
    import sys

    torch = sys.modules.get("torch")
    if n is not None and torch is not None:
        torch.set_num_threads(n)


def fleet_table(figures: dict[str, Any], settings: FleetBenchSettings) -> str:
    """Headline, one row per path (total and steady frames/s) and the goals, as printed."""
    f = figures["fleet"]
    bag = f["bag"]
    ray = "already running" if f["ray_start_s"] is None else f"{f['ray_start_s']:.1f} s"
    lines = [
        f"bench fleet: {settings.bags} bags x {settings.frames} frames "
        f"{settings.image_size[1]}x{settings.image_size[0]}, backend {bag['backend']}, "
        f"batch {settings.batch}, {settings.threads} thread(s) per worker; Ray start-up {ray}"
    ]
    rows: list[list[Any]] = [
        ["bag job in series (1 process)", bag["total_fps"], bag["steady_fps"], bag["model_load_s"], None,
         None, bag.get("busy_cores")],
    ]  # fmt: skip
    for name, r in f.items():
        if name.startswith("fleet_"):
            rows.append([
                f"fleet, {r['workers']} worker(s) ({r['workers_used']} used)", r["total_fps"],
                r["steady_fps"], max(r["model_load_s"] or [0]), r["startup_s"], r["total_with_ray_fps"],
                r.get("busy_cores"),
            ])  # fmt: skip
    headers = ["path", "frames/s total", "frames/s steady", "model load s", "workers up s", "total + Ray",
               "busy cores (machine)"]  # fmt: skip
    lines.append(format_table(headers, rows))
    for key, label in (
        ("fleet1_vs_bag", "fleet 1 worker / bag"),
        ("fleet2_vs_fleet1", "fleet 2 workers / 1"),
    ):
        g = f["goals"].get(key)
        if g is not None:
            verdict = "met" if g["met"] else "NOT met"
            lines.append(
                f"{label}: {g['steady']}x steady, {g['total']}x total "
                f"(goal >= {g['goal']}x steady: {verdict})"
            )
    return "\n".join(lines)
