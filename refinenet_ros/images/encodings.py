"""sensor_msgs image encodings <-> HxWx3 uint8 RGB, in pure numpy + OpenCV (no rclpy).

The node, the bag tool and INT8 calibration all need the same decoding, and the latter two
run without ROS, so this module never imports rclpy: it takes the fields of an
``Image``/``CompressedImage`` message as plain values.

Why so strict: a camera driver with a wrong ``step`` or a truncated buffer is the most
common way a segmentation node dies in the field. Every malformed kind raises
:class:`MalformedImage` (a ``ValueError``) with a message naming the problem and what the
sender must fix, so the node can log it, count it and carry on with the next frame.

``rgb8`` frames without row padding decode to a zero-copy view of ``data``; everything else
costs one OpenCV conversion.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Union

import cv2
import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError

BufferLike = Union[bytes, bytearray, memoryview, "array.array[int]", npt.NDArray[np.uint8]]
"""What a message's ``data`` field may be (rclpy gives ``array.array('B')``)."""

__all__ = [
    "COMPRESSED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ENCODINGS",
    "MalformedImage",
    "bytes_per_pixel",
    "decode_compressed",
    "decode_image",
    "encode_compressed",
    "encode_image",
    "image_header_size",
]

DEFAULT_MAX_PIXELS = 8192 * 8192
"""Frames above this many pixels are refused before decoding: twice an 8K camera's 33 MP,
while a 775 KB PNG claiming 16000x16000 (256 MP, 3 GB decoded) is a decompression bomb."""


class MalformedImage(RefineNetRosError, ValueError):
    """A message that cannot be turned into an image; the text says what is wrong."""


@dataclass(frozen=True)
class _Encoding:
    channels: int
    depth: int  # bytes per channel
    to_rgb: int | None  # cv2.cvtColor code from the (H, W, channels) view; None = already RGB
    from_rgb: int | None  # the reverse, for encode_image (reference conversions, players)


_E = _Encoding
_ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _E(3, 1, None, None),
    "bgr8": _E(3, 1, cv2.COLOR_BGR2RGB, cv2.COLOR_RGB2BGR),
    # cv_bridge treats untyped 3-channel images as OpenCV's native BGR: so do we.
    "8UC3": _E(3, 1, cv2.COLOR_BGR2RGB, cv2.COLOR_RGB2BGR),
    "rgba8": _E(4, 1, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGB2RGBA),
    "bgra8": _E(4, 1, cv2.COLOR_BGRA2RGB, cv2.COLOR_RGB2BGRA),
    "mono8": _E(1, 1, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    "8UC1": _E(1, 1, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    "mono16": _E(1, 2, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    "16UC1": _E(1, 2, cv2.COLOR_GRAY2RGB, cv2.COLOR_RGB2GRAY),
    # Packed 4:2:2, 2 bytes per pixel: ROS "yuv422" is UYVY, "yuv422_yuy2" is YUYV.
    "yuv422": _E(2, 1, cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_RGB2YUV_UYVY),
    "uyvy": _E(2, 1, cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_RGB2YUV_UYVY),
    "yuv422_yuy2": _E(2, 1, cv2.COLOR_YUV2RGB_YUYV, cv2.COLOR_RGB2YUV_YUYV),
    "yuyv": _E(2, 1, cv2.COLOR_YUV2RGB_YUYV, cv2.COLOR_RGB2YUV_YUYV),
    # OpenCV names Bayer codes by the actual 2x2 pattern (BayerRGGB == legacy BayerBG).
    "bayer_rggb8": _E(1, 1, cv2.COLOR_BayerRGGB2RGB, None),
    "bayer_bggr8": _E(1, 1, cv2.COLOR_BayerBGGR2RGB, None),
    "bayer_gbrg8": _E(1, 1, cv2.COLOR_BayerGBRG2RGB, None),
    "bayer_grbg8": _E(1, 1, cv2.COLOR_BayerGRBG2RGB, None),
}
ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)
"""Every ``Image.encoding`` :func:`decode_image` accepts."""


def pixel_layout(encoding: str) -> tuple[int, int]:
    """(channels, bytes per channel) of a ROS image encoding: the one table the decoder, the
    node's outgoing messages and the bag writer's serialised ones all read."""
    try:
        e = _ENCODINGS[encoding]
    except KeyError:
        supported = ", ".join(ENCODINGS)
        raise MalformedImage(f"unsupported encoding {encoding!r}; supported: {supported}") from None
    return e.channels, e.depth


COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")

# Where each colour sits in the 2x2 Bayer tile, (row, col) of R and B (G fills the rest).
_BAYER_TILES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "bayer_rggb8": ((0, 0), (1, 1)),
    "bayer_bggr8": ((1, 1), (0, 0)),
    "bayer_gbrg8": ((1, 0), (0, 1)),
    "bayer_grbg8": ((0, 1), (1, 0)),
}


def _lookup(encoding: str) -> _Encoding:
    try:
        return _ENCODINGS[encoding]
    except KeyError:
        raise MalformedImage(
            f"unsupported encoding {encoding!r}; publish one of: {', '.join(ENCODINGS)}"
        ) from None


def bytes_per_pixel(encoding: str) -> int:
    """Bytes one pixel takes in ``encoding`` (raises :class:`MalformedImage` if unknown)."""
    enc = _lookup(encoding)
    return enc.channels * enc.depth


def _check_pixels(width: int, height: int, what: str, max_pixels: int, limit_name: str) -> None:
    if max_pixels > 0 and width * height > max_pixels:
        raise MalformedImage(
            f"{what} is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            f"({limit_name}); refused before decoding"
        )


def image_header_size(data: BufferLike) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding, else None.

    Other formats fall back to Pillow's lazy header read when Pillow is installed.
    """
    arr = np.frombuffer(data, dtype=np.uint8)  # zero-copy whatever the message's buffer type
    buf = memoryview(arr)  # type: ignore[arg-type]  # ndarray has the buffer protocol; stubs lag
    head = bytes(buf[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(buf)
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(buf)) as img:  # reads the header only
            return int(img.size[0]), int(img.size[1])
    except Exception:  # not an image Pillow knows: OpenCV will say so when decoding
        return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(buf: memoryview) -> tuple[int, int] | None:
    """Walk the JPEG marker segments to the first start-of-frame: (width, height)."""
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        length = (buf[i + 2] << 8) | buf[i + 3]
        if marker in _SOF and i + 9 <= n:
            height = (buf[i + 5] << 8) | buf[i + 6]
            width = (buf[i + 7] << 8) | buf[i + 8]
            return width, height
        i += 2 + length
    return None


def decode_image(
    data: BufferLike,
    encoding: str,
    width: int,
    height: int,
    step: int,
    is_bigendian: bool = False,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_name: str = "max_image_pixels",
) -> npt.NDArray[np.uint8]:
    """The fields of a ``sensor_msgs/Image`` -> (height, width, 3) uint8 RGB.

    Honours ``step`` (padded rows) and ``is_bigendian`` (16-bit encodings). mono16 keeps
    its top 8 bits. May return a view of ``data`` (rgb8): keep the buffer alive while the
    image is used. Frames above ``max_pixels`` (0 = no limit) raise :class:`MalformedImage`
    naming ``limit_name``, the setting that raises the limit.
    """
    enc = _lookup(encoding)
    if width <= 0 or height <= 0:
        raise MalformedImage(
            f"{encoding} image has zero size ({width}x{height}); width and height must be > 0"
        )
    _check_pixels(width, height, f"{encoding} image", max_pixels, limit_name)
    row_bytes = width * enc.channels * enc.depth
    if step < row_bytes:
        raise MalformedImage(
            f"{encoding} step {step} is smaller than width x bytes-per-pixel = {width} x "
            f"{enc.channels * enc.depth} = {row_bytes}; the sender must set step to the row length in bytes"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * height:
        raise MalformedImage(
            f"{encoding} {width}x{height} data holds {buf.size} bytes, fewer than step x height = "
            f"{step} x {height} = {step * height}; the frame is truncated"
        )
    if enc.channels == 2 and width % 2:
        raise MalformedImage(f"{encoding} is 4:2:2 packed and needs an even width, got {width}")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    if enc.depth == 2:
        order = ">" if is_bigendian else "<"
        wide = np.ascontiguousarray(rows).view(f"{order}u2").reshape(height, width)
        pixels = (wide >> 8).astype(np.uint8)
    else:
        pixels = rows.reshape(height, width, enc.channels) if enc.channels > 1 else rows
    if enc.to_rgb is None:
        return pixels
    if enc.channels == 2:
        pixels = np.ascontiguousarray(pixels)
    return np.asarray(cv2.cvtColor(pixels, enc.to_rgb), dtype=np.uint8)


def decode_compressed(
    data: BufferLike,
    format: str = "",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_name: str = "max_image_pixels",
) -> npt.NDArray[np.uint8]:
    """The fields of a ``sensor_msgs/CompressedImage`` (jpeg or png) -> HxWx3 uint8 RGB.

    ``format`` is only used in error messages: the codec is detected from the bytes, as
    image_transport's ``"rgb8; jpeg compressed bgr8"`` style strings vary by driver.
    The size in the header is checked against ``max_pixels`` (0 = no limit) before
    anything is decompressed: a few hundred KB can otherwise claim gigabytes.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise MalformedImage(f"compressed image ({format or 'no format'}) has no data")
    size = image_header_size(buf)
    if size is not None:
        _check_pixels(*size, f"compressed image ({format or 'no format'})", max_pixels, limit_name)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise MalformedImage(
            f"compressed image ({format or 'no format'}, {buf.size} bytes) is not a decodable "
            f"{' or '.join(COMPRESSED_FORMATS)} stream"
        )
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def decode_message(
    msg: Any,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_name: str = "max_image_pixels",
) -> npt.NDArray[np.uint8]:
    """A deserialised ``sensor_msgs/Image`` or ``CompressedImage`` (rclpy or rosbags) -> HxWx3
    RGB: the one decode of bag readers and calibration (a CompressedImage has ``format``)."""
    if hasattr(msg, "format"):
        return decode_compressed(msg.data, msg.format, max_pixels=max_pixels, limit_name=limit_name)
    return decode_image(
        msg.data, msg.encoding, msg.width, msg.height, msg.step, bool(msg.is_bigendian),
        max_pixels=max_pixels, limit_name=limit_name,
    )  # fmt: skip


def encode_image(
    rgb: npt.NDArray[np.uint8], encoding: str, *, step: int | None = None, is_bigendian: bool = False
) -> tuple[bytes, int]:
    """HxWx3 RGB -> (data, step) in ``encoding``: the reference conversion for players and tests.

    ``step`` larger than the row length pads each row with zeros. mono16 stores the grey
    value in the top byte (so it decodes back exactly).
    """
    enc = _lookup(encoding)
    h = rgb.shape[0]
    if encoding in _BAYER_TILES:
        (ry, rx), (by, bx) = _BAYER_TILES[encoding]
        pixels = rgb[..., 1].copy()
        pixels[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
        pixels[by::2, bx::2] = rgb[by::2, bx::2, 2]
    elif enc.from_rgb is None:
        pixels = np.ascontiguousarray(rgb)
    else:
        pixels = np.asarray(cv2.cvtColor(np.ascontiguousarray(rgb), enc.from_rgb))
    if enc.depth == 2:
        wide = (pixels.astype(np.uint16) << 8).astype(">u2" if is_bigendian else "<u2")
        row = np.ascontiguousarray(wide).view(np.uint8).reshape(h, -1)
    else:
        row = np.ascontiguousarray(pixels).reshape(h, -1)
    row_bytes = row.shape[1]
    step = row_bytes if step is None else step
    if step < row_bytes:
        raise ValueError(f"step {step} < row length {row_bytes}")
    out = np.zeros((h, step), dtype=np.uint8)
    out[:, :row_bytes] = row
    return out.tobytes(), step


def encode_compressed(rgb: npt.NDArray[np.uint8], format: str = "jpeg", quality: int = 90) -> bytes:
    """HxWx3 RGB -> jpeg or png bytes (what a ``CompressedImage`` carries)."""
    if format not in COMPRESSED_FORMATS:
        raise ValueError(f"format must be one of {COMPRESSED_FORMATS}, not {format!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if format == "jpeg" else []
    ok, buf = cv2.imencode(f".{format}", np.ascontiguousarray(rgb[..., ::-1]), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {format}")
    return buf.tobytes()
