"""Build the slow artefacts (ONNX export, INT8 calibration, compiled models, engines, the
``auto`` measurement) in a child process, so whoever waits for them can give up at once.

Why a process and not a thread: ``torch.onnx.export`` and the runtimes' builders are C++
calls that hold the GIL for up to seconds at a time (0.7 s on a quiet 2-core machine, 4 s
under load). While they do, no Python signal handler, watcher thread or rclpy callback runs,
so Ctrl-C / SIGTERM during a node's configure would go unanswered for seconds. A child holds
its own GIL; the parent waits in a poll loop that reacts within 0.1 s, and killing the child
loses nothing, because every cache is written atomically.

The flow, in :func:`create_backend_interruptibly`:

1. try to create the backend here with builds forbidden: every place that would start a slow
   build calls :func:`~refinenet_ros.backends.prepare.require_build` first, which raises
   :class:`~refinenet_ros.backends.prepare.BuildNeeded` instead. With warm caches (the
   normal restart) this is the whole story: nothing is spawned.
2. otherwise spawn a child that runs the same ``create_backend`` (filling the caches), forward
   its log lines, and wait for it while polling ``cancelled``;
3. create the backend here again, now from the caches.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from refinenet_ros.backends.base import Backend, BackendError
from refinenet_ros.backends.factory import create_backend
from refinenet_ros.backends.prepare import BuildCancelled, BuildNeeded, builds_forbidden
from refinenet_ros.errors import OptionWords, option_words, use_option_words
from refinenet_ros.lifetime import die_with_parent

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig

log = logging.getLogger("refinenet_ros")

POLL_S = 0.1
"""How often the parent checks ``cancelled`` while the child builds."""


def create_backend_interruptibly(
    model_cfg: ModelConfig, options: BackendOptions, cancelled: Callable[[], bool]
) -> Backend:
    """``create_backend`` that returns within ~0.1 s of ``cancelled()`` turning true (or of a
    KeyboardInterrupt) by raising :class:`BuildCancelled`, whatever is being built."""
    once = _OnceFilter()  # the child and the second attempt repeat the first attempt's lines
    log.addFilter(once)
    try:
        try:
            with builds_forbidden():
                return create_backend(model_cfg, options)
        except BuildNeeded as need:
            log.info("%s: building in a child process (interruptible; cached for next time)", need.what)
        build_in_child(model_cfg, options, cancelled)
        return create_backend(model_cfg, options)
    finally:
        log.removeFilter(once)


class _OnceFilter(logging.Filter):
    """Drops a log line whose text was already logged (while it is attached)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self._seen:
            return False
        self._seen.add(text)
        return True


def build_in_child(model_cfg: ModelConfig, options: BackendOptions, cancelled: Callable[[], bool]) -> None:
    """Run ``create_backend(model_cfg, options)`` in a spawned child to fill the caches.

    The child's log records are re-emitted here; its user errors come back as the same
    exception (or a :class:`BackendError` with its text). Killed when ``cancelled()`` turns
    true, on KeyboardInterrupt, and by the kernel when this process dies.
    """
    ctx = multiprocessing.get_context("spawn")  # fork would copy DDS threads and locks mid-use
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main,
        args=(model_cfg, options, option_words(), child_end),
        name="refinenet-build",
        daemon=True,
    )
    t0 = time.monotonic()
    proc.start()
    child_end.close()
    result: tuple[str, Any] | None = None
    try:
        while result is None:
            if cancelled():
                raise BuildCancelled("shutdown requested while building")
            if parent_end.poll(POLL_S):
                try:
                    kind, payload = parent_end.recv()
                except EOFError:  # the child died without a word (killed, out of memory)
                    break
                if kind == "log":
                    log.handle(payload)
                else:
                    result = (kind, payload)
            elif not proc.is_alive() and not parent_end.poll():
                break
    except BaseException:
        _stop(proc)
        raise
    finally:
        parent_end.close()
    proc.join(5.0)
    if result is None:
        raise BackendError(
            f"the model build process died (exit code {proc.exitcode}) after {time.monotonic() - t0:.0f} s; "
            "out of memory? see the log above"
        )
    kind, payload = result
    if kind == "error":
        raise payload
    log.info("child build finished in %.1f s", time.monotonic() - t0)


def _stop(proc: Any) -> None:
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)


class _PipeHandler(logging.Handler):
    """Sends the child's log records to the parent, which logs them as its own."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args = record.getMessage(), None  # args may not pickle
        record.exc_info = record.exc_text = None
        with contextlib.suppress(Exception):
            self._conn.send(("log", record))


def _child_main(
    model_cfg: ModelConfig, options: BackendOptions, words: OptionWords, conn: Connection
) -> None:
    die_with_parent(signal.SIGKILL)
    use_option_words(words)  # the parent's audience: its advice reads as the parent's would
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C to the process group: just go
    pkg = logging.getLogger("refinenet_ros")
    pkg.handlers[:] = [_PipeHandler(conn)]
    pkg.setLevel(logging.INFO)
    pkg.propagate = False
    try:
        create_backend(model_cfg, options)
    except Exception as exc:
        try:
            conn.send(("error", exc))
        except Exception:  # an exception that does not pickle: its text still gets home
            conn.send(("error", BackendError(f"{type(exc).__name__}: {exc}")))
    else:
        conn.send(("done", None))
    finally:
        conn.close()
