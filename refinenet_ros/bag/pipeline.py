"""A generic threaded pipeline: a source and a stage on threads of their own, handing items to
the caller in order (:class:`_Overlap`), and when overlapping pays (:func:`overlap_helps`)."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

OVERLAP_DEPTH = 1
"""Chunks queued between stages: with one being read, one segmented and one written, at
most five batches are in memory, and one is enough to keep every stage busy."""
POLL_S = 0.1
"""How often a blocked stage checks whether the run was stopped (error, Ctrl-C)."""


def overlap_helps(device: str, threads: int, cpus: int | None = None) -> bool:
    """Whether overlapping bag I/O with inference can speed a run up.

    It can when inference leaves CPU time free: an accelerator, or a CPU backend limited to
    fewer threads than there are CPUs. A CPU backend on every core (``threads`` 0 = the
    library's default) already keeps the machine busy, and overlapping then costs time
    (the I/O threads oversubscribe ONNX Runtime's pool); docs/benchmarks.md has the figures.
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return not device.startswith("cpu") or 0 < threads < cpus


T = TypeVar("T")


@dataclass
class _Failed:
    """A stage's exception, passed downstream in order and raised in the consumer."""

    error: BaseException


_END = object()


class _Overlap(Generic[T]):
    """``map(stage, source())`` with ``source`` and ``stage`` each on its own thread.

    The consumer iterates in its own thread (the bag writer: sqlite3 connections must
    stay on the thread that made them, and Ctrl-C arrives there). Bounded queues keep
    memory bounded and items in order. An exception in either thread travels down the
    queues as an item and is raised by the consumer at that point of the stream; leaving
    the ``with`` block early (consumer error, Ctrl-C) stops both threads and joins them,
    so nothing touches the reader or the segmenter after the run returns.
    ONNX Runtime, torch, OpenCV and file writes release the GIL, so the stages overlap.
    """

    def __init__(self, source: Callable[[], Iterator[T]], stage: Callable[[T], T], *, depth: int = 1) -> None:
        self._stop = threading.Event()
        self._read_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._out_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._threads = [
            threading.Thread(target=self._produce, args=(source, self._read_q), name="bag-read", daemon=True),
            threading.Thread(
                target=self._produce,
                args=(lambda: map(stage, self._drain(self._read_q)), self._out_q),
                name="bag-segment",
                daemon=True,
            ),
        ]

    def __enter__(self) -> _Overlap[T]:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def __iter__(self) -> Iterator[T]:
        return self._drain(self._out_q)

    def _produce(self, make: Callable[[], Iterator[Any]], q: queue.Queue[Any]) -> None:
        items: Iterator[Any] | None = None
        try:
            items = make()
            for item in items:
                if not self._put(q, item):
                    return
            self._put(q, _END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(q, _Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # finish the reader's generator on this thread

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self, q: queue.Queue[Any]) -> Iterator[Any]:
        while True:
            try:
                item = q.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
