"""Latest-frame slots and rolling statistics: the node's scheduling, without rclpy.

Subscription callbacks only drop the newest message into its camera's slot (O(1), never
blocks on inference); one worker thread takes what is there. A frame replaced before the
worker got to it is counted as skipped, so a slow model serves the newest frame rather
than a growing queue of stale ones. With several cameras the worker waits up to
``batch_timeout`` for the other cameras' frames so they share one backend call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from refinenet_ros import stats

# The node's per-frame stages, in order, as /diagnostics reports them (``<stage>_ms_p50``):
# render (colour, overlay, confidence, CameraInfo into the reused messages) is kept apart
# from publish (the rclpy/DDS calls), so a slow output is blamed on the right side.
NODE_STAGES = ("decode", "preprocess", "infer", "postprocess", "render", "publish")


@dataclass
class Frame:
    """One received message waiting for the worker."""

    camera: int
    msg: Any
    received: float  # time.monotonic() at the callback
    camera_info: Any = None


@dataclass
class SlotCounters:
    received: int = 0
    skipped: int = 0  # replaced by a newer frame before the worker took it


class LatestFrameSlots:
    """One single-frame slot per camera, shared by the callbacks and one worker."""

    def __init__(self, num_cameras: int) -> None:
        self._slots: list[Frame | None] = [None] * num_cameras
        self.counters = [SlotCounters() for _ in range(num_cameras)]
        self._cond = threading.Condition()
        self._closed = False

    def put(self, frame: Frame) -> None:
        """Store ``frame`` as its camera's newest; never blocks beyond a lock."""
        with self._cond:
            c = self.counters[frame.camera]
            c.received += 1
            if self._slots[frame.camera] is not None:
                c.skipped += 1
            self._slots[frame.camera] = frame
            self._cond.notify()

    def close(self) -> None:
        """Wake the worker for good: :meth:`take` returns [] from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._slots = [None] * len(self._slots)

    def take(self, wait: float, batch_timeout: float = 0.0) -> list[Frame]:
        """Frames to process now (at most one per camera), or [] after ``wait`` seconds.

        Once one camera has a frame, waits up to ``batch_timeout`` for the others.
        """
        deadline = time.monotonic() + wait
        with self._cond:
            while not self._closed and not any(s is not None for s in self._slots):
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            if self._closed:
                return []
            if len(self._slots) > 1 and batch_timeout > 0:
                batch_deadline = time.monotonic() + batch_timeout
                while not self._closed and any(s is None for s in self._slots):
                    left = batch_deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            frames = [s for s in self._slots if s is not None]
            self._slots = [None] * len(self._slots)
            return frames


@dataclass
class Rolling:
    """The last ``size`` samples of one quantity, for p50/p95/p99."""

    size: int = 300
    values: deque[float] = field(default_factory=deque)

    def add(self, value: float) -> None:
        self.values.append(value)
        if len(self.values) > self.size:
            self.values.popleft()

    def percentiles(self, qs: Sequence[float] = (50, 95, 99)) -> list[float]:
        """Unrounded, NaN each when empty (the diagnostics format them)."""
        return list(stats.percentiles(self.values, qs).values())


class RateMeter:
    """Events per second over a sliding window of timestamps."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], 1e-6)
        return (len(self._times) - 1) / span if span < self.window_s else len(self._times) / self.window_s


class Throttle:
    """At most one message per key per ``period_s`` (one clear error, not a log flood)."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.period_s:
                return False
            self._last[key] = now
            return True
