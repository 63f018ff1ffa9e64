"""One camera's outputs as the node publishes them: its topics, lifecycle publishers and
reusable outgoing messages (:class:`CameraIO`), and a frame rendered straight into those
messages, each published as soon as it is complete (:class:`PublishSink`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
from rclpy.lifecycle import LifecyclePublisher
from sensor_msgs.msg import CameraInfo

from refinenet_ros.camera_info import scale_camera_info
from refinenet_ros.ros.messages import OutgoingImage
from refinenet_ros.segmenter import OUTPUT_KINDS

__all__ = ["CameraIO", "PublishSink"]


@dataclass
class CameraIO:
    """One camera's topics, publishers and reusable outgoing messages."""

    name: str  # "" for the single-camera case
    publishers: dict[str, LifecyclePublisher] = field(default_factory=dict)
    info_pub: LifecyclePublisher | None = None
    buffers: dict[str, OutgoingImage] = field(
        default_factory=lambda: {k: OutgoingImage() for k in OUTPUT_KINDS}
    )
    info_out: CameraInfo = field(default_factory=CameraInfo)
    camera_info: CameraInfo | None = None

    def topic(self, leaf: str) -> str:
        """Input topic ``leaf`` under this camera's namespace (relative unless given absolute)."""
        return f"{self.name.rstrip('/')}/{leaf}" if self.name else leaf

    def output(self, leaf: str) -> str:
        return f"~/{self.name.strip('/')}/{leaf}" if self.name else f"~/{leaf}"


class PublishSink:
    """A frame's outputs as the node sends them (a :class:`~refinenet_ros.segmenter.RenderSink`):
    rendered into the camera's reusable messages, each published as soon as it is complete."""

    def __init__(self, cam: CameraIO, header: Any, result: Any, send_info: bool) -> None:
        self.cam, self.header, self.result, self.send_info = cam, header, result, send_info
        self.publish_s = 0.0

    def buffer(self, kind: str, height: int, width: int, encoding: str) -> npt.NDArray[Any]:
        return self.cam.buffers[kind].view(self.header, height, width, encoding)

    def done(self, kind: str) -> None:
        self._send(self.cam.publishers[kind], self.cam.buffers[kind].msg)

    def camera_info(self) -> None:
        cam = self.cam
        if self.send_info and cam.camera_info is not None and cam.info_pub is not None:
            info = scale_camera_info(
                cam.camera_info, self.result.input_size, self.result.size, out=cam.info_out
            )
            info.header = self.header
            self._send(cam.info_pub, info)

    def _send(self, publisher: Any, msg: Any) -> None:
        t = time.perf_counter()
        publisher.publish(msg)
        self.publish_s += time.perf_counter() - t
