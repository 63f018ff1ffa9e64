"""Segment the camera topics of a recorded rosbag2 and write them back as new topics
(``refinenet-ros bag``, :mod:`refinenet_ros.cli.bag`): staged output renamed into place at the
end, undecodable messages reported, skipped and counted."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from refinenet_ros.camera_info import scale_camera_info

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import Connection
    from rosbags.rosbag2 import Writer
    from rosbags.typesys.store import Typestore

    from refinenet_ros.segmenter import SegmentationResult, Segmenter

log = logging.getLogger("refinenet_ros")

OUTPUT_KINDS: tuple[str, ...] = ("labels", "color", "overlay", "confidence")
STORAGES: tuple[str, ...] = ("mcap", "sqlite3")
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DEFAULT_MAX_PIXELS = 8192 * 8192
"""= ``encodings.DEFAULT_MAX_PIXELS`` (kept here so ``--help`` needs no OpenCV; a test pins them)."""
MAX_REPORTED_MALFORMED = 20
"""Malformed messages logged one by one per topic; the rest are only counted."""
OVERLAP_DEPTH = 1
"""Chunks queued between stages: with one being read, one segmented and one written, at
most five batches are in memory, and one is enough to keep every stage busy."""
COPY_CHUNK_MESSAGES = 256
COPY_CHUNK_BYTES = 32 << 20
"""Copied messages with no frame pending are handed on in chunks of at most this size."""
POLL_S = 0.1
"""How often a blocked stage checks whether the run was stopped (error, Ctrl-C)."""


class BagError(ValueError):
    """A user error about the bags (missing topic, existing output); the text says the fix."""


@dataclass(frozen=True)
class BagOptions:
    """What to read and write; the model and backend live in the Segmenter."""

    image_topics: tuple[str, ...]
    outputs: tuple[str, ...] = OUTPUT_KINDS
    copy: bool = True
    storage: str = "mcap"
    force: bool = False
    batch: int = 4
    alpha: float = 0.5
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Frames above this many pixels are skipped as malformed before they are decoded
    (a 775 KB PNG can claim 16000x16000 and cost GBs)."""
    overlap: bool = True
    """Read + decode and segment on two threads while this one renders and writes
    (``refinenet-ros bag`` decides with :func:`overlap_helps`)."""


@dataclass
class BagSummary:
    """What a run did; ``fps`` counts segmented frames per wall-clock second."""

    output: Path
    frames: int = 0
    malformed: int = 0
    seconds: float = 0.0
    copied: int = 0
    written: int = 0
    bag_seconds: float = 0.0
    frames_per_topic: dict[str, int] = field(default_factory=dict)
    malformed_per_topic: dict[str, int] = field(default_factory=dict)
    output_topics: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        """Recorded duration / processing time: > 1 means faster than real time."""
        return self.bag_seconds / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        lines = [
            f"{self.frames} frames segmented in {self.seconds:.1f} s ({self.fps:.2f} frames/s, "
            f"{self.realtime_factor:.2f}x real time), {self.malformed} malformed skipped, "
            f"{self.copied} messages copied, {self.written} written -> {self.output}"
        ]
        for topic, n in self.frames_per_topic.items():
            bad = self.malformed_per_topic.get(topic, 0)
            lines.append(f"  {topic}: {n} frames" + (f", {bad} malformed" if bad else ""))
        return "\n".join(lines)


def overlap_helps(device: str, threads: int, cpus: int | None = None) -> bool:
    """Whether overlapping bag I/O with inference can speed a run up.

    It can when inference leaves CPU time free: an accelerator, or a CPU backend limited to
    fewer threads than there are CPUs. A CPU backend on every core (``threads`` 0 = the
    library's default) already keeps the machine busy: measured on 2 cores, overlapping
    then cost 5 % (threads oversubscribe ONNX Runtime's pool), while with ``--threads 1``
    it took the bag tool from 0.84x to 0.93x of backend-only (docs/benchmarks.md).
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return not device.startswith("cpu") or 0 < threads < cpus


def output_base(topic: str, msgtype: str) -> str:
    """Topic prefix for a camera's outputs: ``/cam/image_raw/compressed`` -> ``/cam/image_raw``."""
    if msgtype == COMPRESSED_TYPE and topic.endswith("/compressed"):
        return topic[: -len("/compressed")]
    return topic


def camera_info_topic(base: str) -> str:
    """The camera_info beside an image topic: ``/cam/image_raw`` -> ``/cam/camera_info``."""
    parent = base.rsplit("/", 1)[0]
    return f"{parent}/camera_info" if parent else "/camera_info"


# ---------------------------------------------------------------------------------- output


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


_ENCODING_LAYOUT: dict[str, tuple[int, int]] = {"rgb8": (3, 1), "mono8": (1, 1), "mono16": (1, 2)}
"""Output encodings: (channels, bytes per channel)."""


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

    def __init__(self, writer: Writer, typestore: Typestore, options: BagOptions, label_dtype: Any) -> None:
        self.writer = writer
        self.ts = typestore
        self.options = options
        self.mono16 = np.dtype(label_dtype) == np.uint16
        t = typestore.types
        self.Image = t[IMAGE_TYPE]
        self.CameraInfo = t[CAMERA_INFO_TYPE]
        self.RegionOfInterest = t["sensor_msgs/msg/RegionOfInterest"]
        self.Header = t["std_msgs/msg/Header"]
        self.Time = t["builtin_interfaces/msg/Time"]
        self.written = 0
        self._empty = np.zeros(0, dtype=np.uint8)
        self._buffers: dict[tuple[str, str], bytearray] = {}
        self._scratch: dict[str, npt.NDArray[np.uint8]] = {}

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
        channels, itemsize = _ENCODING_LAYOUT[encoding]
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
        header = self.header(frame.header)
        conns = cam.connections
        ts = frame.timestamp
        outputs = self.options.outputs
        h, w = result.size
        if "labels" in outputs:
            buf, pixels = self.image_buffer(
                (cam.topic, "labels"), header, h, w, "mono16" if self.mono16 else "mono8"
            )
            pixels[...] = result.labels
            self.write_buffer(conns["labels"], ts, buf)
            info = _matching_info(cam, frame)
            if info is not None and "camera_info" in conns:
                msg = self.camera_info(header, info, h, w, result.input_size)
                self.write(conns["camera_info"], ts, msg, CAMERA_INFO_TYPE)
        color: npt.NDArray[np.uint8] | None = None
        if "color" in outputs:
            buf, color = self.image_buffer((cam.topic, "color"), header, h, w, "rgb8")
            result.color(out=color)
            self.write_buffer(conns["color"], ts, buf)  # copied: the pixels stay for the overlay
        if "overlay" in outputs:
            if color is None:
                color = result.color(out=self._scratch_rgb(cam.topic, h, w))
            buf, pixels = self.image_buffer((cam.topic, "overlay"), header, h, w, "rgb8")
            result.overlay(frame.rgb, self.options.alpha, out=pixels, color=color)
            self.write_buffer(conns["overlay"], ts, buf)
        if "confidence" in outputs:
            buf, pixels = self.image_buffer((cam.topic, "confidence"), header, h, w, "mono8")
            result.confidence_u8(out=pixels)
            self.write_buffer(conns["confidence"], ts, buf)

    def _scratch_rgb(self, topic: str, height: int, width: int) -> npt.NDArray[np.uint8]:
        """The colour image for an overlay when ``color`` itself is not written."""
        arr = self._scratch.get(topic)
        if arr is None or arr.shape != (height, width, 3):
            arr = self._scratch[topic] = np.empty((height, width, 3), dtype=np.uint8)
        return arr

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


# ---------------------------------------------------------------------------------- overlap

T = TypeVar("T")


@dataclass
class _Failed:
    """A stage's exception, passed downstream in order and raised in the consumer."""

    error: BaseException


_END = object()


class _Overlap(Generic[T]):
    """``map(stage, source())`` with ``source`` and ``stage`` each on its own thread.

    The consumer iterates in its own thread (the bag writer: sqlite3 connections must
    stay on the thread that made them, and Ctrl-C arrives there). Bounded queues keep
    memory bounded and items in order. An exception in either thread travels down the
    queues as an item and is raised by the consumer at that point of the stream; leaving
    the ``with`` block early (consumer error, Ctrl-C) stops both threads and joins them,
    so nothing touches the reader or the segmenter after the run returns.
    ONNX Runtime, torch, OpenCV and file writes release the GIL, so the stages overlap.
    """

    def __init__(self, source: Callable[[], Iterator[T]], stage: Callable[[T], T], *, depth: int = 1) -> None:
        self._stop = threading.Event()
        self._read_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._out_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._threads = [
            threading.Thread(target=self._produce, args=(source, self._read_q), name="bag-read", daemon=True),
            threading.Thread(
                target=self._produce,
                args=(lambda: map(stage, self._drain(self._read_q)), self._out_q),
                name="bag-segment",
                daemon=True,
            ),
        ]

    def __enter__(self) -> _Overlap[T]:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def __iter__(self) -> Iterator[T]:
        return self._drain(self._out_q)

    def _produce(self, make: Callable[[], Iterator[Any]], q: queue.Queue[Any]) -> None:
        items: Iterator[Any] | None = None
        try:
            items = make()
            for item in items:
                if not self._put(q, item):
                    return
            self._put(q, _END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(q, _Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # finish the reader's generator on this thread

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self, q: queue.Queue[Any]) -> Iterator[Any]:
        while True:
            try:
                item = q.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item


# ---------------------------------------------------------------------------------- run


PARTIAL_INFIX = ".partial-"
LOCK_NAME = ".lock"
"""Each run's hidden stage folder holds this file, flock-ed for the run's lifetime: the
kernel drops the lock when the process dies (even by SIGKILL), so a later run can tell a
live run's folder (lock held) from debris (lock free) without guessing from ages."""
_OUR_TOPIC = re.compile(r"^\s*name:\s*\S*/(?:labels|color|overlay|confidence)\s*$", re.M)


def _partials(output: Path) -> list[Path]:
    """Stage folders of runs writing ``output`` (live or dead), oldest name first."""
    prefix = f".{output.name}{PARTIAL_INFIX}"
    with contextlib.suppress(OSError):
        return sorted(p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
    return []


def _lock_state(stage: Path) -> str:
    """``"live"`` (a running process holds the lock), ``"dead"`` (lock free) or ``"unknown"``
    (no lock file: an older version's folder, or a run in its first microsecond)."""
    try:
        fd = os.open(stage / LOCK_NAME, os.O_RDWR)
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "live"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)  # closing also releases a lock we just took
    return "dead"


def _remove_stale_partials(output: Path) -> None:
    """Remove stage folders of interrupted runs (SIGKILL, power cut) of this output, saying so;
    name the ones that cannot be proven dead instead of deleting them."""
    unknown: list[str] = []
    for stage in _partials(output):
        state = _lock_state(stage)
        if state == "dead":
            shutil.rmtree(stage, ignore_errors=True)
            log.warning("removed %s, left behind by an interrupted run", stage)
        elif state == "unknown":
            unknown.append(str(stage))
    if unknown:
        log.warning(
            "left in place (not provably abandoned): %s; remove them if no other run is writing %s",
            ", ".join(unknown), output,
        )  # fmt: skip


def _not_our_bag(path: Path) -> str | None:
    """Why ``path`` is not a rosbag2 folder this tool could have written (None when it is).

    ``--force`` replaces only such a folder: ``metadata.yaml`` plus ``NAME.mcap`` /
    ``NAME.db3`` (and sqlite's side files) and at least one of our output topics. A user's
    recording, a project folder or a file is never ours to delete.
    """
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is a file, not a bag folder"
    names = sorted(os.listdir(path))
    if "metadata.yaml" not in names:
        return "it has no metadata.yaml, so it is not a rosbag2 folder"
    data_file = re.compile(rf"{re.escape(path.name)}\.(?:mcap|db3)(?:-shm|-wal|-journal)?")
    others = [n for n in names if n != "metadata.yaml" and not data_file.fullmatch(n)]
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        return f"it holds {', '.join(others[:3])}{more}, which this tool never writes"
    try:
        metadata = (path / "metadata.yaml").read_text(errors="replace")
    except OSError as exc:
        return f"its metadata.yaml cannot be read ({exc.strerror})"
    if not _OUR_TOPIC.search(metadata):
        return "it has no labels/color/overlay/confidence topic, so it is not an output of this tool"
    return None


@contextlib.contextmanager
def _staged_output(output: Path, force: bool) -> Iterator[Path]:
    """Yield a path inside a hidden stage folder beside ``output``; move it into place on success.

    The bag folder keeps OUTPUT's name inside the stage folder so its files are named
    ``OUTPUT.mcap``, not after the stage folder. The stage folder is removed on any exit
    this process lives through (error, Ctrl-C, SIGTERM via the CLI) and is locked while the
    run lives, so the next run removes it after a SIGKILL. An existing OUTPUT (only with
    ``force``, and only our own bag) is renamed aside once the new bag is complete, then dropped.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(output)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}{PARTIAL_INFIX}", dir=output.parent))
    lock_fd = -1
    try:
        lock_fd = os.open(stage / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        yield stage / output.name
        _install(stage / output.name, output, force)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if lock_fd >= 0:
            os.close(lock_fd)


def _install(new: Path, output: Path, force: bool) -> None:
    """Move the finished bag ``new`` to ``output``; what happens to our result is said truthfully."""
    if output.exists() or output.is_symlink():
        discarded = "this run's result was discarded"
        if not force:  # another run (or the user) created it while we were writing
            raise BagError(
                f"output {output} was created by someone else while this run was writing; it is "
                f"left untouched and {discarded}: run again with --force to replace it, or choose "
                "another OUTPUT"
            )
        problem = _not_our_bag(output)
        if problem:
            raise BagError(f"output {output} appeared while this run was writing and {problem}; "
                           f"it is left untouched and {discarded}")  # fmt: skip
        os.replace(output, new.parent / ".replaced")  # dropped with the stage folder
    os.replace(new, output)


def _check_paths(input_bag: Path, output: Path, force: bool) -> None:
    """Refuse, before anything is read or written, every output that could cost user data."""
    if not input_bag.exists():
        raise BagError(f"input bag {input_bag} does not exist")
    inp, out = input_bag.resolve(), output.resolve()
    if out == inp:
        raise BagError(f"output {output} is the input bag; choose another output path")
    if inp.is_relative_to(out):
        raise BagError(f"output {output} contains the input bag {input_bag}; choose another output path")
    if out.is_relative_to(inp):
        raise BagError(f"output {output} is inside the input bag {input_bag}; choose a path outside it")
    live = [p for p in _partials(output) if _lock_state(p) == "live"]
    if live:
        raise BagError(
            f"another refinenet-ros bag run is writing {output} right now (in {live[0]}); "
            "wait for it to finish or choose another OUTPUT"
        )
    if output.exists() or output.is_symlink():
        if not force:
            raise BagError(f"output {output} exists; pass --force to replace it")
        problem = _not_our_bag(output)
        if problem:
            raise BagError(
                f"output {output} exists and {problem}; --force replaces only a bag folder this "
                "tool wrote: choose another OUTPUT (or move that one away yourself)"
            )
    parent = next((p for p in output.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BagError(f"output {output}: {parent} is a file, not a folder")


def run_bag(
    input_bag: str | os.PathLike[str],
    output: str | os.PathLike[str],
    segmenter: Segmenter,
    options: BagOptions,
    *,
    on_frame: Callable[[int], None] | None = None,
) -> BagSummary:
    """Segment ``options.image_topics`` of ``input_bag`` into a new bag at ``output``.

    Raises :class:`BagError` for user errors before anything is written. ``on_frame`` is
    called with the running frame count after each batch (benchmarks, custom progress).
    """
    from rosbags.typesys import Stores, get_typestore

    input_bag, output = Path(input_bag), Path(output)
    _check_options(options)
    _check_paths(input_bag, output, options.force)
    typestore = get_typestore(Stores.LATEST)
    reader = _open_input(input_bag, typestore)
    try:
        job = _BagJob(reader, typestore, segmenter, options, BagSummary(output=output), on_frame, input_bag)
        job.cameras = find_cameras(job.by_topic, options, input_bag)
        job.read_camera_infos()
        with _staged_output(output, options.force) as stage_path:
            job.write(stage_path)
    finally:
        reader.close()
    return job.summary


def check_input(
    input_bag: str | os.PathLike[str], output: str | os.PathLike[str], options: BagOptions
) -> None:
    """Every check that needs no model: options, paths, and the input bag's topics and types.

    The CLI calls it before loading the model, so a mistyped topic or an empty bag costs a
    second, not a model export, and changes nothing on disk.
    """
    from rosbags.typesys import Stores, get_typestore

    input_bag, output = Path(input_bag), Path(output)
    _check_options(options)
    _check_paths(input_bag, output, options.force)
    reader = _open_input(input_bag, get_typestore(Stores.LATEST))
    try:
        by_topic: dict[str, list[Connection]] = {}
        for c in reader.connections:
            by_topic.setdefault(c.topic, []).append(c)
        find_cameras(by_topic, options, input_bag)
    finally:
        reader.close()


def _check_options(options: BagOptions) -> None:
    if not options.image_topics:
        raise BagError("give at least one --image-topic")
    if options.storage not in STORAGES:
        raise BagError(f"--storage must be one of {', '.join(STORAGES)}, not {options.storage!r}")
    unknown = [o for o in options.outputs if o not in OUTPUT_KINDS]
    if unknown or not options.outputs:
        raise BagError(
            f"--outputs takes a comma list of {','.join(OUTPUT_KINDS)}; got {unknown or 'nothing'}"
        )
    if options.max_pixels < 1:
        raise BagError(f"--max-image-pixels {options.max_pixels}: must be at least 1")


def _open_input(input_bag: Path, typestore: Typestore) -> AnyReader:
    """Open a ROS 2 bag for reading; anything wrong with the file is the user's bag, not a bug."""
    from rosbags.highlevel import AnyReader

    try:
        reader = AnyReader([input_bag], default_typestore=typestore)
        reader.open()
    except Exception as exc:  # AnyReaderError, OSError, or whatever a corrupt file makes a parser raise
        raise BagError(f"cannot open {input_bag} as a rosbag2: {type(exc).__name__}: {exc}") from None
    if not reader.is2:
        reader.close()
        raise BagError(
            f"{input_bag} is a ROS 1 bag; convert it first: rosbags-convert --src {input_bag} --dst DIR"
        )
    return reader


def find_cameras(
    by_topic: dict[str, list[Connection]], options: BagOptions, input_bag: Path
) -> dict[str, _Camera]:
    """The cameras to segment, each checked: present, an image type, and not empty."""
    cameras: dict[str, _Camera] = {}
    for topic in options.image_topics:
        conns = by_topic.get(topic)
        if not conns:
            images = sorted(t for t, cs in by_topic.items() if cs[0].msgtype in (IMAGE_TYPE, COMPRESSED_TYPE))
            raise BagError(
                f"topic {topic} is not in {input_bag}; image topics there: {', '.join(images) or 'none'}"
            )
        if conns[0].msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
            raise BagError(f"topic {topic} has type {conns[0].msgtype}, not Image or CompressedImage")
        if sum(c.msgcount for c in conns) == 0:
            raise BagError(f"topic {topic} has no messages in {input_bag}; nothing to segment")
        base = output_base(topic, conns[0].msgtype)
        info = camera_info_topic(base)
        info_ok = info in by_topic and by_topic[info][0].msgtype == CAMERA_INFO_TYPE
        cameras[topic] = _Camera(topic, base, info if info_ok else None)
    return cameras


class _BagJob:
    """One run: the reader, the cameras found in it, and the ordered write of the output."""

    def __init__(
        self,
        reader: AnyReader,
        typestore: Typestore,
        segmenter: Segmenter,
        options: BagOptions,
        summary: BagSummary,
        on_frame: Callable[[int], None] | None,
        input_bag: Path,
    ) -> None:
        self.reader = reader
        self.input_bag = input_bag
        self.typestore = typestore
        self.segmenter = segmenter
        self.options = options
        self.summary = summary
        self.on_frame = on_frame
        self.by_topic: dict[str, list[Connection]] = {}
        for c in reader.connections:
            self.by_topic.setdefault(c.topic, []).append(c)
        self.cameras: dict[str, _Camera] = {}

    def read_camera_infos(self) -> None:
        """camera_info is tiny: read it up front so every frame finds the info with its stamp,
        even when the driver recorded it just after the image."""
        if "labels" not in self.options.outputs:
            return
        info_topics = {c.info_topic for c in self.cameras.values() if c.info_topic}
        conns = [c for t in info_topics for c in self.by_topic[t]]
        if not conns:
            return
        bad: dict[str, int] = {}
        for conn, _, raw in self._messages(conns):
            try:
                msg: Any = self.reader.deserialize(raw, conn.msgtype)
                stamp = _stamp_ns(msg.header)
            except Exception as exc:  # a broken camera_info is reported and not used
                n = bad[conn.topic] = bad.get(conn.topic, 0) + 1
                if n <= MAX_REPORTED_MALFORMED:
                    log.warning("%s: undecodable camera_info #%d skipped: %s", conn.topic, n, exc)
                if n == MAX_REPORTED_MALFORMED:
                    log.warning(
                        "%s: further undecodable camera_info messages are skipped silently", conn.topic
                    )
                continue
            for cam in self.cameras.values():
                if cam.info_topic == conn.topic:
                    cam.infos.append((stamp, msg))
                    cam.info_by_stamp[stamp] = msg
        for cam in self.cameras.values():
            cam.infos.sort(key=lambda item: item[0])

    def _add_output_connections(self, writer: Writer) -> None:
        for cam in self.cameras.values():
            ext = self.by_topic[cam.topic][0].ext
            qos = list(getattr(ext, "offered_qos_profiles", []))
            for kind in self.options.outputs:
                cam.connections[kind] = writer.add_connection(
                    f"{cam.base}/{kind}", IMAGE_TYPE, typestore=self.typestore, offered_qos_profiles=qos
                )
            if cam.info_topic and "labels" in self.options.outputs:
                cam.connections["camera_info"] = writer.add_connection(
                    f"{cam.base}/labels/camera_info",
                    CAMERA_INFO_TYPE,
                    typestore=self.typestore,
                    offered_qos_profiles=qos,
                )
        self.summary.output_topics = sorted(
            c.topic for cam in self.cameras.values() for c in cam.connections.values()
        )

    def write(self, path: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if self.options.storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        writer.open()
        try:
            self._write(writer)
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()
            raise
        writer.close()

    def _messages(self, conns: Sequence[Connection]) -> Iterator[tuple[Connection, int, Any]]:
        """The reader's messages; a corrupt or truncated file is a :class:`BagError` naming the
        bag, not a parser's OverflowError or struct.error surfacing as a traceback."""
        items = self.reader.messages(connections=conns)
        n = 0
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except OSError:
                raise  # the disk, not the data: reported as such by the CLI
            except Exception as exc:
                raise BagError(
                    f"cannot read {self.input_bag} after {n} messages ({type(exc).__name__}: {exc}); "
                    "the bag is corrupt or truncated: re-record it or repair it (e.g. mcap recover)"
                ) from None
            n += 1
            yield item

    def _decode(self, conn: Connection, raw: Any) -> tuple[Any, npt.NDArray[np.uint8]]:
        from refinenet_ros.ros.encodings import decode_compressed, decode_image

        msg: Any = self.reader.deserialize(raw, conn.msgtype)
        limit = self.options.max_pixels
        if conn.msgtype == COMPRESSED_TYPE:
            return msg, decode_compressed(
                msg.data, msg.format, max_pixels=limit, limit_name="--max-image-pixels"
            )
        rgb = decode_image(
            msg.data, msg.encoding, msg.width, msg.height, msg.step, bool(msg.is_bigendian),
            max_pixels=limit, limit_name="--max-image-pixels",
        )  # fmt: skip
        return msg, rgb

    def _write(self, writer: Writer) -> None:
        """Read -> segment -> render + write, in log-time order.

        A chunk is every message read up to and including one full batch of frames; the
        output is written chunk by chunk in reading order, so it keeps the input's order
        whether the stages overlap (``options.overlap``: reading and segmenting run on
        two threads ahead of this one) or run one after the other.
        """
        opts, summary, cameras = self.options, self.summary, self.cameras
        out = _OutputWriter(writer, self.typestore, opts, self.segmenter.label_set.label_dtype)
        copy_map = _copy_connections(writer, self.reader.connections, self.typestore) if opts.copy else {}
        self._add_output_connections(writer)
        cam_conns = [c for t in cameras for c in self.by_topic[t]]
        read_conns = self.reader.connections if opts.copy else cam_conns
        summary.bag_seconds = self.reader.duration / 1e9 if self.reader.message_count else 0.0
        progress = _progress(sum(c.msgcount for c in cam_conns), opts.progress)
        index: dict[str, int] = {}
        t0 = time.perf_counter()

        def read() -> Iterator[_Chunk]:
            return self._read_chunks(read_conns, copy_map, index)

        try:
            with contextlib.ExitStack() as stack:
                chunks: Iterator[_Chunk]
                if opts.overlap:
                    chunks = iter(stack.enter_context(_Overlap(read, self._segment, depth=OVERLAP_DEPTH)))
                else:
                    chunks = map(self._segment, read())
                for chunk in chunks:
                    self._write_chunk(writer, out, chunk, progress)
        finally:
            progress.close()
        summary.seconds = time.perf_counter() - t0
        summary.written = out.written
        for topic in cameras:
            seen = index.get(topic, -1) + 1
            summary.frames_per_topic[topic] = seen - summary.malformed_per_topic.get(topic, 0)

    def _read_chunks(
        self, read_conns: Sequence[Connection], copy_map: dict[int, Connection], index: dict[str, int]
    ) -> Iterator[_Chunk]:
        """Stage 1: read and decode. Frames wait for a full batch and everything read after
        them waits with them; copies with no frame pending go out in bounded chunks."""
        from rosbags.highlevel import AnyReaderError

        from refinenet_ros.ros.encodings import MalformedImage

        opts, cameras = self.options, self.cameras
        batch = max(1, opts.batch)
        chunk = _Chunk()
        for conn, timestamp, raw in self._messages(read_conns):
            if opts.copy:
                chunk.items.append(_Copy(copy_map[conn.id], timestamp, raw))
                chunk.copy_bytes += len(raw)
            if conn.topic not in cameras:
                if not chunk.frames and (
                    len(chunk.items) >= COPY_CHUNK_MESSAGES or chunk.copy_bytes >= COPY_CHUNK_BYTES
                ):
                    yield chunk
                    chunk = _Chunk()
                continue
            i = index[conn.topic] = index.get(conn.topic, -1) + 1
            try:
                msg, rgb = self._decode(conn, raw)
            except (MalformedImage, AnyReaderError, ValueError) as exc:
                _report_malformed(self.summary, conn.topic, i, timestamp, exc)
                chunk.malformed += 1
                continue
            frame = _Frame(conn.topic, i, timestamp, msg.header, rgb)
            chunk.items.append(frame)
            chunk.frames.append(frame)
            if len(chunk.frames) >= batch:
                yield chunk
                chunk = _Chunk()
        if chunk.items or chunk.malformed:
            yield chunk

    def _segment(self, chunk: _Chunk) -> _Chunk:
        """Stage 2: one batched Segmenter call per chunk (labels + confidence at input size)."""
        if chunk.frames:
            chunk.results = self.segmenter.segment_batch([f.rgb for f in chunk.frames])
        return chunk

    def _write_chunk(self, writer: Writer, out: _OutputWriter, chunk: _Chunk, progress: Any) -> None:
        """Stage 3 (this thread, which owns the writer): render + serialise + write in order."""
        summary = self.summary
        results = iter(chunk.results)
        for item in chunk.items:
            if isinstance(item, _Copy):
                writer.write(item.connection, item.timestamp, item.data)
                summary.copied += 1
            else:
                out.frame(self.cameras[item.topic], item, next(results))
        if chunk.malformed:
            progress.update(chunk.malformed)
            progress.set_postfix(malformed=summary.malformed, refresh=False)
        if chunk.frames:
            summary.frames += len(chunk.frames)
            progress.update(len(chunk.frames))
            if self.on_frame is not None:
                self.on_frame(summary.frames)


def _copy_connections(
    writer: Writer, connections: Sequence[Connection], typestore: Typestore
) -> dict[int, Connection]:
    """One output connection per input (topic, type), keeping its definition and QoS."""
    from rosbags.interfaces import ConnectionExtRosbag2

    made: dict[tuple[str, str], Connection] = {}
    mapping: dict[int, Connection] = {}
    for c in connections:
        key = (c.topic, c.msgtype)
        if key not in made:
            ext = c.ext if isinstance(c.ext, ConnectionExtRosbag2) else None
            msgdef = c.msgdef.data if c.msgdef and c.msgdef.data else None
            digest = c.digest if msgdef and c.digest and c.digest.startswith("RIHS01_") else None
            made[key] = writer.add_connection(
                c.topic,
                c.msgtype,
                typestore=typestore if digest is None else None,
                msgdef=msgdef if digest else None,
                rihs01=digest,
                serialization_format=ext.serialization_format if ext else "cdr",
                offered_qos_profiles=list(ext.offered_qos_profiles) if ext else [],
            )
        mapping[c.id] = made[key]
    return mapping


def _report_malformed(summary: BagSummary, topic: str, index: int, timestamp: int, exc: Exception) -> None:
    summary.malformed += 1
    n = summary.malformed_per_topic[topic] = summary.malformed_per_topic.get(topic, 0) + 1
    if n <= MAX_REPORTED_MALFORMED:
        log.warning("%s message #%d (log time %d ns): %s; skipped", topic, index, timestamp, exc)
    if n == MAX_REPORTED_MALFORMED:
        log.warning("%s: further malformed messages are only counted in the summary", topic)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="segmenting", dynamic_ncols=True, smoothing=0.1)


# ---------------------------------------------------------------------------------- sample bags


def write_sample_bag(
    path: str | os.PathLike[str],
    *,
    frames: int = 10,
    size: tuple[int, int] = (240, 320),
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    compressed: bool = False,
    camera_info: bool = True,
    storage: str = "mcap",
    rate_hz: float = 10.0,
    frame_id: str = "camera",
) -> Path:
    """Write a small camera bag from the bundled samples (demos, tests, benchmarks).

    Images go to ``topic`` (or ``topic + '/compressed'`` as JPEG) at ``rate_hz`` with
    stamps equal to log times; ``camera_info`` adds ``<parent>/camera_info``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from refinenet_ros.ros.encodings import encode_compressed, encode_image
    from refinenet_ros.samples import sample_sequence

    ts = get_typestore(Stores.LATEST)
    t = ts.types
    h, w = size
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    path = Path(path)
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
        img_topic = f"{topic}/compressed" if compressed else topic
        img_conn = writer.add_connection(
            img_topic, COMPRESSED_TYPE if compressed else IMAGE_TYPE, typestore=ts
        )
        info_conn = (
            writer.add_connection(camera_info_topic(topic), CAMERA_INFO_TYPE, typestore=ts)
            if camera_info
            else None
        )
        fx = 0.8 * w
        for i, rgb in enumerate(sample_sequence(frames, size)):
            stamp = int(1_700_000_000 * 1e9 + i * 1e9 / rate_hz)
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](
                    sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000
                ),
                frame_id=frame_id,
            )
            if compressed:
                msg: Any = t[COMPRESSED_TYPE](
                    header=header,
                    format="rgb8; jpeg compressed bgr8",
                    data=np.frombuffer(encode_compressed(rgb), np.uint8),
                )
                writer.write(img_conn, stamp, ts.serialize_cdr(msg, COMPRESSED_TYPE))
            else:
                data, step = encode_image(rgb, encoding)
                msg = t[IMAGE_TYPE](
                    header=header,
                    height=h,
                    width=w,
                    encoding=encoding,
                    is_bigendian=0,
                    step=step,
                    data=np.frombuffer(data, np.uint8),
                )
                writer.write(img_conn, stamp, ts.serialize_cdr(msg, IMAGE_TYPE))
            if info_conn is not None:
                info = t[CAMERA_INFO_TYPE](
                    header=header,
                    height=h,
                    width=w,
                    distortion_model="plumb_bob",
                    d=np.zeros(5),
                    k=np.array([fx, 0, w / 2, 0, fx, h / 2, 0, 0, 1], dtype=np.float64),
                    r=np.eye(3).reshape(-1),
                    p=np.array([fx, 0, w / 2, 0, 0, fx, h / 2, 0, 0, 0, 1, 0], dtype=np.float64),
                    binning_x=0,
                    binning_y=0,
                    roi=t["sensor_msgs/msg/RegionOfInterest"](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                    ),
                )
                writer.write(info_conn, stamp + 1000, ts.serialize_cdr(info, CAMERA_INFO_TYPE))
    return path
