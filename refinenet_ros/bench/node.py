"""``bench node``: publisher -> ``segmentation_node`` (a real process) -> subscriber.

What a robot user sees: frames are published as ``sensor_msgs/Image`` stamped with the
wall clock at publish time, the node (started exactly as launch would, with
``--ros-args``) segments them, and this process receives the outputs over shared-memory
Fast DDS in its own ROS domain. Per frame, latency = receive time - header stamp (the node
keeps the input header, and both processes read the same system clock).

- Closed loop (default, ``--rate 0``): the next frame is published when every subscribed
  output of the last one has arrived: latency without queueing, i.e. the node's own cost.
- ``--rate HZ``: a fixed-rate camera; frames the node skips (latest-frame-only slot) or
  loses count as drops, latency includes waiting for the worker.

The node's /diagnostics give its per-stage times (decode, preprocess, infer,
postprocess, render, publish; p50/p95/p99 over its last 300 frames, warm-up included) and drop
counters. Node overhead = end-to-end latency - backend (``infer``) time, per percentile:
what the node, DDS and this subscriber add on top of the network itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinenet_ros.backends.engine_cache import default_cache_dir
from refinenet_ros.bench import BenchError
from refinenet_ros.config import ModelConfig
from refinenet_ros.ros.process import (
    SHM_ONLY,
    adopt_environment,
    local_ros_env,
    node_module_command,
    param_args,
)
from refinenet_ros.scheduling import NODE_STAGES
from refinenet_ros.segmenter import OUTPUT_KINDS
from refinenet_ros.stats import format_table, percentiles

NAMESPACE = "/refinenet_bench"
NODE_NAME = "refinenet_segmentation"
FRAME_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class NodeBenchSettings:
    """The node's model and backend (as its ROS parameters) and the stream this bench plays."""

    model_cfg: ModelConfig
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    engine_dir: str = field(default_factory=default_cache_dir)
    threads: int = 0
    network_size: tuple[int, int] | None = None  # (H, W); None: the weights' own size
    image_size: tuple[int, int] = (480, 640)  # (H, W) of the published camera frames
    frames: int = 60
    rate: float = 0.0
    """Publish rate in Hz; 0: closed loop (next frame when the last one's outputs arrived)."""
    outputs: tuple[str, ...] = OUTPUT_KINDS
    encoding: str = "rgb8"
    domain_id: int | None = None
    startup_timeout: float = 120.0
    node_args: tuple[str, ...] = ()
    """Extra ``NAME:=VALUE`` node parameters."""

    def check(self) -> None:
        """What the node would refuse only after a slow start, refused now."""
        if self.domain_id is not None and not 0 <= self.domain_id <= 232:
            raise BenchError(f"--domain-id {self.domain_id}: must be within 0..232")
        if self.network_size is not None and min(self.network_size) < 32:
            raise BenchError("--network-size: both sides must be >= 32 pixels")
        bad = [a for a in self.node_args if ":=" not in a]
        if bad:
            raise BenchError(f"--node-arg {bad[0]!r}: expected NAME:=VALUE")

    def to_json(self) -> dict[str, Any]:
        cfg = self.model_cfg.resolved()
        h, w = self.image_size
        return {
            "model": cfg.model,
            "labels": cfg.labels,
            "weights": cfg.weights,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "threads": self.threads,
            "network_size": list(self.network_size) if self.network_size else None,
            "resolution": [w, h],  # WxH, the key of every earlier result file
            "image_size": [h, w],
            "frames": self.frames,
            "rate_hz": self.rate,
            "outputs": list(self.outputs),
            "encoding": self.encoding,
            "transport": SHM_ONLY,
        }


def ros_environment(domain_id: int | None) -> dict[str, str]:
    """The whole environment of the benchmark and its node: DDS on this machine only and
    lossless for large images (always the SHM-only transport: the figures are for that
    path), in ``domain_id`` or a domain of our own (:func:`~refinenet_ros.ros.process.local_ros_env`,
    which also drops ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: it swaps SHM for UDP)."""
    base = {k: v for k, v in os.environ.items() if k != "FASTDDS_BUILTIN_TRANSPORTS"}
    if domain_id is not None:
        base["ROS_DOMAIN_ID"] = str(domain_id)
    return {**local_ros_env(base), "PYTHONUNBUFFERED": "1"}


def node_command(settings: NodeBenchSettings, outputs: tuple[str, ...]) -> list[str]:
    """``segmentation_node --ros-args ...`` for this benchmark's settings."""
    cfg = settings.model_cfg.resolved()
    params: dict[str, str] = {
        "model": str(cfg.model),
        "labels": str(cfg.labels),
        "seed": str(cfg.seed),
        "backend": settings.backend,
        "device": settings.device,
        "precision": settings.precision,
        "engine_dir": settings.engine_dir or default_cache_dir(),
        "threads": str(settings.threads),
        "publish_color": str("color" in outputs).lower(),
        "publish_overlay": str("overlay" in outputs).lower(),
        "publish_confidence": str("confidence" in outputs).lower(),
    }
    # the resolved weights, or "random" where the command line resolved to random weights (the
    # node itself refuses to fall back to them)
    params["weights"] = str(Path(cfg.weights).resolve()) if cfg.weights else "random"
    if settings.network_size:
        params["network_height"], params["network_width"] = map(str, settings.network_size)
    ros = ["--ros-args", "-r", f"__ns:={NAMESPACE}", "-r", f"__node:={NODE_NAME}", *param_args(**params)]
    for extra in settings.node_args:
        if ":=" not in extra:
            raise BenchError(f"--node-arg {extra!r}: expected NAME:=VALUE")
        ros += ["-p", extra]
    return node_module_command(*ros)


@dataclass
class _Tracker:
    """Receive times per (frame stamp, output), filled by subscription callbacks."""

    outputs: tuple[str, ...]
    sent: dict[int, int] = field(default_factory=dict)  # stamp ns -> publish time ns
    received: dict[str, dict[int, int]] = field(default_factory=dict)
    done: threading.Condition = field(default_factory=threading.Condition)
    diagnostics: dict[str, str] = field(default_factory=dict)
    diagnostics_count: int = 0

    def __post_init__(self) -> None:
        self.received = {o: {} for o in self.outputs}

    def on_output(self, output: str, msg: Any) -> None:
        now = time.time_ns()
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        with self.done:
            self.received[output][stamp] = now
            self.done.notify_all()

    def on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if f"{NAMESPACE}/{NODE_NAME}" in status.name:
                with self.done:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics_count += 1
                    self.done.notify_all()

    def complete(self, stamp: int) -> bool:
        return all(stamp in self.received[o] for o in self.outputs)

    def wait_complete(self, stamp: int, timeout: float) -> bool:
        with self.done:
            return self.done.wait_for(lambda: self.complete(stamp), timeout)


def _float(values: dict[str, str], key: str) -> float:
    try:
        return float(values.get(key, "nan"))
    except ValueError:
        return float("nan")


class _Client:
    """The benchmark's own rclpy node: image publisher, output and diagnostics subscribers."""

    def __init__(self, env: dict[str, str], outputs: tuple[str, ...], tracker: _Tracker) -> None:
        adopt_environment(env)  # read by rcl/Fast DDS when the context starts
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.context = rclpy.Context()
        # args=[]: never parse this CLI's own argv (e.g. --node-arg NAME:=V) as ROS arguments
        rclpy.init(args=[], context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("refinenet_bench_client", context=self.context)
        qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability)  # fmt: skip
        self.image_pub = self.node.create_publisher(Image, f"{NAMESPACE}/image", qos)
        self.subs = [
            self.node.create_subscription(
                Image, f"{NAMESPACE}/{NODE_NAME}/{o}", lambda m, o=o: tracker.on_output(o, m), qos
            )
            for o in outputs
        ]
        self.diag_sub = self.node.create_subscription(
            DiagnosticArray, "/diagnostics", tracker.on_diagnostics, 10
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="bench-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):
            self.executor.spin()

    def connected(self) -> bool:
        return self.image_pub.get_subscription_count() > 0 and all(
            s.get_publisher_count() > 0 for s in self.subs
        )

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        with contextlib.suppress(Exception):
            rclpy.shutdown(context=self.context)
        self._thread.join(timeout=2.0)


def _image_messages(count: int, size: tuple[int, int], encoding: str) -> list[Any]:
    """Pre-built messages (one per distinct frame, at most 30): publishing costs no encode."""
    import array

    from sensor_msgs.msg import Image

    from refinenet_ros.images.encodings import encode_image
    from refinenet_ros.samples import sample_sequence

    msgs = []
    for rgb in sample_sequence(min(count, 30), size):
        data, step = encode_image(rgb, encoding)
        msg = Image()
        msg.header.frame_id = "bench_camera"
        msg.height, msg.width = rgb.shape[:2]
        msg.encoding, msg.step, msg.is_bigendian = encoding, step, 0
        msg.data = array.array("B", data)
        msgs.append(msg)
    return msgs


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_node_bench(settings: NodeBenchSettings) -> dict[str, Any]:
    """Start the node, stream the frames, collect latencies and the node's diagnostics."""
    settings.check()
    outputs = tuple(dict.fromkeys(["labels", *settings.outputs]))
    env = ros_environment(settings.domain_id)
    cmd = node_command(settings, outputs)
    tracker = _Tracker(outputs)
    log_dir = Path(tempfile.mkdtemp(prefix="refinenet-bench-node-"))
    log_path = log_dir / "node.log"
    msgs = _image_messages(settings.frames, settings.image_size, settings.encoding)
    warmup = 3
    print(f"starting: {' '.join(cmd)}", flush=True)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    client: _Client | None = None
    try:
        client = _Client(env, outputs, tracker)
        deadline = time.monotonic() + settings.startup_timeout
        while not client.connected():
            if proc.poll() is not None:
                raise BenchError(f"the node exited with status {proc.returncode}:\n{_log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the node did not connect within {settings.startup_timeout:.0f} s "
                    f"(raise --startup-timeout?):\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)
        time.sleep(0.5)  # let discovery of every output settle

        def publish(i: int) -> int:
            msg = msgs[i % len(msgs)]
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            tracker.sent[now] = now
            client.image_pub.publish(msg)
            return now

        for i in range(warmup):  # first calls pay allocation and kernel selection
            if not tracker.wait_complete(publish(i), FRAME_TIMEOUT_S):
                d = tracker.diagnostics
                got = {o: len(r) for o, r in tracker.received.items()}
                raise BenchError(
                    f"warm-up frame {i} got no outputs within {FRAME_TIMEOUT_S:.0f} s (received {got}; "
                    f"node diagnostics: frames_in {d.get('frames_in')}, frames_out {d.get('frames_out')}, "
                    f"last problem {d.get('last_problem')!r}):\n{_log_tail(log_path)}"
                )
        t_start = time.time_ns()
        stamps: list[int] = []
        if settings.rate > 0:
            period = 1.0 / settings.rate
            next_t = time.monotonic()
            for i in range(settings.frames):
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stamps.append(publish(i))
                next_t += period
            end = time.monotonic() + 5.0
            while time.monotonic() < end and not all(tracker.complete(s) for s in stamps[-3:]):
                time.sleep(0.05)
        else:
            for i in range(settings.frames):
                s = publish(i)
                stamps.append(s)
                tracker.wait_complete(s, FRAME_TIMEOUT_S)
        # one more diagnostics message that covers every frame
        with tracker.done:
            seen = tracker.diagnostics_count
            tracker.done.wait_for(lambda: tracker.diagnostics_count >= seen + 2, 3.0)
            diag = dict(tracker.diagnostics)
        received = {o: dict(tracker.received[o]) for o in outputs}
    finally:
        if client is not None:
            client.close()
        _stop(proc)
    node_log = _log_tail(log_path, 40)
    shutil.rmtree(log_dir, ignore_errors=True)
    return _figures(settings, outputs, stamps, t_start, received, diag, node_log)


def _figures(
    settings: NodeBenchSettings,
    outputs: tuple[str, ...],
    stamps: list[int],
    t_start: int,
    received: dict[str, dict[int, int]],
    diag: dict[str, str],
    node_log: str,
) -> dict[str, Any]:
    labels = received["labels"]
    lat = [(labels[s] - s) / 1e6 for s in stamps if s in labels]
    complete = [s for s in stamps if all(s in received[o] for o in outputs)]
    lat_all = [(max(received[o][s] for o in outputs) - s) / 1e6 for s in complete]
    last = max((received[o][s] for o in outputs for s in stamps if s in received[o]), default=t_start)
    span_s = (last - t_start) / 1e9
    latency = percentiles(lat, digits=2)
    backend = {"p50": _float(diag, "infer_ms_p50"), "p95": _float(diag, "infer_ms_p95")}
    net = settings.network_size
    node: dict[str, Any] = {
        "resolution": f"{settings.image_size[1]}x{settings.image_size[0]}",
        "network_size": f"{net[1]}x{net[0]}" if net else "input",
        "mode": f"{settings.rate:g} Hz" if settings.rate > 0 else "closed loop",
        "outputs": list(outputs),
        "frames_published": len(stamps),
        "frames_received": len(lat),
        "latency_ms": latency,
        "all_outputs_latency_ms": percentiles(lat_all, digits=2),
        "backend_ms": backend,
        "overhead_ms": {q: round(latency[q] - backend[q], 2) for q in ("p50", "p95")},
        # the node's own non-inference work per frame (medians of its stages, summed): a
        # steadier figure than the difference of two percentiles when the machine is busy
        "node_stages_overhead_ms_p50": round(
            sum(_float(diag, f"{s}_ms_p50") for s in NODE_STAGES if s != "infer"), 2
        ),
        "fps": round(len(lat) / span_s, 3) if span_s > 0 else 0.0,
        "drops": len(stamps) - len(lat),
        "node_drops": {
            "skipped": int(_float(diag, "dropped_skipped")) if diag else None,
            "stale": int(_float(diag, "dropped_stale")) if diag else None,
        },
        "stages_ms": {s: {f"p{q}": _float(diag, f"{s}_ms_p{q}") for q in (50, 95, 99)} for s in NODE_STAGES},
        "node_latency_ms": {f"p{q}": _float(diag, f"latency_ms_p{q}") for q in (50, 95, 99)},
        "node_input_age_ms": {f"p{q}": _float(diag, f"input_age_ms_p{q}") for q in (50, 95, 99)},
        "node_frames_in": int(_float(diag, "frames_in")) if diag else None,
        "node_frames_out": int(_float(diag, "frames_out")) if diag else None,
        "diagnostics_received": bool(diag),
        "node_backend": diag.get("backend"),
        "node_device": diag.get("device"),
    }
    if not diag:
        node["node_log_tail"] = node_log
    return {"node": node}


def node_table(figures: dict[str, Any]) -> str:
    """Headline lines and the latency table, as ``bench node`` prints them."""
    node = figures["node"]
    lat, be, ov = node["latency_ms"], node["backend_ms"], node["overhead_ms"]
    lines: list[str] = []
    lines.append(f"bench node: {node['resolution']} -> network {node['network_size']}, {node['mode']}, "
          f"outputs {','.join(node['outputs'])}; backend {node['node_backend']} "
          f"on {node['node_device']}")  # fmt: skip
    lines.append(f"{node['frames_received']}/{node['frames_published']} frames, {node['fps']:.2f} frames/s, "
          f"drops {node['drops']} (node skipped {node['node_drops']['skipped']}, "
          f"stale {node['node_drops']['stale']})")  # fmt: skip
    rows: list[list[Any]] = [
        ["input -> labels (end-to-end)", lat["p50"], lat["p95"], lat["p99"]],
        ["input -> all outputs", *node["all_outputs_latency_ms"].values()],
        ["backend (node infer)", be["p50"], be["p95"], None],
        ["node overhead = e2e - backend", ov["p50"], ov["p95"], None],
        ["  node stages except infer", node["node_stages_overhead_ms_p50"], None, None],
    ]
    rows.append(["  node: input age at processing", *node["node_input_age_ms"].values()])
    rows += [[f"  node stage: {s}", *v.values()] for s, v in node["stages_ms"].items()]
    lines.append(format_table(["ms", "p50", "p95", "p99"], rows))
    return "\n".join(lines)
