"""Rendering a segmented frame into output messages: CDR buffers written in place (no
per-message object churn), headers copied from the input, camera_info scaled to the labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.bag.options import BagOptions
from refinenet_ros.bag.topics import CAMERA_INFO_TYPE, IMAGE_TYPE
from refinenet_ros.camera_info import scale_camera_info
from refinenet_ros.images.encodings import pixel_layout

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.rosbag2 import Writer
    from rosbags.typesys.store import Typestore

    from refinenet_ros.segmenter import SegmentationResult


@dataclass
class _Frame:
    """One decoded camera frame waiting for its batch."""

    topic: str
    index: int
    timestamp: int
    header: Any
    rgb: npt.NDArray[np.uint8]
    raw: Any = None  # copy-through item written before the outputs


@dataclass
class _Copy:
    connection: Connection
    timestamp: int
    data: Any


@dataclass
class _Chunk:
    """Messages in reading order up to and including one batch of frames: written as a unit."""

    items: list[_Frame | _Copy] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    results: list[SegmentationResult] = field(default_factory=list)
    malformed: int = 0  # skipped while reading this chunk (progress only; the summary counts them)
    copy_bytes: int = 0


@dataclass
class _Camera:
    topic: str
    base: str
    info_topic: str | None
    connections: dict[str, Connection] = field(default_factory=dict)
    infos: list[tuple[int, Any]] = field(default_factory=list)  # (stamp ns, CameraInfo)
    info_by_stamp: dict[int, Any] = field(default_factory=dict)


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class _OutputWriter:
    """Renders, serialises and writes one frame's output messages with one typestore.

    Image messages are serialised without an intermediate array: sensor_msgs/Image ends
    with its ``data`` sequence, so its CDR bytes are the serialised fields with an empty
    ``data`` (patched to the real length) followed by the raw pixels. Each output renders
    straight into that tail of a per-topic reusable bytearray (``colorize`` / ``overlay`` /
    ``confidence_u8`` take ``out=``), and ``Writer.write`` copies the bytes before the
    buffer is reused for the next frame. Same bytes as ``serialize_cdr`` of a filled
    message (a test compares them), without the 7.4 MB of fresh arrays and the extra
    copy per 720p frame.
    """

    def __init__(self, writer: Writer, typestore: Typestore, options: BagOptions) -> None:
        self.writer = writer
        self.ts = typestore
        self.options = options
        t = typestore.types
        self.Image = t[IMAGE_TYPE]
        self.CameraInfo = t[CAMERA_INFO_TYPE]
        self.RegionOfInterest = t["sensor_msgs/msg/RegionOfInterest"]
        self.Header = t["std_msgs/msg/Header"]
        self.Time = t["builtin_interfaces/msg/Time"]
        self.written = 0
        self._empty = np.zeros(0, dtype=np.uint8)
        self._buffers: dict[tuple[str, str], bytearray] = {}

    def header(self, src: Any) -> Any:
        return self.Header(
            stamp=self.Time(sec=int(src.stamp.sec), nanosec=int(src.stamp.nanosec)),
            frame_id=str(src.frame_id),
        )

    def image_buffer(
        self, key: tuple[str, str], header: Any, height: int, width: int, encoding: str
    ) -> tuple[bytearray, npt.NDArray[Any]]:
        """A serialised Image whose pixels are still to be filled: (CDR bytes, pixel view).

        The view is (H, W, 3) uint8 for rgb8, (H, W) uint8 for mono8, (H, W) ``<u2`` for
        mono16; whatever is written into it is the message's ``data``.
        """
        channels, itemsize = pixel_layout(encoding)
        step = width * channels * itemsize
        nbytes = step * height
        prefix = bytes(
            self.ts.serialize_cdr(
                self.Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0,
                           step=step, data=self._empty),
                IMAGE_TYPE,
            )
        )  # fmt: skip
        # The empty data sequence serialises as its uint32 length (0) at the very end.
        head = len(prefix)
        buf = self._buffers.get(key)
        if buf is None or len(buf) != head + nbytes:
            buf = self._buffers[key] = bytearray(head + nbytes)
        buf[:head] = prefix
        buf[head - 4 : head] = nbytes.to_bytes(4, "little" if prefix[1] == 1 else "big")
        pixels: npt.NDArray[Any] = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=head)
        if itemsize == 2:
            pixels = pixels.view("<u2")
        return buf, pixels.reshape((height, width, channels) if channels > 1 else (height, width))

    def write_buffer(self, connection: Connection, timestamp: int, buf: bytearray) -> None:
        with memoryview(buf) as view:  # released at once: the buffer is refilled next frame
            self.writer.write(connection, timestamp, view)
        self.written += 1

    def write(self, connection: Connection, timestamp: int, msg: Any, msgtype: str) -> None:
        self.writer.write(connection, timestamp, self.ts.serialize_cdr(msg, msgtype))
        self.written += 1

    def frame(self, cam: _Camera, frame: _Frame, result: SegmentationResult) -> None:
        """Render and write one frame's outputs (the node's rendering path, another sink)."""
        sink = _BagSink(self, cam, frame, result)
        result.render(sink, self.options.outputs, frame.rgb, self.options.alpha)

    def camera_info(
        self, header: Any, info: Any, height: int, width: int, image_size: tuple[int, int]
    ) -> Any:
        """The camera_info rescaled from the received image's size to the label image's.

        The rescaling itself is the node's (one implementation for both): it duck-types
        the message, so it fills a rosbags CameraInfo as well as an rclpy one.
        """
        out: Any = self.CameraInfo(
            header=header,
            height=height,
            width=width,
            distortion_model="",
            d=np.zeros(0),
            k=np.zeros(9),
            r=np.zeros(9),
            p=np.zeros(12),
            binning_x=0,
            binning_y=0,
            roi=self.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        scale_camera_info(info, image_size, (height, width), out=out)
        out.header = header
        for name, size in (("d", None), ("k", 9), ("r", 9), ("p", 12)):
            value = np.asarray(getattr(out, name), dtype=np.float64).reshape(-1)
            if size is not None and value.size != size:
                raise ValueError(f"camera_info {name} has {value.size} values, expected {size}")
            setattr(out, name, value)
        return out


def _matching_info(cam: _Camera, frame: _Frame) -> Any:
    """The camera_info with the frame's stamp, else the latest one before it, else the first."""
    if not cam.infos:
        return None
    stamp = _stamp_ns(frame.header)
    exact = cam.info_by_stamp.get(stamp)
    if exact is not None:
        return exact
    best = cam.infos[0][1]
    for s, info in cam.infos:
        if s > stamp:
            break
        best = info
    return best


class _BagSink:
    """A frame's outputs as the bag tool writes them (a
    :class:`~refinenet_ros.segmenter.RenderSink`): rendered into the reusable serialised
    messages, each written as soon as it is complete, with the input's log time."""

    def __init__(self, out: _OutputWriter, cam: _Camera, frame: _Frame, result: SegmentationResult) -> None:
        self.out, self.cam, self.frame, self.result = out, cam, frame, result
        self.header = out.header(frame.header)
        self._pending: dict[str, bytearray] = {}

    def buffer(self, kind: str, height: int, width: int, encoding: str) -> npt.NDArray[Any]:
        buf, pixels = self.out.image_buffer((self.cam.topic, kind), self.header, height, width, encoding)
        self._pending[kind] = buf
        return pixels

    def done(self, kind: str) -> None:
        self.out.write_buffer(self.cam.connections[kind], self.frame.timestamp, self._pending.pop(kind))

    def camera_info(self) -> None:
        """Written with the labels (the info describes them), when the input had one."""
        conns = self.cam.connections
        if "labels" not in self.out.options.outputs or "camera_info" not in conns:
            return
        info = _matching_info(self.cam, self.frame)
        if info is not None:
            h, w = self.result.size
            msg = self.out.camera_info(self.header, info, h, w, self.result.input_size)
            self.out.write(conns["camera_info"], self.frame.timestamp, msg, CAMERA_INFO_TYPE)
