"""What runs inside a Ray worker: a bag worker that holds one Segmenter, and the progress board.

Plain classes (no Ray import): :mod:`refinenet_ros.fleet.runner` turns them into actors,
so this module imports, type-checks and unit-tests without Ray. Each worker process
imports the installed ``refinenet_ros`` (on a cluster: the same version on every node).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refinenet_ros.errors import OptionWords, option_words, use_option_words
from refinenet_ros.fleet.manifest import output_counts

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.bag import BagOptions
    from refinenet_ros.config import ModelConfig

log = logging.getLogger("refinenet_ros")


@dataclass(frozen=True)
class FleetJob:
    """What every bag gets, resolved once on the driver and shipped to each worker:
    ``bag`` is exactly the :class:`BagOptions` that ``refinenet-ros bag`` would build."""

    model: ModelConfig
    backend: BackendOptions
    bag: BagOptions
    overlap: str = "auto"  # auto | on | off, as ``refinenet-ros bag --overlap``
    words: OptionWords = field(default_factory=option_words)  # the driver's, for the workers' advice

    def description(self) -> dict[str, Any]:
        """Everything that can change an output's bytes (not threads or progress): a new
        model, weights file, backend, precision, size or bag option redoes every bag."""
        from refinenet_ros import __version__
        from refinenet_ros.fleet.manifest import file_sha256

        m, b, o = self.model.resolved(), self.backend, self.bag
        return {
            "refinenet_ros": __version__,
            "model": m.model,
            "labels": m.labels,
            "seed": m.seed,
            "cascaded": m.cascaded,
            "mean": m.mean,
            "std": m.std,
            "weights_sha256": file_sha256(m.weights) if m.weights else None,
            "backend": b.kind,
            "device": b.device,
            "precision": b.precision,
            "network_size": b.input_size or m.network_size,
            "batch": o.batch,
            "onnx": b.onnx,
            "image_topics": list(o.image_topics),
            "outputs": list(o.outputs),
            "copy": o.copy,
            "storage": o.storage,
            "alpha": o.alpha,
            "max_pixels": o.max_pixels,
        }


class ProgressBoard:
    """Frames per bag as the workers report them (a CPU-free actor the driver polls).

    ``start`` resets a bag's count, so a retried bag is not counted twice, and counts the
    attempts, so the summary can say which bags a dead worker cost a retry.
    """

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.active: dict[str, tuple[int, int]] = {}  # rel -> (worker index, pid)

    def start(self, rel: str, worker: int, pid: int) -> None:
        self.frames[rel] = 0
        self.starts[rel] = self.starts.get(rel, 0) + 1
        self.active[rel] = (worker, pid)

    def update(self, rel: str, frames: int) -> None:
        self.frames[rel] = frames

    def finish(self, rel: str) -> None:
        self.active.pop(rel, None)

    def snapshot(self) -> dict[str, Any]:
        return {"frames": dict(self.frames), "starts": dict(self.starts), "active": dict(self.active)}


class BagWorker:
    """Loads the Segmenter once, then segments whole bags with the bag job, one at a time.

    A bag's own failure (corrupt, missing topic, not our folder at the output path) comes
    back as a ``failed`` result with one line of text: the run goes on. Only the death of
    the process (OOM killer, lost node, SIGKILL) reaches Ray, which restarts the worker and
    retries the bag; the bag job's stage folder lock lets the retry remove the debris.
    """

    def __init__(self, job: FleetJob, board: Any, index: int) -> None:
        from refinenet_ros.bag import overlap_helps
        from refinenet_ros.segmenter import build_segmenter

        use_option_words(job.words)
        t0 = time.perf_counter()
        self.segmenter = build_segmenter(job.model, job.backend)
        self.load_s = time.perf_counter() - t0
        device = self.segmenter.backend.device
        overlap = job.overlap == "on" or (
            job.overlap == "auto" and overlap_helps(device, job.backend.threads)
        )
        # force: the output path is ours (DIR); the bag job still replaces only its own bags.
        self.options = replace(job.bag, force=True, progress=False, overlap=overlap)
        self.board = board
        self.index = index

    def ready(self) -> dict[str, Any]:
        backend = self.segmenter.backend
        return {
            "worker": self.index,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "backend": backend.name,
            "device": backend.device,
            "load_s": self.load_s,
        }

    def process(self, input_bag: str, output: str, rel: str) -> dict[str, Any]:
        from refinenet_ros.bag import run_bag
        from refinenet_ros.errors import user_error_text

        self.board.start.remote(rel, self.index, os.getpid())
        result: dict[str, Any] = {"worker": self.index, "pid": os.getpid(), "host": socket.gethostname()}
        t0 = time.perf_counter()
        try:
            summary = run_bag(
                input_bag,
                output,
                self.segmenter,
                self.options,
                on_frame=lambda n: self.board.update.remote(rel, n),
            )
        except Exception as exc:
            text = user_error_text(exc)
            if text is None:  # not a known user/environment error: the traceback goes to the log
                log.exception("%s: unexpected error", input_bag)
                text = f"{type(exc).__name__}: {exc}"
            result.update(status="failed", error=text, seconds=time.perf_counter() - t0)
        else:
            result.update(
                status="done",
                frames=summary.frames,
                malformed=summary.malformed,
                seconds=summary.seconds,
                messages=output_counts(Path(output)),
            )
        finally:
            self.board.finish.remote(rel)
        return result
