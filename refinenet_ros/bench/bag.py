"""``bench bag``: the bag tool's frames/s against backend-only frames/s on the same frames.

The target is bag tool >= 0.9x backend-only: reading, decoding, pre/postprocessing,
colourising and writing four output topics should hide behind inference. Three figures
on one backend object (built once, so no figure pays its warm-up):

- backend-only: ``Backend.infer`` on the frames already at network size, in ``--batch``
  batches (what the accelerator alone could sustain);
- segmenter: ``Segmenter.segment_batch`` + colour, overlay and confidence rendering on
  decoded camera frames (everything but bag I/O);
- bag tool: ``bag.run_bag`` on the bag (everything), its own frames/s, with its stages
  overlapped (reading and segmenting on two threads ahead of rendering and writing) and
  in series; the bag tool's own figure is the one ``--overlap auto`` picks here.

The paths run interleaved for ``ROUNDS`` rounds (backend-only once more at the end) and
each figure is its fastest pass: on a shared machine that is the one closest to
uncontended, and a load change during the run hits every path alike instead of biasing
one ratio. Every pass is in the JSON (``passes_fps``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.base import BackendOptions
from refinenet_ros.bench import BenchError
from refinenet_ros.bench.report import model_json
from refinenet_ros.config import ModelConfig
from refinenet_ros.io import bag_errors
from refinenet_ros.stats import format_table

log = logging.getLogger("refinenet_ros")

GENERATED_TOPIC = "/camera/image_raw"
ROUNDS = 2


@dataclass(frozen=True)
class BagBenchSettings:
    """One backend on one bag: a given one (``bag`` + ``topic``) or a generated one."""

    model_cfg: ModelConfig
    backend: BackendOptions
    """``max_batch`` is the bag tool's ``--batch``."""
    bag: str | None = None
    """None: generate ``frames`` frames of ``image_size`` with the sample-bag writer."""
    topic: str | None = None
    """The image topic of a given bag (required with ``bag``)."""
    image_size: tuple[int, int] = (480, 640)  # (H, W) of the generated frames
    frames: int = 30
    storage: str = "mcap"
    keep: str | None = None
    """Keep the generated input and the output bag in this folder (None: a temporary one)."""

    @property
    def batch(self) -> int:
        return max(1, self.backend.max_batch)

    def to_json(self) -> dict[str, Any]:
        return {
            **model_json(self.model_cfg, self.backend, self.batch),
            "threads": self.backend.threads,
            "storage": self.storage,
        }


def read_frames(bag: Path, topic: str) -> list[npt.NDArray[np.uint8]]:
    """Every decodable frame of ``topic`` (Image or CompressedImage) as RGB."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from refinenet_ros.images.encodings import MalformedImage, decode_compressed, decode_image

    frames: list[npt.NDArray[np.uint8]] = []
    with (
        bag_errors(BenchError, f"bag {bag}"),
        AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader,
    ):
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            topics = sorted({c.topic for c in reader.connections})
            raise BenchError(f"{bag}: no topic {topic!r}; its topics: {', '.join(topics)}")
        for conn, _ts, raw in reader.messages(connections=conns):
            msg: Any = reader.deserialize(raw, conn.msgtype)
            try:
                if conn.msgtype.endswith("CompressedImage"):
                    frames.append(decode_compressed(msg.data, msg.format))
                else:
                    frames.append(
                        decode_image(
                            msg.data, msg.encoding, msg.width, msg.height, msg.step, bool(msg.is_bigendian)
                        )
                    )
            except MalformedImage:
                continue
    if not frames:
        raise BenchError(f"{bag}: topic {topic!r} holds no decodable image")
    return frames


def backend_only_fps(backend: Any, batches: list[npt.NDArray[np.uint8]]) -> float:
    n = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for b in batches:
        backend.infer(b)
    return n / (time.perf_counter() - t0)


def segmenter_fps(segmenter: Any, frames: list[npt.NDArray[np.uint8]], batch: int, alpha: float) -> float:
    """Segment + render every output the bag tool writes, without any bag I/O."""
    t0 = time.perf_counter()
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        for image, result in zip(chunk, segmenter.segment_batch(chunk), strict=True):
            color = result.color()
            result.overlay(image, alpha, color=color)
            result.confidence_u8()
    return len(frames) / (time.perf_counter() - t0)


def _network_batches(frames: list[npt.NDArray[np.uint8]], size: Any, batch: int) -> list[Any]:
    """Frames resized to the network size (H, W) outside any timing, stacked into batches."""
    sized: list[Any] = list(frames)
    if size is not None:
        sized = [
            f
            if f.shape[:2] == tuple(size)
            else cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            for f in frames
        ]
    return [np.ascontiguousarray(np.stack(sized[i : i + batch])) for i in range(0, len(sized), batch)]


def run_bag_bench(settings: BagBenchSettings) -> dict[str, Any]:
    """Backend-only, segmenter and bag tool frames/s on the same frames; the JSON figures."""
    from refinenet_ros.bag import BagOptions, overlap_helps, run_bag, write_sample_bag
    from refinenet_ros.segmenter import build_segmenter

    model_cfg = settings.model_cfg.resolved()
    batch = settings.batch
    work = Path(settings.keep) if settings.keep else Path(tempfile.mkdtemp(prefix="refinenet-bench-bag-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if settings.bag is None:
            in_bag = work / "input_bag"
            if in_bag.exists():
                raise BenchError(f"{in_bag} exists: give another --keep folder")
            write_sample_bag(in_bag, frames=settings.frames, size=settings.image_size, topic=GENERATED_TOPIC,
                             storage=settings.storage)  # fmt: skip
            topic = GENERATED_TOPIC
        else:
            in_bag = Path(settings.bag)
            if not in_bag.exists():
                raise BenchError(f"{in_bag}: no such bag")
            if not settings.topic:
                raise BenchError("give --image-topic with an input bag (the image topic to segment)")
            topic = settings.topic
        frames = read_frames(in_bag, topic)
        segmenter = build_segmenter(model_cfg, settings.backend)
        backend = segmenter.backend
        net_size = segmenter.network_size
        batches = _network_batches(frames, net_size, batch)
        segmenter.segment_batch(frames[:batch])  # warm-up: allocator, kernel selection
        backend.infer(batches[0])

        out_bag = work / "output_bag"
        bag_options = BagOptions(image_topics=(topic,), batch=batch, progress=False, force=True)
        passes: dict[str, list[float]] = {"backend": [], "segmenter": [], "bag_serial": [], "bag_overlap": []}
        summary: Any = None
        for _ in range(ROUNDS):  # interleaved, so a load change hits every path alike
            passes["backend"].append(backend_only_fps(backend, batches))
            passes["segmenter"].append(segmenter_fps(segmenter, frames, batch, 0.5))
            serial = run_bag(in_bag, out_bag, segmenter, replace(bag_options, overlap=False))
            passes["bag_serial"].append(serial.fps)
            summary = run_bag(in_bag, out_bag, segmenter, bag_options)
            passes["bag_overlap"].append(summary.fps)
        passes["backend"].append(backend_only_fps(backend, batches))
    finally:
        if not settings.keep:
            shutil.rmtree(work, ignore_errors=True)
    best = {k: max(v) for k, v in passes.items()}
    backend_fps = best["backend"]
    overlap = overlap_helps(backend.device, settings.backend.threads)  # what `refinenet-ros bag` picks here
    best["bag"] = best["bag_overlap" if overlap else "bag_serial"]
    return {
        "bag": {
            "input": str(in_bag) if settings.bag or settings.keep else "generated",
            "topic": topic,
            "frames": summary.frames,
            "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}",
            "network_size": f"{net_size[1]}x{net_size[0]}" if net_size else "input",
            "batch": batch,
            "backend": backend.name,
            "backend_only_fps": round(backend_fps, 3),
            "segmenter_fps": round(best["segmenter"], 3),
            "bag_fps": round(best["bag"], 3),
            "bag_vs_backend": round(best["bag"] / backend_fps, 3),
            "bag_overlap_chosen": overlap,
            "bag_serial_fps": round(best["bag_serial"], 3),
            "bag_serial_vs_backend": round(best["bag_serial"] / backend_fps, 3),
            "bag_overlap_fps": round(best["bag_overlap"], 3),
            "bag_overlap_vs_backend": round(best["bag_overlap"] / backend_fps, 3),
            "segmenter_vs_backend": round(best["segmenter"] / backend_fps, 3),
            "passes_fps": {k: [round(x, 3) for x in v] for k, v in passes.items()},
            "malformed": summary.malformed,
            "written": summary.written,
        }
    }


def bag_table(figures: dict[str, Any]) -> str:
    """The headline line and one row per path, as ``bench bag`` prints them."""
    b = figures["bag"]
    auto = "on" if b["bag_overlap_chosen"] else "off"
    head = (
        f"bench bag: {b['frames']} frames {b['frame_size']} -> network {b['network_size']}, "
        f"batch {b['batch']}, backend {b['backend']}"
    )
    return head + "\n" + format_table(
        ["path", "frames/s", "vs backend-only"],
        [["backend-only (infer)", b["backend_only_fps"], 1.0],
         ["segmenter + rendering", b["segmenter_fps"], b["segmenter_vs_backend"]],
         ["bag tool, I/O in series (--overlap off)", b["bag_serial_fps"], b["bag_serial_vs_backend"]],
         ["bag tool, I/O overlapped (--overlap on)", b["bag_overlap_fps"], b["bag_overlap_vs_backend"]],
         [f"bag tool (refinenet-ros bag, auto: {auto})", b["bag_fps"], b["bag_vs_backend"]]],
    )  # fmt: skip
