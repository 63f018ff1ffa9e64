"""/diagnostics tells a user when the transport loses camera frames before the node sees
them (default Fast DDS delivered 28 of 97 VGA frames while the node reported OK)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from ros_helpers import OUT, SMALL, RosClient, image_msg, node_args, smooth_image, start_node

pytestmark = [pytest.mark.ros, pytest.mark.slow]
FAST = dict(weights="random", backend="torch", network_height=64, network_width=96)


def test_diagnostics_warn_while_frames_are_lost_and_recover(
    ros_env: dict[str, str], ros_client: RosClient, tmp_path: Any
) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image

    node = start_node(tmp_path, "loss", "-r", "__ns:=/loss", *node_args(diagnostics_window_s=3.0, **FAST))
    statuses: list[tuple[float, str, dict[str, str]]] = []

    def record(msg: Any) -> None:
        for s in msg.status:
            if s.name.startswith(f"/loss/{OUT}"):
                statuses.append((time.monotonic(), s.message, {kv.key: kv.value for kv in s.values}))

    ros_client.node.create_subscription(DiagnosticArray, "/diagnostics", record, 10)
    pub = ros_client.publisher(Image, "/loss/image")
    info_pub = ros_client.publisher(CameraInfo, "/loss/camera_info")
    assert ros_client.wait_matched(pub) and ros_client.wait_matched(info_pub)
    frame = smooth_image(SMALL)

    def camera(seconds: float, delivered: Any) -> float:
        """A 20 Hz camera: CameraInfo for every frame, the image only when ``delivered(k)``."""
        start = time.monotonic()
        t0 = time.time_ns()
        k = 0
        while time.monotonic() - start < seconds:
            stamp = t0 + k * 50_000_000
            info = CameraInfo(width=SMALL[1], height=SMALL[0])
            info.header.stamp.sec, info.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            info_pub.publish(info)
            if delivered(k):
                pub.publish(image_msg(frame, stamp_ns=stamp))
            k += 1
            time.sleep(max(0.0, start + k * 0.05 - time.monotonic()))
        return time.monotonic()

    try:
        lossy_end = camera(4.0, lambda k: k % 4 < 2)  # half the images lost on the way
        assert any("transport lost" in m for t, m, _ in statuses if t <= lossy_end + 1.5), statuses[-3:]
        warned = next(v for _, m, v in reversed(statuses) if "transport lost" in m)
        lost, sent = map(int, warned["transport_lost_recent"].split(" of "))
        assert 0.35 <= lost / sent <= 0.65, warned["transport_lost_recent"]
        steady_end = camera(4.5, lambda k: True)  # nothing lost: back to OK within the window
        last = [(m, v) for t, m, v in statuses if steady_end - 1.5 <= t <= steady_end + 1.5]
        assert last and all("transport lost" not in m for m, _ in last), last
        assert last[-1][1]["transport_lost_recent"].startswith("0 of ")
    finally:
        node.stop()
