"""The bag job: check the input, find each camera (and its camera_info), read and decode
frames, segment them in batches, and write the outputs (plus the copied originals) into the
staged output bag; undecodable messages are reported, skipped and counted."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.bag.cdr import _Camera, _Chunk, _Copy, _Frame, _OutputWriter, _stamp_ns
from refinenet_ros.bag.options import STORAGES, BagError, BagOptions, BagSummary
from refinenet_ros.bag.output import _check_paths, _staged_output
from refinenet_ros.bag.pipeline import OVERLAP_DEPTH, _Overlap
from refinenet_ros.bag.topics import (
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    OUTPUT_KINDS,
    camera_info_topic,
    output_base,
)
from refinenet_ros.io import bag_errors

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import Connection
    from rosbags.rosbag2 import Writer
    from rosbags.typesys.store import Typestore

    from refinenet_ros.segmenter import Segmenter


log = logging.getLogger("refinenet_ros")

MAX_REPORTED_MALFORMED = 20
"""Malformed messages logged one by one per topic; the rest are only counted."""
COPY_CHUNK_MESSAGES = 256
COPY_CHUNK_BYTES = 32 << 20
"""Copied messages with no frame pending are handed on in chunks of at most this size."""


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
        with bag_errors(BagError, f"cannot write the output bag {path}"):
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
        from refinenet_ros.images.encodings import decode_message

        msg: Any = self.reader.deserialize(raw, conn.msgtype)
        return msg, decode_message(msg, max_pixels=self.options.max_pixels, limit_name="--max-image-pixels")

    def _write(self, writer: Writer) -> None:
        """Read -> segment -> render + write, in log-time order.

        A chunk is every message read up to and including one full batch of frames; the
        output is written chunk by chunk in reading order, so it keeps the input's order
        whether the stages overlap (``options.overlap``: reading and segmenting run on
        two threads ahead of this one) or run one after the other.
        """
        opts, summary, cameras = self.options, self.summary, self.cameras
        out = _OutputWriter(writer, self.typestore, opts)
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

        from refinenet_ros.images.encodings import MalformedImage

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
