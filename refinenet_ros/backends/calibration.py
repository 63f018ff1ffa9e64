"""INT8 calibration images: from a folder, a rosbag2 image topic, or the bundled samples.

Calibration only works when the calibrator sees exactly what the engine will see at
run time, so every source goes through :func:`preprocess`, the same resize the
:class:`~refinenet_ros.segmenter.Segmenter` applies (OpenCV bilinear to the network
size, uint8 RGB NHWC); normalisation happens inside the graph for both. Pure numpy +
OpenCV (+ rosbags for bags): no TensorRT, so it is tested on any machine and shared by
the TensorRT entropy calibrator and ONNX Runtime's static quantisation.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.io import bag_errors

log = logging.getLogger("refinenet_ros")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class CalibrationError(RefineNetRosError, ValueError):
    """The calibration source is unusable; the message says what to change."""


class ImageSource(Protocol):
    """Yields up to ``count`` RGB uint8 HxWx3 images; ``fingerprint`` identifies the set."""

    count: int

    def images(self) -> Iterator[npt.NDArray[np.uint8]]: ...

    def fingerprint(self) -> str: ...

    def describe(self) -> str: ...


def preprocess(image: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """RGB HxWx3 -> network-size (H, W) RGB: the Segmenter's resize, bit for bit."""
    if image.shape[:2] == size:
        return np.ascontiguousarray(image)
    out = np.empty((size[0], size[1], 3), dtype=np.uint8)
    cv2.resize(image, (size[1], size[0]), dst=out, interpolation=cv2.INTER_LINEAR)
    return out


def _evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` indices spread over ``total`` items (diverse scenes beat the first N frames)."""
    if total <= count:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


@dataclass
class FolderSource:
    """Image files of a folder, or of its subfolders when it holds none itself (a data set
    laid out per sequence or per room); sorted, sampled evenly when there are more than
    ``count``."""

    folder: Path
    count: int = 64

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            raise CalibrationError(f"calibration folder {self.folder} does not exist")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CalibrationError(
                f"calibration folder {self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
                "nor do its subfolders"
            )
        return [files[i] for i in _evenly_spaced(len(files), self.count)]

    def images(self) -> Iterator[npt.NDArray[np.uint8]]:
        from refinenet_ros.io import UnreadableImage, read_rgb

        for path in self.files():
            try:
                yield read_rgb(path)
            except UnreadableImage as exc:
                log.warning("calibration: skipping %s", exc)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in self.files():
            st = path.stat()
            h.update(f"{path.relative_to(self.folder)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def describe(self) -> str:
        return f"{len(self.files())} images from {self.folder}"


@dataclass
class BagSource:
    """Frames of one ``sensor_msgs/Image`` or ``CompressedImage`` topic of a rosbag2
    (sqlite3 or mcap, read with rosbags: no ROS installation needed)."""

    bag: Path
    topic: str
    count: int = 64

    def _open(self) -> Any:
        from rosbags.highlevel import AnyReader

        if not self.bag.exists():
            raise CalibrationError(f"calibration bag {self.bag} does not exist")
        from rosbags.typesys import Stores, get_typestore

        # Bags recorded without embedded definitions (older sqlite3) need a typestore.
        return AnyReader([self.bag], default_typestore=get_typestore(Stores.LATEST))

    def _connections(self, reader: Any) -> list[Any]:
        conns = [c for c in reader.connections if c.topic == self.topic]
        if not conns:
            topics = sorted(
                {f"{c.topic} ({c.msgtype})" for c in reader.connections if c.msgtype in IMAGE_TYPES}
            )
            raise CalibrationError(
                f"topic {self.topic!r} not in {self.bag}; image topics there: {', '.join(topics) or 'none'}"
            )
        if conns[0].msgtype not in IMAGE_TYPES:
            raise CalibrationError(
                f"topic {self.topic!r} carries {conns[0].msgtype}, not {' or '.join(IMAGE_TYPES)}"
            )
        return conns

    def images(self) -> Iterator[npt.NDArray[np.uint8]]:
        from refinenet_ros.images.encodings import MalformedImage, decode_message

        with bag_errors(CalibrationError, f"calibration bag {self.bag}"), self._open() as reader:
            conns = self._connections(reader)
            total = sum(c.msgcount for c in conns)
            wanted = set(_evenly_spaced(total, self.count))
            for index, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
                if index not in wanted:
                    continue
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    yield decode_message(msg)
                except MalformedImage as exc:
                    log.warning("calibration: skipping message %d of %s: %s", index, self.topic, exc)

    def fingerprint(self) -> str:
        with bag_errors(CalibrationError, f"calibration bag {self.bag}"), self._open() as reader:
            conns = self._connections(reader)
            total = sum(c.msgcount for c in conns)
        st = self.bag.stat()
        return hashlib.sha256(
            f"{self.bag.resolve()}:{st.st_mtime_ns}:{self.topic}:{total}:{self.count}".encode()
        ).hexdigest()

    def describe(self) -> str:
        return f"up to {self.count} frames of {self.topic} in {self.bag}"


@dataclass
class SampleSource:
    """The bundled sample images, each also flipped and cropped: a last resort only —
    calibrate on the robot's own camera for real deployments."""

    count: int = 16

    def images(self) -> Iterator[npt.NDArray[np.uint8]]:
        from refinenet_ros.samples import sample_images

        produced = 0
        for variant in range(4):
            for _, image in sample_images():
                if produced >= self.count:
                    return
                h, w = image.shape[:2]
                if variant & 1:
                    image = image[:, ::-1]
                if variant & 2:
                    image = image[h // 8 : h - h // 8, w // 8 : w - w // 8]
                produced += 1
                yield np.ascontiguousarray(image)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"samples:{self.count}".encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.count} variants of the bundled sample images"


def make_source(
    folder: str | None = None, bag: str | None = None, topic: str | None = None, count: int = 64
) -> ImageSource:
    """The source the ``--calib-*`` options describe (samples when none is given)."""
    if count < 1:
        raise CalibrationError(f"--calib-count {count}: must be >= 1")
    if folder and bag:
        raise CalibrationError("give either --calib-images or --calib-bag, not both")
    if bag:
        if not topic:
            raise CalibrationError("--calib-bag needs --calib-topic (the camera's image topic)")
        return BagSource(Path(bag), topic, count)
    if topic:
        raise CalibrationError("--calib-topic needs --calib-bag")
    if folder:
        return FolderSource(Path(folder), count)
    log.warning(
        "no calibration data given: calibrating on the bundled sample images; pass "
        "--calib-images DIR or --calib-bag BAG --calib-topic TOPIC with the robot's own frames"
    )
    return SampleSource(min(count, 16))


def calibration_batches(
    source: ImageSource, size: tuple[int, int], batch: int = 1
) -> Iterator[npt.NDArray[np.uint8]]:
    """uint8 [batch, H, W, 3] arrays at network ``size``; a short last batch is dropped
    (calibrators need full batches) unless it is the only one."""
    buf: list[npt.NDArray[np.uint8]] = []
    produced = 0
    for image in source.images():
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise CalibrationError(
                f"calibration image has shape {image.shape} {image.dtype}, not HxWx3 uint8"
            )
        buf.append(preprocess(image, size))
        if len(buf) == batch:
            produced += 1
            yield np.stack(buf)
            buf = []
    if buf and produced == 0:
        yield np.stack(buf)
        produced += 1
    if produced == 0:
        raise CalibrationError(f"calibration source ({source.describe()}) gave no images")
