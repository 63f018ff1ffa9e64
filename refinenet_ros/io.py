"""Atomic image and file writes: a crash or Ctrl-C never leaves a half-written file.

Everything is written to a temporary file in the destination folder and renamed over the
target (``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.labels import LabelSet


def _process_umask() -> int:
    """The umask, read without changing it (os.umask can only set-and-return)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


_FILE_MODE = 0o666 & ~_process_umask()
"""What ``open()`` would give a new file; mkstemp's 0600 would hide reports from other users."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; rename it over ``path`` only on success.

    The file keeps the permissions of the one it replaces (else the umask's default),
    and the directory is fsynced so the rename itself survives a power cut.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    perms = target.stat().st_mode & 0o777 if target.exists() else _FILE_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them as usual.

    For writes that a library cannot interrupt cleanly: ``torch.save`` stopped half way
    raises its own zip-writer error instead of the interrupt, so a user would see a torch
    traceback instead of "terminated". Writes take a second or less, so the delay is too.
    Only the main thread can hold signals; elsewhere (and under handlers installed outside
    Python) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums}
    if any(h is None for h in previous.values()):
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    for s in signums:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def bag_errors(error: type[RefineNetRosError], what: str) -> Iterator[None]:
    """rosbags' own errors inside the block (a corrupt, truncated, unknown or unwritable bag)
    become ``error`` naming ``what``: the user's bag, not a bug of this package. Each layer
    that reads or writes bags says it in its own error class."""
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError, WriterError

    try:
        yield
    except (AnyReaderError, ReaderError, WriterError) as exc:
        raise error(f"{what}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: not every filesystem lets a directory be fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


class UnreadableImage(RefineNetRosError, ValueError):
    """An input file that is not an image OpenCV can decode (a user error, not a bug)."""


MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image file any command decodes (= the node's and the bag tool's default frame
limit): a 2.6 MB PNG can claim 30000x30000 pixels, 2.7 GB decoded and 12 GB at peak."""


def check_image_file_size(
    path: str | os.PathLike[str], data: bytes, max_pixels: int = MAX_IMAGE_PIXELS
) -> None:
    """Refuse an image file whose header claims more than ``max_pixels``, before decoding it."""
    from refinenet_ros.images.encodings import image_header_size

    size = image_header_size(data)
    if size is not None and max_pixels > 0 and size[0] * size[1] > max_pixels:
        raise UnreadableImage(
            f"{path}: {size[0]}x{size[1]} = {size[0] * size[1]} pixels, above the limit of {max_pixels} "
            "(a decompression bomb, or a picture to downscale first); refused before decoding"
        )


def read_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> npt.NDArray[np.uint8]:
    """Any image file -> HxWx3 uint8 RGB (greyscale and alpha are converted).

    The one image reader of ``segment``, ``evaluate``, ``train``, ``label`` and calibration:
    unreadable files and files above ``max_pixels`` (0: no limit) raise
    :class:`UnreadableImage` naming the file, before anything large is allocated.
    """
    import cv2

    try:
        data = Path(path).read_bytes()  # OSError (permission, folder, missing) says what it is
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot be read ({exc.strerror or exc})") from None
    check_image_file_size(path, data, max_pixels)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error as exc:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) on formats we cannot size
        raise UnreadableImage(f"{path}: OpenCV refuses to decode it ({one_line_cv(exc)})") from None
    if bgr is None:
        raise UnreadableImage(f"{path}: not an image OpenCV can read")
    return np.ascontiguousarray(bgr[..., ::-1])


def one_line_cv(exc: Exception) -> str:
    """The reason of a ``cv2.error`` without its multi-line source location."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def write_rgb_png(path: str | os.PathLike[str], rgb: npt.NDArray[np.uint8]) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())


def write_mono_png(path: str | os.PathLike[str], mono: npt.NDArray[np.uint8 | np.uint16]) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", mono)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())


def write_label_png(
    path: str | os.PathLike[str], labels: npt.NDArray[np.unsignedinteger], label_set: LabelSet
) -> None:
    """Palette-mode PNG (class ids as pixel values, shown in colour) for uint8 labels;
    16-bit greyscale PNG above 255 classes, where palettes cannot reach."""
    if labels.dtype != np.uint8:
        write_mono_png(path, labels.astype(np.uint16, copy=False))
        return
    import io

    from PIL import Image

    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    img.putpalette(label_set.lut().reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_label_png(path: str | os.PathLike[str]) -> npt.NDArray[np.unsignedinteger]:
    """Class ids from a label PNG (palette, 8-bit or 16-bit greyscale) without colour mapping."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            check_image_file_size(path, f.read(64 * 1024))
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I;16", "I;16B", "I"):
            raise ValueError(f"{path}: label PNG must be palette or greyscale, not mode {img.mode}")
        arr = np.array(img)
    return arr.astype(np.uint16) if arr.dtype not in (np.uint8, np.uint16) else arr
