"""sensor_msgs <-> numpy: decode incoming images, fill outgoing ones in place.

CameraInfo rescaling lives in :mod:`refinenet_ros.camera_info` (shared with the bag tool).

Measured with rclpy 9.1.2 at 640x480 rgb8 (see the node's notes): assigning an ndarray to
``msg.data`` costs ~70 ms (the generated setter validates every element), building an
``array.array`` from bytes ~0.8 ms, writing through an ``np.frombuffer`` view of an
existing ``array.array('B')`` 0.05 ms, ``publish`` 0.17 ms. So each output topic keeps
one message whose ``data`` is allocated once per image size and overwritten in place:
``publish`` serialises synchronously, so reusing the buffer right after it returns is safe.
Incoming ``msg.data`` (an ``array.array``) is read through a zero-copy ``np.frombuffer``.
"""

from __future__ import annotations

import array
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
from sensor_msgs.msg import CompressedImage, Image

from refinenet_ros.images.encodings import DEFAULT_MAX_PIXELS, decode_compressed, decode_image, pixel_layout

__all__ = ["OutgoingImage", "image_to_rgb"]

_LITTLE = sys.byteorder == "little"


def image_to_rgb(msg: Image | CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Decode an Image or CompressedImage to HxWx3 RGB (raises ``MalformedImage``).

    Frames above ``max_pixels`` are refused before decoding; the error names the node
    parameter ``max_image_pixels`` that raises the limit.
    """
    limit = "-p max_image_pixels:=..."
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.data, msg.format, max_pixels=max_pixels, limit_name=limit)
    return decode_image(
        msg.data, msg.encoding, msg.width, msg.height, msg.step, bool(msg.is_bigendian),
        max_pixels=max_pixels, limit_name=limit,
    )  # fmt: skip


class OutgoingImage:
    """One reusable ``sensor_msgs/Image`` for one output topic, filled in place.

    ``view(header, height, width, encoding)`` returns a writable ndarray over the message's
    own buffer (reallocated only when the size or encoding changes); write the pixels into
    it, then publish :attr:`msg`.
    """

    def __init__(self) -> None:
        self.msg = Image()
        self._view: npt.NDArray[Any] | None = None
        self._key: tuple[int, int, str] | None = None

    def view(self, header: Any, height: int, width: int, encoding: str) -> npt.NDArray[Any]:
        key = (height, width, encoding)
        msg = self.msg
        if key != self._key or self._view is None:
            channels, itemsize = pixel_layout(encoding)
            dtype = np.uint16 if itemsize == 2 else np.uint8
            msg.height, msg.width, msg.encoding = height, width, encoding
            msg.step = width * channels * itemsize
            msg.is_bigendian = not _LITTLE
            msg.data = array.array("B", bytes(msg.step * height))
            shape = (height, width, channels) if channels > 1 else (height, width)
            self._view = np.frombuffer(msg.data, dtype=dtype).reshape(shape)
            self._key = key
        msg.header = header
        return self._view
