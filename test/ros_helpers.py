"""ROS 2 test fixtures: SHM-only Fast DDS, a domain per session, the node as a real process.

Imported into conftest.py. Tests talk to ``segmentation_node`` over topics exactly as a
robot would: the node runs as a separate process started with ``--ros-args`` (what
launch does), and a client node in the test process publishes and collects messages on
an executor thread. No rclpy mocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from refinenet_ros.ros.process import (
    NODE_MODULE,
    RMW_IMPLEMENTATION,
    SHM_ONLY,
    die_with_parent,
    own_domain_id,
    param_args,
)

__all__ = ["ros_client", "ros_env"]  # what conftest.py's star import exposes: the fixtures

ROS_ENV = {
    "FASTDDS_BUILTIN_TRANSPORTS": SHM_ONLY,
    "RMW_IMPLEMENTATION": RMW_IMPLEMENTATION,
    "ROS_DOMAIN_ID": own_domain_id(),
    "PYTHONUNBUFFERED": "1",
}
_BIN = Path(sys.executable).parent


def _console_script(name: str, module: str) -> list[str]:
    """The installed console script, else ``python -m module`` (colcon installs scripts elsewhere)."""
    exe = _BIN / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


NODE_CMD = _console_script("segmentation_node", NODE_MODULE)
CLI_CMD = _console_script("refinenet-ros", "refinenet_ros")
OUT = "refinenet_segmentation"  # the node name: outputs are /<ns>/refinenet_segmentation/<leaf>
SMALL = (64, 96)  # (H, W) of test frames: small enough for a fast CPU forward


def smooth_image(size: tuple[int, int] = SMALL, seed: int = 0) -> npt.NDArray[np.uint8]:
    """A deterministic natural-looking RGB frame (smooth, so lossy encodings stay close)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3), dtype=np.uint8)
    big = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(cv2.GaussianBlur(big, (7, 7), 3))


def image_msg(
    rgb: npt.NDArray[np.uint8],
    encoding: str = "rgb8",
    *,
    stamp_ns: int = 0,
    frame_id: str = "camera",
    step: int | None = None,
    is_bigendian: bool = False,
) -> Any:
    """sensor_msgs/Image of ``rgb`` converted to ``encoding`` by the reference encoder."""
    import array

    from sensor_msgs.msg import Image

    from refinenet_ros.images.encodings import encode_image

    data, step = encode_image(rgb, encoding, step=step, is_bigendian=is_bigendian)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.step, msg.is_bigendian = encoding, step, int(is_bigendian)
    msg.data = array.array("B", data)
    return msg


def stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def msg_array(msg: Any) -> npt.NDArray[Any]:
    """An Image message's pixels as (H, W[, C]) without conversion (mono8/mono16/rgb8)."""
    dtype = np.dtype(">u2" if msg.is_bigendian else "<u2") if msg.encoding == "mono16" else np.uint8
    arr = np.frombuffer(msg.data, dtype=dtype).reshape(msg.height, -1)
    return arr.reshape(msg.height, msg.width, 3) if msg.encoding == "rgb8" else arr


class Collector:
    """Messages received on one topic, with a blocking wait."""

    def __init__(self) -> None:
        self.msgs: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        with self._cond:
            self.msgs.append(msg)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.msgs):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_count(self, n: int, timeout: float = 20.0) -> list[Any]:
        self.wait_for(lambda m: len(m) >= n, timeout)
        return list(self.msgs)

    def clear(self) -> None:
        with self._cond:
            self.msgs.clear()


class RosClient:
    """A test-side node spinning on its own thread in its own rclpy context."""

    def __init__(self, name: str = "refinenet_test_client") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=rclpy.SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self._publishers: dict[tuple[str, type, bool], Any] = {}

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # shutdown races (ExternalShutdownException, ...)
            self.executor.spin()

    def qos(self, reliable: bool = False, depth: int = 10) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        return QoSProfile(depth=depth, reliability=rel)

    def publisher(self, msg_type: type, topic: str, reliable: bool = False, depth: int = 10) -> Any:
        key = (topic, msg_type, reliable)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, self.qos(reliable, depth))
        return self._publishers[key]

    def subscribe(self, msg_type: type, topic: str, reliable: bool = False) -> Collector:
        collector = Collector()
        self.node.create_subscription(msg_type, topic, collector, self.qos(reliable, depth=50))
        return collector

    def wait_matched(self, pub: Any, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pub.get_subscription_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def wait_publishers(self, topic: str, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.count_publishers(topic) > 0:
                return True
            time.sleep(0.05)
        return False

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 20.0) -> Any:
        client: Any = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not future.done():
                raise TimeoutError(f"service {name} did not answer")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


class LoggedProcess:
    """A child process whose output goes to ``log_path``, waited on by what it logs."""

    log_path: Path
    proc: subprocess.Popen[bytes]
    poll_s = 0.1

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(self.poll_s)
        return False


class NodeProcess(LoggedProcess):
    """``segmentation_node --ros-args ...`` as a child process with its log in a file."""

    def __init__(self, ros_args: list[str], log_path: Path, cmd: list[str] | None = None) -> None:
        self.log_path = log_path
        env = dict(os.environ, **ROS_ENV)
        env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
        argv = NODE_CMD if cmd is None else cmd
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*argv, "--ros-args", *ros_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
        )

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int | None, float]:
        """Send ``sig``; return (exit code or None if it had to be killed, seconds to exit)."""
        t0 = time.monotonic()
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            code = self.proc.returncode
        self._log.close()
        return code, time.monotonic() - t0


node_args = param_args
"""``-p name:=value`` pairs for ``--ros-args`` (lists as YAML flow sequences)."""


_next_stamp = [int(time.time() * 1e9)]


def fresh_stamp() -> int:
    _next_stamp[0] = max(_next_stamp[0] + 1_000_000, time.time_ns())
    return _next_stamp[0]


def send_until_seen(
    pub: Any,
    make: Callable[[int], Any],
    collectors: list[Collector],
    timeout: float = 30.0,
    companion: Callable[[int], None] | None = None,
) -> dict[int, list[Any]]:
    """Publish ``make(stamp)`` (a new stamp each time) until every collector got one of them.

    ``companion(stamp)``, if given, is called just before each frame (e.g. to publish the
    frame's CameraInfo, as camera drivers do).

    Returns {stamp: [message per collector]} for the first stamp seen on all collectors:
    repeats only cover DDS discovery after a subscription appears, not lost frames.
    """
    sent: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = fresh_stamp()
        sent.append(stamp)
        if companion is not None:
            companion(stamp)
        pub.publish(make(stamp))
        wait_until = time.monotonic() + 1.5
        while time.monotonic() < wait_until:
            for s in sent:
                found = [[m for m in c.msgs if stamp_ns(m) == s] for c in collectors]
                if all(found):
                    return {s: [f[0] for f in found]}
            time.sleep(0.02)
    got = [sum(stamp_ns(m) in sent for m in c.msgs) for c in collectors]
    raise AssertionError(
        f"no frame of {len(sent)} seen on every output within {timeout} s; per output: {got}"
    )


def diagnostics(client: RosClient, ns: str, timeout: float = 5.0) -> dict[str, str]:
    """The latest /diagnostics key-values of node /ns/refinenet_segmentation."""
    from diagnostic_msgs.msg import DiagnosticArray

    if not hasattr(client, "_diag"):
        client._diag = client.subscribe(DiagnosticArray, "/diagnostics")  # type: ignore[attr-defined]
    collector: Collector = client._diag  # type: ignore[attr-defined]
    name = f"/{ns}/{OUT}"
    n0 = len(collector.msgs)

    def fresh(msgs: list[Any]) -> bool:
        return any(s.name.startswith(name) for m in msgs[n0:] for s in m.status)

    assert collector.wait_for(fresh, timeout + 2), f"no diagnostics from {name}"
    for msg in reversed(collector.msgs):
        for status in msg.status:
            if status.name.startswith(name):
                return {kv.key: kv.value for kv in status.values}
    raise AssertionError("unreachable")


# ---- fixtures -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ros_env() -> Iterator[dict[str, str]]:
    """SHM-only Fast DDS and this session's own ROS_DOMAIN_ID, in os.environ too."""
    try:
        import rclpy  # noqa: F401
    except ImportError:
        pytest.skip("rclpy is not installed (pip install '.[ros]')")
    saved = {k: os.environ.get(k) for k in (*ROS_ENV, "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ.update(ROS_ENV)
    # LOCALHOST makes rmw_fastrtps replace the SHM-only transports with UDP loopback,
    # which drops most large best-effort frames (measured: 4 of 40 VGA frames arrived).
    os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    yield dict(ROS_ENV)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ros_client(ros_env: dict[str, str]) -> Iterator[RosClient]:
    client = RosClient(f"refinenet_test_{os.getpid()}")
    yield client
    client.close()


def start_node(
    tmp_dir: Path, name: str, *ros_args: str, ready: str = "active: segmenting", timeout: float = 120.0
) -> NodeProcess:
    """Start the node and wait until it logs ``ready`` (fails the test with its log otherwise)."""
    proc = NodeProcess(list(ros_args), tmp_dir / f"{name}.log")
    if not proc.wait_log(ready, timeout):
        code, _ = proc.stop(signal.SIGKILL)
        pytest.fail(f"node {name} did not become ready (exit {code}):\n{proc.log()[-4000:]}")
    return proc


def running_nodes(
    procs: dict[str, NodeProcess], ready: dict[str, str] | str = "active: segmenting", timeout: float = 180.0
) -> Iterator[dict[str, NodeProcess]]:
    """Fixture body for several node processes started together: wait until each logs
    its ``ready`` line (else kill all and fail with the log), yield them, kill survivors."""
    for name, proc in procs.items():
        line = ready if isinstance(ready, str) else ready[name]
        if not proc.wait_log(line, timeout):
            for p in procs.values():
                p.stop(signal.SIGKILL)
            pytest.fail(f"node {name} did not start:\n{proc.log()[-4000:]}")
    yield procs
    for proc in procs.values():
        if proc.proc.poll() is None:
            proc.stop(signal.SIGKILL)


def camera_info_publisher(
    client: RosClient, topic: str, size: tuple[int, int], focal: tuple[float, float]
) -> tuple[Any, Callable[[int], None]]:
    """A pinhole CameraInfo for an image of ``size`` (H, W), and ``publish(stamp_ns)`` that
    sends it stamped like the frame, as a camera driver does with every image.

    Pass ``publish`` to ``send_until_seen(..., companion=publish)``. A few best-effort
    messages sent once are not enough: the test's writer can see the node's reader matched
    before the node's reader has matched the writer (discovery is one-sided for a moment),
    and those messages are dropped, leaving the node without camera_info (seen in CI).
    """
    from sensor_msgs.msg import CameraInfo

    (h, w), (fx, fy) = size, focal
    info = CameraInfo(width=w, height=h)
    info.k = [fx, 0.0, w / 2, 0.0, fy, h / 2, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, w / 2, 0.0, 0.0, fy, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    pub = client.publisher(CameraInfo, topic)
    client.wait_matched(pub)

    def publish(stamp: int) -> None:
        info.header.stamp.sec, info.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        pub.publish(info)

    return info, publish
