"""The node end to end on this machine (``refinenet-ros demo``, :mod:`refinenet_ros.cli.demo`):
the node as its own process, a player and a recorder; frames in/out, drops and latency."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refinenet_ros.ros.process import (
    adopt_environment,
    die_with_parent,
    local_ros_env,
    node_module_command,
    param_args,
)
from refinenet_ros.scheduling import NODE_STAGES
from refinenet_ros.segmenter import OUTPUT_KINDS
from refinenet_ros.stats import percentiles

OUTPUTS = (*OUTPUT_KINDS, "labels/camera_info")


@dataclass(frozen=True)
class DemoConfig:
    """What ``refinenet-ros demo`` runs: frames, rate and size of the player, where the
    outputs go, and the node's model/weights/labels/network size/backend ("" = the node's default)."""

    frames: int = 150
    rate: float = 5.0
    size: tuple[int, int] = (480, 640)
    out: str = "demo_out"
    model: str = ""
    weights: str = ""
    labels: str = ""
    network_size: tuple[int, int] | None = None
    backend: str = "auto"
    no_bag: bool = False


@dataclass
class Recorder:
    """Collects the node's outputs: latencies, last message per topic, optional bag."""

    sent: dict[int, float] = field(default_factory=dict)  # stamp ns -> wall time sent
    latencies_ms: list[float] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    bag: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_output(self, leaf: str, msg: Any) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.counts[leaf] = self.counts.get(leaf, 0) + 1
            self.last[leaf] = msg
            if leaf == "labels":
                self.latencies_ms.append((now - stamp) / 1e6)
            if self.bag is not None:
                self.bag.write(leaf, msg, stamp)


class McapRecorder:
    """rosbag2 (mcap) writer of the outputs, serialised through rosbags' Kilted typestore."""

    def __init__(self, path: Path, topic_prefix: str) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        store = getattr(Stores, "ROS2_KILTED", None) or Stores.LATEST
        self.ts = get_typestore(store)
        self.final = path
        # Written under a temporary parent and moved into place when closed, so a crash never
        # leaves a half-written bag named like a finished one (the .mcap keeps the bag's name).
        self.staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        self.tmp = self.staging / path.name
        self.writer = Writer(self.tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.prefix = topic_prefix
        self.conns: dict[str, Any] = {}
        self.count = 0

    def _conn(self, topic: str, msgtype: str) -> Any:
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        return self.conns[topic]

    def _header(self, h: Any) -> Any:
        t = self.ts.types
        stamp = t["builtin_interfaces/msg/Time"](sec=h.stamp.sec, nanosec=h.stamp.nanosec)
        return t["std_msgs/msg/Header"](stamp=stamp, frame_id=h.frame_id)

    def write(self, leaf: str, msg: Any, stamp: int) -> None:
        import cv2

        t = self.ts.types
        topic = f"{self.prefix}/{leaf}"
        if leaf == "labels/camera_info":
            roi = t["sensor_msgs/msg/RegionOfInterest"](
                x_offset=msg.roi.x_offset,
                y_offset=msg.roi.y_offset,
                height=msg.roi.height,
                width=msg.roi.width,
                do_rectify=msg.roi.do_rectify,
            )
            out = t["sensor_msgs/msg/CameraInfo"](
                header=self._header(msg.header),
                height=msg.height,
                width=msg.width,
                distortion_model=msg.distortion_model,
                d=np.array(msg.d, dtype=np.float64),
                k=np.array(msg.k, dtype=np.float64),
                r=np.array(msg.r, dtype=np.float64),
                p=np.array(msg.p, dtype=np.float64),
                binning_x=msg.binning_x,
                binning_y=msg.binning_y,
                roi=roi,
            )
            msgtype = "sensor_msgs/msg/CameraInfo"
        elif leaf == "labels":
            out = t["sensor_msgs/msg/Image"](
                header=self._header(msg.header),
                height=msg.height,
                width=msg.width,
                encoding=msg.encoding,
                is_bigendian=msg.is_bigendian,
                step=msg.step,
                data=np.frombuffer(msg.data, np.uint8).copy(),
            )
            msgtype = "sensor_msgs/msg/Image"
        else:  # colour images as jpeg, like image_transport's compressed topics
            channels = 3 if msg.encoding == "rgb8" else 1
            pixels = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
            bgr = pixels[..., ::-1] if channels == 3 else pixels
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                return
            out = t["sensor_msgs/msg/CompressedImage"](
                header=self._header(msg.header), format="jpeg", data=buf
            )
            topic, msgtype = f"{topic}/compressed", "sensor_msgs/msg/CompressedImage"
        self.writer.write(self._conn(topic, msgtype), stamp, self.ts.serialize_cdr(out, msgtype))
        self.count += 1

    def close(self) -> None:
        self.writer.close()
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        shutil.rmtree(self.staging, ignore_errors=True)


def _node_command(args: DemoConfig, ns: str) -> list[str]:
    params = {"model": args.model, "weights": args.weights, "labels": args.labels, "backend": args.backend}
    ros = ["--ros-args", "-r", f"__ns:={ns}", *param_args(**{k: v for k, v in params.items() if v})]
    if args.network_size:
        ros += param_args(network_height=args.network_size[0], network_width=args.network_size[1])
    return node_module_command(*ros)


def run_demo(args: DemoConfig) -> int:
    """Start the node, play, record, report; the exit status (0: outputs came back)."""
    env = local_ros_env(os.environ, on_drop=lambda why: print(f"[demo] {why}"))
    adopt_environment(env)  # this process joins the same SHM-only domain as the node
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ns = "/demo"
    print(
        f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, "
        f"FASTDDS_BUILTIN_TRANSPORTS={env['FASTDDS_BUILTIN_TRANSPORTS']}"
    )
    from refinenet_ros.samples import demo_images, sample_sequence

    h, w = args.size
    frames = sample_sequence(args.frames, (h, w), demo_images())
    node = subprocess.Popen(_node_command(args, ns), env=env, preexec_fn=die_with_parent)
    try:
        return _play_and_record(args, ns, frames, node, out_dir)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def _play_and_record(
    args: DemoConfig, ns: str, frames: list[Any], node: subprocess.Popen[bytes], out_dir: Path
) -> int:
    import array

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from refinenet_ros.ros.node import NODE_NAME

    rclpy.init(args=None)
    client = rclpy.create_node("refinenet_demo")
    best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    recorder = Recorder()
    if not args.no_bag:
        recorder.bag = McapRecorder(out_dir / "outputs_bag", f"{ns}/{NODE_NAME}")
    prefix = f"{ns}/{NODE_NAME}"
    for leaf in OUTPUTS:
        msg_type = CameraInfo if leaf.endswith("camera_info") else Image
        client.create_subscription(
            msg_type, f"{prefix}/{leaf}", lambda m, k=leaf: recorder.on_output(k, m), best_effort
        )
    diags: list[dict[str, str]] = []

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(prefix):
                diags.append({kv.key: kv.value for kv in status.values})

    client.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    image_pub = client.create_publisher(
        Image, f"{ns}/image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    info_pub = client.create_publisher(CameraInfo, f"{ns}/camera_info", best_effort)
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        print("[demo] waiting for the node to become active ...")
        deadline = time.monotonic() + 300
        while (
            client.count_subscribers(f"{ns}/image") == 0 or client.count_publishers(f"{prefix}/labels") == 0
        ):
            if node.poll() is not None:
                print(f"[demo] the node exited with status {node.returncode}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print("[demo] the node did not become active within 300 s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        time.sleep(1.0)  # let the node's publishers match the recorder's subscriptions
        h, w = frames[0].shape[:2]
        info = CameraInfo(width=w, height=h, distortion_model="plumb_bob", d=[0.0] * 5)
        f = 0.8 * w
        info.k = [f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
        msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
        msg.header.frame_id = info.header.frame_id = "demo_camera_optical"
        msg.data = array.array("B", bytes(h * w * 3))
        view = np.frombuffer(msg.data, np.uint8)
        print(f"[demo] playing {len(frames)} frames of {w}x{h} at {args.rate:g} Hz")
        period = 1.0 / args.rate
        t_start = time.monotonic()
        for i, frame in enumerate(frames):
            time.sleep(max(0.0, t_start + i * period - time.monotonic()))
            stamp = client.get_clock().now().to_msg()
            msg.header.stamp = info.header.stamp = stamp
            view[:] = frame.reshape(-1)
            info_pub.publish(info)
            image_pub.publish(msg)
            recorder.sent[stamp.sec * 1_000_000_000 + stamp.nanosec] = time.time()
        last = max(recorder.sent)
        tail = time.monotonic() + 30
        while time.monotonic() < tail:  # wait for the frame in flight
            with recorder.lock:
                got = recorder.last.get("labels")
            if got is not None and got.header.stamp.sec * 1_000_000_000 + got.header.stamp.nanosec == last:
                break
            time.sleep(0.1)
        time.sleep(1.2)  # one more diagnostics period
        play_s = time.monotonic() - t_start
    finally:
        executor.shutdown(timeout_sec=1.0)
        client.destroy_node()
        rclpy.try_shutdown()
    t0 = time.monotonic()
    node.send_signal(signal.SIGINT)
    try:
        node.wait(10)
    except subprocess.TimeoutExpired:
        node.kill()
    exit_s = time.monotonic() - t0
    return _report(args, recorder, diags, out_dir, play_s, exit_s, node.returncode)


def _report(
    args: DemoConfig,
    recorder: Recorder,
    diags: list[dict[str, str]],
    out_dir: Path,
    play_s: float,
    exit_s: float,
    exit_code: int | None,
) -> int:
    from refinenet_ros.io import atomic_write_text, write_label_png, write_mono_png, write_rgb_png
    from refinenet_ros.labels import get_label_set

    if recorder.bag is not None:
        recorder.bag.close()
    last = recorder.last
    diag = diags[-1] if diags else {}
    if "labels" in last:
        m = last["labels"]
        dtype = np.uint8 if m.encoding == "mono8" else np.uint16
        labels: Any = np.frombuffer(m.data, dtype).reshape(m.height, m.width)
        label_set = get_label_set(diag.get("labels") or args.labels or "voc")
        write_label_png(out_dir / "labels.png", labels, label_set)
    for leaf in ("color", "overlay"):
        if leaf in last:
            m = last[leaf]
            write_rgb_png(
                out_dir / f"{leaf}.png", np.frombuffer(m.data, np.uint8).reshape(m.height, m.width, 3)
            )
    if "confidence" in last:
        m = last["confidence"]
        write_mono_png(out_dir / "confidence.png", np.frombuffer(m.data, np.uint8).reshape(m.height, m.width))
    sent = len(recorder.sent)
    frames_in = int(diag.get("frames_in", "0"))
    out_count = recorder.counts.get("labels", 0)
    latency = percentiles(recorder.latencies_ms)
    stages = {s: float(diag.get(f"{s}_ms_p50", "nan")) for s in NODE_STAGES}
    summary = {
        "frames_sent": sent,
        "frames_in": frames_in,
        "frames_out": out_count,
        "dropped_skipped_latest_only": int(diag.get("dropped_skipped", "0")),
        "dropped_stale": int(diag.get("dropped_stale", "0")),
        "lost_in_transport": sent - frames_in,
        "malformed": int(diag.get("malformed", "0")),
        "no_subscriber_yet": int(diag.get("no_subscriber", "0")),
        "latency_ms": latency,
        "stage_p50_ms": stages,
        "rate_hz": {"played": args.rate, "out": out_count / play_s if play_s > 0 else 0.0},
        "size": list(args.size),
        "model": diag.get("model", "?"),
        "backend": f"{diag.get('backend', '?')} on {diag.get('device', '?')}",
        "bag_messages": recorder.bag.count if recorder.bag is not None else 0,
        "node_exit": {"code": exit_code, "seconds": round(exit_s, 2)},
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"[demo] model {summary['model']}, backend {summary['backend']}, {args.size[1]}x{args.size[0]}")
    print(
        f"[demo] frames sent {sent}, in {frames_in}, out {out_count}; dropped: "
        f"{summary['dropped_skipped_latest_only']} skipped (latest-only), {summary['dropped_stale']} stale, "
        f"{summary['lost_in_transport']} lost in transport, {summary['malformed']} malformed, "
        f"{summary['no_subscriber_yet']} before the recorder matched"
    )
    print(
        f"[demo] latency (stamp -> recorder) p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms, "
        f"p99 {latency['p99']:.0f} ms; node stages p50: "
        + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    )
    print(f"[demo] node exited with {exit_code} in {exit_s:.2f} s after SIGINT")
    written = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    print(f"[demo] wrote {out_dir}/: {', '.join(written)}")
    return 0 if out_count > 0 and exit_code == 0 else 1
