"""The driver: skip what the manifest proves done, hand the rest to Ray workers, record results.

Only the driver touches the manifest and the summary; workers write output bags through
the bag job's stage folder + atomic rename and return one small dict per bag. Work is
handed out one bag per worker at a time (no queue on a worker that could die with it),
so a fast worker takes more bags and a lost worker holds back one bag, which Ray retries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinenet_ros.fleet.cluster import FleetSettings, check_address, import_ray, init_ray
from refinenet_ros.fleet.inputs import BagInput, FleetError, is_bag_folder
from refinenet_ros.fleet.manifest import (
    SUMMARY_NAME,
    Manifest,
    input_fingerprint,
    job_fingerprint,
    locked,
    output_fingerprint,
)
from refinenet_ros.fleet.worker import BagWorker, FleetJob, ProgressBoard

log = logging.getLogger("refinenet_ros")


@dataclass(frozen=True)
class FleetProgress:
    """What ``on_progress`` sees each poll: bags finished, frames so far, bags in flight."""

    bags_total: int
    bags_finished: int
    frames: int
    active: dict[str, tuple[int, int, int]]  # rel -> (worker index, pid, frames so far)


@dataclass
class FleetSummary:
    out_dir: Path
    job: str
    bags: int = 0
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"input", "output", "error"}
    retried: dict[str, int] = field(default_factory=dict)  # input -> attempts
    frames: int = 0
    malformed: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "job": self.job,
            "ok": self.ok,
            "bags": self.bags,
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": self.failed,
            "retried": self.retried,
            "frames": self.frames,
            "malformed": self.malformed,
            "seconds": round(self.seconds, 3),
            "startup_s": round(self.startup_s, 3),
            "fps": round(self.fps, 3),
            "workers": self.workers,
        }

    def describe(self) -> str:
        lines = [
            f"{self.bags} bags: {len(self.done)} segmented, {len(self.skipped)} already done (skipped), "
            f"{len(self.failed)} failed; {self.frames} frames in {self.seconds:.1f} s "
            f"({self.fps:.2f} frames/s overall, {self.startup_s:.1f} s of it starting workers) "
            f"-> {self.out_dir}"
        ]
        for name, w in sorted(self.workers.items()):
            lines.append(
                f"  worker {name} ({w['host']}, {w['device']}): {w['bags']} bags, {w['frames']} frames, "
                f"{w['fps']:.2f} frames/s while busy, model loaded in {w['load_s']:.1f} s"
            )
        if self.malformed:
            lines.append(f"  {self.malformed} malformed frames skipped (each logged by its bag)")
        for path, attempts in sorted(self.retried.items()):
            lines.append(f"  retried after its worker died: {path} ({attempts} attempts)")
        for f in self.failed:
            lines.append(f"  FAILED {f['input']}: {f['error']}")
        return "\n".join(lines)


def run_fleet(
    bags: Sequence[BagInput],
    out_dir: str | os.PathLike[str],
    job: FleetJob,
    settings: FleetSettings,
    *,
    on_progress: Callable[[FleetProgress], None] | None = None,
) -> FleetSummary:
    """Segment every bag not already done into ``out_dir``; the summary says what happened.

    Uses the Ray instance this process is connected to when there is one (tests, notebooks),
    else starts (and stops) an embedded one or joins ``settings.address``.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    if settings.address is not None:
        check_address(settings.address)
    with locked(out):
        manifest = Manifest(out)
        manifest.compact()
        jobfp = job_fingerprint(job.description())
        summary = FleetSummary(out_dir=out, job=jobfp, bags=len(bags))
        todo: list[tuple[BagInput, dict[str, list[int]]]] = []
        for bag in bags:
            fp = input_fingerprint(bag.path)
            if manifest.is_done(bag.rel, fp, jobfp, bag.output(out)):
                summary.skipped.append(str(bag.path))
            else:
                todo.append((bag, fp))
        if summary.skipped:
            log.info(
                "%d of %d bags already done for this model and input (manifest): skipped",
                len(summary.skipped),
                len(bags),
            )
        if todo:
            try:
                _Run(todo, out, job, jobfp, settings, manifest, summary, on_progress).run()
            finally:
                manifest.compact()  # one line per output again, also after Ctrl-C
        summary.seconds = time.perf_counter() - t0
        _write_json(out / SUMMARY_NAME, summary.as_dict())
    return summary


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def expected_frames(bag: Path, topics: Sequence[str]) -> int:
    """Image messages of ``topics`` in a bag, from its metadata (0 when unknown): the
    progress bar's total, read without opening the data files where possible."""
    import yaml

    try:
        if is_bag_folder(bag):
            meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
            return sum(
                int(t["message_count"])
                for t in meta["topics_with_message_count"]
                if t["topic_metadata"]["name"] in topics
            )
        from rosbags.rosbag2 import Reader

        with Reader(bag) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic in topics)
    except Exception:  # the worker reports a broken bag; the bar just knows less
        return 0


class _Run:
    """One fleet run on Ray: start workers, hand out bags, record results, report progress."""

    def __init__(
        self,
        todo: list[tuple[BagInput, dict[str, list[int]]]],
        out: Path,
        job: FleetJob,
        jobfp: str,
        settings: FleetSettings,
        manifest: Manifest,
        summary: FleetSummary,
        on_progress: Callable[[FleetProgress], None] | None,
    ) -> None:
        self.todo, self.out, self.job, self.jobfp = todo, out, job, jobfp
        self.settings, self.manifest, self.summary = settings, manifest, summary
        self.on_progress = on_progress
        self.finished_frames: dict[str, int] = {}

    def run(self) -> None:
        ray = import_ray()

        started = False
        if not ray.is_initialized():
            try:
                init_ray(self.settings)
            except BaseException:  # Ctrl-C/SIGTERM while Ray starts: stop what it started
                with contextlib.suppress(Exception):
                    ray.shutdown()
                raise
            started = True
        workers: list[Any] = []
        board: Any = None
        try:
            n = _worker_count(self.settings, len(self.todo))
            board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            actor = ray.remote(BagWorker).options(
                num_cpus=self.settings.threads_per_worker,
                num_gpus=self.settings.gpus_per_worker,
                max_restarts=-1,
                max_task_retries=self.settings.retries,
            )
            log.info(
                "%d workers x %d threads%s on Ray (%s)",
                n,
                self.settings.threads_per_worker,
                f" x {self.settings.gpus_per_worker:g} GPU" if self.settings.gpus_per_worker else "",
                self.settings.address or "embedded local",
            )
            # One reference held for the whole run: a restarted worker is built from it again.
            job_ref = ray.put(self.job)
            workers = [actor.remote(job_ref, board, i) for i in range(n)]
            self._dispatch(workers, board)
        finally:
            for a in [*workers, board]:
                if a is not None:
                    ray.kill(a)
            if started:
                ray.shutdown()

    def _dispatch(self, workers: list[Any], board: Any) -> None:
        import ray
        from ray.exceptions import RayError

        t0 = time.perf_counter()
        pending = deque(self.todo)
        inflight: dict[Any, tuple[int, tuple[BagInput, dict[str, list[int]]] | None]] = {
            w.ready.remote(): (i, None) for i, w in enumerate(workers)
        }
        bar = self._bar()
        start_errors: list[str] = []
        first_ready: float | None = None
        try:
            while pending or any(item is not None for _, item in inflight.values()):
                if not inflight:  # every worker failed to start
                    raise FleetError(f"no worker could load the model: {start_errors[0]}")
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=self.settings.poll_s)
                for ref in done:
                    i, item = inflight.pop(ref)
                    try:
                        value = ray.get(ref)
                    except RayError as exc:  # the worker died, could not start or be placed
                        if item is None:
                            start_errors.append(_short(exc))
                            log.error("worker %d could not start: %s", i, start_errors[-1])
                            continue
                        value = {
                            "status": "failed",
                            "worker": i,
                            "error": "its worker died "
                            f"{self.settings.retries + 1} times while segmenting it: {_short(exc)}",
                        }
                    if item is None:
                        first_ready = first_ready or time.perf_counter()
                        self.summary.workers[f"w{i}"] = {
                            **value,
                            "bags": 0,
                            "frames": 0,
                            "busy_s": 0.0,
                            "fps": 0.0,
                        }
                    else:
                        self._finish(item, value)
                    if pending:
                        nxt = pending.popleft()
                        bag = nxt[0]
                        ref = workers[i].process.remote(str(bag.path), str(bag.output(self.out)), bag.rel)
                        inflight[ref] = (i, nxt)
                self._report(board, bar)
        finally:
            bar.close()
        self.summary.startup_s = (first_ready or time.perf_counter()) - t0
        snapshot = ray.get(board.snapshot.remote())
        by_rel = {bag.rel: str(bag.path) for bag, _ in self.todo}
        self.summary.retried = {by_rel[r]: n for r, n in snapshot["starts"].items() if n > 1 and r in by_rel}

    def _finish(self, item: tuple[BagInput, dict[str, list[int]]], value: dict[str, Any]) -> None:
        bag, fp = item
        rec = {
            "output": bag.rel,
            "input": str(bag.path.absolute()),
            "input_fingerprint": fp,
            "job": self.jobfp,
            **value,
        }
        if value["status"] == "done":  # what is on disk now: a later change means redo
            rec["output_files"] = output_fingerprint(bag.output(self.out))
        self.manifest.record(rec)
        if value["status"] == "done":
            self.summary.done.append(str(bag.path))
            frames = int(value.get("frames", 0))
            self.summary.frames += frames
            self.summary.malformed += int(value.get("malformed", 0))
            self.finished_frames[bag.rel] = frames
            w = self.summary.workers.get(f"w{value['worker']}")
            if w is not None:
                w["bags"] += 1
                w["frames"] += frames
                w["busy_s"] = round(w["busy_s"] + float(value.get("seconds", 0.0)), 3)
                w["fps"] = round(w["frames"] / w["busy_s"], 3) if w["busy_s"] > 0 else 0.0
        else:
            self.finished_frames[bag.rel] = 0
            self.summary.failed.append(
                {
                    "input": str(bag.path),
                    "output": str(bag.output(self.out)),
                    "error": str(value.get("error")),
                }
            )
            log.error("%s: %s", bag.path, value.get("error"))

    def _bar(self) -> Any:
        if not self.settings.progress:
            return _NoBar()
        from tqdm import tqdm

        topics = self.job.bag.image_topics
        total = sum(expected_frames(bag.path, topics) for bag, _ in self.todo)
        return tqdm(total=total or None, unit="frame", desc=f"bags 0/{len(self.todo)}", dynamic_ncols=True)

    def _report(self, board: Any, bar: Any) -> None:
        import ray

        snap = ray.get(board.snapshot.remote())
        frames = sum(self.finished_frames.values()) + sum(
            n for rel, n in snap["frames"].items() if rel not in self.finished_frames
        )
        finished = len(self.summary.done) + len(self.summary.failed)
        bar.n = frames
        bar.set_description(f"bags {finished}/{len(self.todo)}", refresh=False)
        if self.summary.failed:
            bar.set_postfix(failed=len(self.summary.failed), refresh=False)
        bar.refresh()
        if self.on_progress is not None:
            active = {
                rel: (w, pid, snap["frames"].get(rel, 0))
                for rel, (w, pid) in snap["active"].items()
                if rel not in self.finished_frames
            }
            self.on_progress(FleetProgress(len(self.todo), finished, frames, active))


class _NoBar:
    n = 0

    def set_description(self, *a: Any, **k: Any) -> None:
        pass

    def set_postfix(self, *a: Any, **k: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _short(exc: BaseException) -> str:
    """Ray's actor errors run to pages; the first line says what happened."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _worker_count(settings: FleetSettings, bags: int) -> int:
    """Workers to start: as asked, else as many as the cluster's resources fit; never more
    than bags. A worker that cannot fit anywhere would wait forever, so that is an error."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    tpw, gpw = settings.threads_per_worker, settings.gpus_per_worker
    if gpw > 0 and gpus < gpw:
        raise FleetError(f"--gpus-per-worker {gpw:g}: the Ray cluster has {gpus:g} GPUs")
    if cpus < tpw:
        raise FleetError(f"--threads-per-worker {tpw}: the Ray cluster has {cpus:g} CPUs")
    fit = int(cpus // tpw)
    if gpw > 0:
        fit = min(fit, int(gpus // gpw + 1e-9))
    n = settings.workers or fit
    if n > fit:
        log.warning("--workers %d: the cluster fits %d now; the others start when resources free up", n, fit)
    return max(1, min(n, bags))
