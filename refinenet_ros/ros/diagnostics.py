"""Counters and per-stage timings of the node, and their diagnostic_msgs rendering.

The worker thread writes, the 1 Hz diagnostics timer reads; plain ints and bounded deques
make that safe enough under the GIL (a sample more or less in a percentile is harmless).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from refinenet_ros.scheduling import NODE_STAGES, RateMeter, Rolling

LOSS_WARN_FRACTION = 0.1
"""WARN when the transport lost more than this fraction of a window's frames."""
LOW_CONFIDENCE = 0.5
"""A pixel whose (calibrated) confidence is below this counts as unsure: a scene unlike the
training data shows as a high ``low_confidence_fraction`` in ``/diagnostics``."""


class TransportLoss:
    """Frames the transport lost before the node saw them, estimated two ways per camera.

    - Stamp gaps: a camera publishes at a steady period, so a gap of k periods between two
      received stamps means k - 1 frames lost (the period is the shortest recent gap; only
      when nearly every gap is a whole number of periods, i.e. the source is a steady camera).
    - CameraInfo without its image: drivers publish one CameraInfo per image with the same
      stamp; the small CameraInfo gets through where large best-effort images are dropped
      (the publisher's rate is above the node's input rate).

    The larger estimate counts. Fed from the subscription callbacks (executor thread), read
    by the diagnostics timer on the same thread. Unstamped frames are not counted.
    """

    def __init__(self, keep: int = 600) -> None:
        self._images: dict[int, deque[tuple[float, int]]] = {}
        self._infos: dict[int, deque[tuple[float, int]]] = {}
        self._keep = keep

    def image(self, camera: int, stamp_ns: int, now: float) -> None:
        if stamp_ns > 0:
            self._images.setdefault(camera, deque(maxlen=self._keep)).append((now, stamp_ns))

    def info(self, camera: int, stamp_ns: int, now: float) -> None:
        if stamp_ns > 0:
            self._infos.setdefault(camera, deque(maxlen=self._keep)).append((now, stamp_ns))

    def lost(self, window_s: float, now: float) -> tuple[int, int]:
        """(frames lost, frames the cameras sent) over the last ``window_s`` seconds."""
        lost = sent = 0
        for camera, images in self._images.items():
            stamps = sorted({s for t, s in images if now - t <= window_s})
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            by_gaps = 0
            if len(gaps) >= 8 and (period := min(gaps)) > 0:
                ratios = [g / period for g in gaps]
                # a steady camera: (nearly) every gap a whole number of periods; else unknown
                if sum(abs(r - round(r)) < 0.2 for r in ratios) >= 0.9 * len(ratios):
                    by_gaps = sum(max(0, round(r) - 1) for r in ratios)
            seen = set(stamps)
            # infos from the last half second may still have their image on the way
            infos = {s for t, s in self._infos.get(camera, ()) if 0.5 <= now - t <= window_s}
            by_info = len(infos - seen) if infos & seen else 0  # stamped alike, else not comparable
            lost += max(by_gaps, by_info)
            sent += len(stamps) + max(by_gaps, by_info)
        return lost, sent


@dataclass
class NodeStats:
    """What ``/diagnostics`` reports; ``skipped`` lives in the frame slots' counters."""

    frames_out: int = 0
    stale: int = 0
    malformed: int = 0
    errors: int = 0
    unsubscribed: int = 0
    backend_calls: int = 0  # segment_batch calls: frames_out / backend_calls > 1 means cameras batched
    largest_batch: int = 0
    last_problem: str = ""
    stages: dict[str, Rolling] = field(default_factory=lambda: {s: Rolling() for s in NODE_STAGES})
    input_age_ms: Rolling = field(default_factory=Rolling)
    #: per frame, the fraction of pixels with confidence below :data:`LOW_CONFIDENCE`
    low_confidence: Rolling = field(default_factory=lambda: Rolling(size=30))
    latency_ms: Rolling = field(default_factory=Rolling)
    rate_in: RateMeter = field(default_factory=RateMeter)
    rate_out: RateMeter = field(default_factory=RateMeter)
    # time.monotonic() of the latest event of each kind (0 = never): levels look at a recent
    # window, so one bad frame an hour ago does not keep the node at WARN forever
    last_input_t: float = 0.0
    last_malformed_t: float = 0.0
    last_error_t: float = 0.0
    transport: TransportLoss = field(default_factory=TransportLoss)


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.2f}"


def input_silence(stats: NodeStats, active_since: float, window_s: float, now: float) -> float | None:
    """Seconds without a frame when that exceeds ``window_s`` (counted from activation when
    none ever came), else None: the one rule for the diagnostics WARN and the node's log."""
    waited = now - max(stats.last_input_t, active_since)
    return waited if waited > window_s else None


def diagnostic_array(
    stamp: object,
    name: str,
    hardware_id: str,
    stats: NodeStats,
    frames_in: int,
    skipped: int,
    info: dict[str, str],
    state: str,
    inputs: list[str] | None = None,
    window_s: float = 10.0,
    active_since: float = 0.0,
    now: float | None = None,
) -> DiagnosticArray:
    """One DiagnosticStatus whose level tells the truth about the last ``window_s`` seconds.

    Not active (``state`` unconfigured/inactive): WARN saying so. Active: ERROR after an
    inference error within the window, WARN after a malformed frame within it, WARN when
    no frame arrived for ``window_s`` (naming the topics waited on), else OK. Counters stay
    cumulative; after cleanup ``info`` is empty, so no stale model is reported.
    """
    now = time.monotonic() if now is None else now
    inputs = inputs or []
    values: list[tuple[str, str]] = [
        ("state", state),
        ("rate_in_hz", _fmt(stats.rate_in.rate())),
        ("rate_out_hz", _fmt(stats.rate_out.rate())),
        ("frames_in", str(frames_in)),
        ("frames_out", str(stats.frames_out)),
        ("dropped_skipped", str(skipped)),
        ("dropped_stale", str(stats.stale)),
        ("malformed", str(stats.malformed)),
        ("errors", str(stats.errors)),
        ("no_subscriber", str(stats.unsubscribed)),
        ("backend_calls", str(stats.backend_calls)),
        ("largest_batch", str(stats.largest_batch)),
        ("inputs", ", ".join(inputs)),
        ("seconds_since_input", _fmt(now - stats.last_input_t) if stats.last_input_t else "never"),
    ]
    unsure = stats.low_confidence.values
    values.append(("low_confidence_fraction", _fmt(sum(unsure) / len(unsure)) if unsure else "nan"))
    lost, sent = stats.transport.lost(window_s, now)
    values.append(("transport_lost_recent", f"{lost} of {sent}"))
    for stage, rolling in stats.stages.items():
        for q, v in zip((50, 95, 99), rolling.percentiles(), strict=True):
            values.append((f"{stage}_ms_p{q}", _fmt(v)))
    for label, rolling in (("input_age_ms", stats.input_age_ms), ("latency_ms", stats.latency_ms)):
        for q, v in zip((50, 95, 99), rolling.percentiles(), strict=True):
            values.append((f"{label}_p{q}", _fmt(v)))
    values.extend(info.items())
    values.append(("last_problem", stats.last_problem))
    status = DiagnosticStatus(name=name, hardware_id=hardware_id)

    def recent(t: float) -> bool:
        return t > 0 and now - t <= window_s

    if state != "active":
        hint = "configure" if state == "unconfigured" else "activate"
        status.level, status.message = DiagnosticStatus.WARN, f"{state} (lifecycle): {hint} it to segment"
    elif recent(stats.last_error_t):
        status.level, status.message = DiagnosticStatus.ERROR, f"inference errors: {stats.last_problem}"
    elif recent(stats.last_malformed_t):
        status.level, status.message = DiagnosticStatus.WARN, f"malformed frames: {stats.last_problem}"
    elif sent and lost / sent > LOSS_WARN_FRACTION:
        status.level = DiagnosticStatus.WARN
        status.message = (
            f"transport lost {lost} of {sent} frames in {window_s:.0f} s (stamp gaps, CameraInfo without "
            "image): on one machine use shared memory (shm_only:=true or FASTDDS_BUILTIN_TRANSPORTS=SHM), "
            "across machines a reliable camera QoS or a compressed image topic"
        )
    elif (waited := input_silence(stats, active_since, window_s, now)) is not None:
        status.level = DiagnosticStatus.WARN
        status.message = f"no input for {waited:.0f} s on {', '.join(inputs) or 'the image topic'}"
    else:
        status.level, status.message = DiagnosticStatus.OK, "segmenting"
    status.values = [KeyValue(key=k, value=v) for k, v in values]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array
