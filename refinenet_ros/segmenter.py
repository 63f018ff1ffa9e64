"""preprocess -> backend -> postprocess, shared by the node, the bag tool, ``segment``,
``evaluate`` and ``bench``. No ROS import: the node only converts messages around it.

Preprocess resizes camera images to the backend's network size (when it has one) into
one reused uint8 batch buffer; the backend returns labels + confidence at network size;
postprocess brings them back to the camera's resolution (nearest for labels, so no
invented classes appear on boundaries; bilinear for confidence) unless the caller asks
for network resolution (then CameraInfo must be rescaled — the node does that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.base import Backend, BackendOptions
from refinenet_ros.backends.child_build import create_backend_interruptibly
from refinenet_ros.backends.factory import create_backend, with_weights_size
from refinenet_ros.config import ModelConfig
from refinenet_ros.errors import option
from refinenet_ros.labels import LabelSet, colorize

OutputResolution = Literal["input", "network"]
STAGES = ("preprocess", "infer", "postprocess")
OUTPUT_KINDS: tuple[str, ...] = ("labels", "color", "overlay", "confidence")
"""What a result renders to, in publish order (labels first: the cheapest and most wanted).
The node's topics, the bag tool's output topics, bench and fleet all name outputs from here."""


@dataclass
class SegmentationResult:
    """One image's segmentation.

    ``labels``: (H, W) uint8 (uint16 above 254 classes); ``confidence``: (H, W) float32
    max softmax in [0, 1]; both at input resolution unless the Segmenter was asked for
    network resolution. ``timings_ms`` holds this call's per-stage wall times (shared by
    every image of a batch).
    """

    labels: npt.NDArray[np.unsignedinteger]
    confidence: npt.NDArray[np.float32]
    label_set: LabelSet
    input_size: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: the input image (a reference, not a copy) so :meth:`overlay` needs no argument
    image: npt.NDArray[np.uint8] | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the label image."""
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def color(self, out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """RGB rendering of the labels through the label set's palette."""
        return colorize(self.labels, self.label_set, out=out)

    def overlay(
        self,
        image: npt.NDArray[np.uint8] | None = None,
        alpha: float = 0.5,
        out: npt.NDArray[np.uint8] | None = None,
        color: npt.NDArray[np.uint8] | None = None,
    ) -> npt.NDArray[np.uint8]:
        """Blend the colour image over ``image`` (RGB); resized to the labels if needed.

        The resize is bilinear, the same as the network input's, so a network-resolution
        overlay shows the pixels the network saw (and costs 0.2 ms at 1080p -> 320x240,
        where INTER_AREA took 6 ms in the node's render stage)."""
        color = self.color() if color is None else color
        if image is None:
            if self.image is None:
                raise ValueError("overlay() needs the image: this result does not hold its input")
            image = self.image
        base: npt.NDArray[np.integer | np.floating] = image
        if base.shape[:2] != color.shape[:2]:
            base = cv2.resize(base, (color.shape[1], color.shape[0]), interpolation=cv2.INTER_LINEAR)
        if out is None:
            out = np.empty_like(color)
        cv2.addWeighted(base, 1.0 - alpha, color, alpha, 0.0, dst=out)
        return out

    def confidence_u8(self, out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """Confidence as mono8: round(max softmax x 255)."""
        if out is None:
            out = np.empty(self.confidence.shape, dtype=np.uint8)
        cv2.convertScaleAbs(self.confidence, dst=out, alpha=255.0)
        return out

    @property
    def labels_encoding(self) -> str:
        """ROS image encoding of :attr:`labels`: mono8, or mono16 above 254 classes."""
        return "mono8" if self.labels.dtype == np.uint8 else "mono16"

    def render(
        self, sink: RenderSink, kinds: Container[str], image: npt.NDArray[np.uint8], alpha: float
    ) -> None:
        """Render ``kinds`` (of :data:`OUTPUT_KINDS`) straight into the sink's buffers, in the
        one order every consumer uses: labels, their camera_info, colour, overlay (reusing the
        colour), confidence. The node publishes from the buffers, the bag tool writes them."""
        h, w = self.size
        if "labels" in kinds:
            np.copyto(sink.buffer("labels", h, w, self.labels_encoding), self.labels)
            sink.done("labels")
        sink.camera_info()
        color = None
        if "color" in kinds:
            color = self.color(out=sink.buffer("color", h, w, "rgb8"))
            sink.done("color")
        if "overlay" in kinds:
            self.overlay(image, alpha, out=sink.buffer("overlay", h, w, "rgb8"), color=color)
            sink.done("overlay")
        if "confidence" in kinds:
            self.confidence_u8(out=sink.buffer("confidence", h, w, "mono8"))
            sink.done("confidence")


class RenderSink(Protocol):
    """Where :meth:`SegmentationResult.render` draws: an outgoing message's pixel buffer per
    kind (no copy in between), told when each is complete."""

    def buffer(self, kind: str, height: int, width: int, encoding: str) -> npt.NDArray[Any]:
        """A writable (H, W[, C]) array inside the ``kind`` message about to go out."""
        ...

    def done(self, kind: str) -> None:
        """``kind``'s buffer is filled: publish or write it now."""
        ...

    def camera_info(self) -> None:
        """Right after the labels: send the CameraInfo matching them, if wanted."""
        ...


class Segmenter:
    """Turns RGB uint8 images into :class:`SegmentationResult` through any backend.

    Safe to call from several threads: calls take turns (one lock around preprocess,
    inference and postprocess), because the reused batch buffer and the backends' single
    request (OpenVINO's is "busy" while running, TensorRT's stream and buffers) serve one
    call at a time. A backend already uses every core it is given, so turns cost no
    throughput; for parallel inference build one Segmenter per thread, each with
    ``threads`` set to its share of the cores.
    """

    def __init__(
        self,
        backend: Backend,
        label_set: LabelSet,
        *,
        network_size: tuple[int, int] | None = None,
        output_resolution: OutputResolution = "input",
    ) -> None:
        if output_resolution not in ("input", "network"):
            raise ValueError(f"output_resolution must be 'input' or 'network', not {output_resolution!r}")
        if backend.num_classes != label_set.num_classes:
            raise ValueError(
                f"backend predicts {backend.num_classes} classes but label set "
                f"{label_set.name!r} has {label_set.num_classes}; pass the matching {option('labels')}"
            )
        if network_size is None:
            network_size = backend.input_size
        elif backend.input_size is not None and tuple(network_size) != backend.input_size:
            raise ValueError(
                f"network_size {network_size} differs from the size the {backend.name} backend "
                f"was built for {backend.input_size}; rebuild it or drop network_size"
            )
        self.backend = backend
        self.label_set = label_set
        self.network_size = (int(network_size[0]), int(network_size[1])) if network_size else None
        self.output_resolution: OutputResolution = output_resolution
        self._batch: npt.NDArray[np.uint8] | None = None
        self._lock = threading.Lock()

    def __call__(self, image: npt.NDArray[np.uint8]) -> SegmentationResult:
        return self.segment_batch([image])[0]

    def network_size_for(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) the network sees for an input of ``input_size``."""
        return self.network_size if self.network_size is not None else input_size

    def output_size_for(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the label image produced for an input of ``input_size``."""
        return input_size if self.output_resolution == "input" else self.network_size_for(input_size)

    def segment_batch(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[SegmentationResult]:
        """Segment several images with as few backend calls as their sizes allow."""
        for i, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(
                    f"image {i}: expected non-empty uint8 HxWx3 RGB, got {image.dtype} {image.shape}"
                )
        if self.network_size is not None:
            groups = [list(range(len(images)))]
        else:  # any-size backend: one call per distinct input size
            by_size: dict[tuple[int, ...], list[int]] = {}
            for i, image in enumerate(images):
                by_size.setdefault(image.shape[:2], []).append(i)
            groups = list(by_size.values())
        results: list[SegmentationResult | None] = [None] * len(images)
        for group in groups:
            for start in range(0, len(group), self.backend.max_batch):
                chunk = group[start : start + self.backend.max_batch]
                for i, result in zip(chunk, self._run([images[i] for i in chunk]), strict=True):
                    results[i] = result
        return [r for r in results if r is not None]

    def _batch_buffer(self, n: int, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
        """Reuse one batch buffer across calls: no per-frame allocation at steady state."""
        shape = (n, size[0], size[1], 3)
        if self._batch is None or self._batch.shape != shape:
            self._batch = np.empty(shape, dtype=np.uint8)
        return self._batch

    def _run(self, images: list[npt.NDArray[np.uint8]]) -> list[SegmentationResult]:
        with self._lock:
            return self._run_locked(images)

    def _run_locked(self, images: list[npt.NDArray[np.uint8]]) -> list[SegmentationResult]:
        t0 = time.perf_counter()
        net = self.network_size_for(images[0].shape[:2])
        if len(images) == 1 and images[0].shape[:2] == net:
            batch = np.ascontiguousarray(images[0])[None]
        else:
            batch = self._batch_buffer(len(images), net)
            for slot, image in zip(batch, images, strict=True):
                if image.shape[:2] == net:
                    slot[...] = image
                else:
                    cv2.resize(image, (net[1], net[0]), dst=slot, interpolation=cv2.INTER_LINEAR)
        t1 = time.perf_counter()
        labels, confidence = self.backend.infer(batch)
        t2 = time.perf_counter()
        dtype = self.label_set.label_dtype
        out: list[SegmentationResult] = []
        for image, lab, conf in zip(images, labels, confidence, strict=True):
            in_size = (int(image.shape[0]), int(image.shape[1]))
            out_size = self.output_size_for(in_size)
            lab = lab.astype(dtype, copy=False)
            conf = conf.astype(np.float32, copy=False)
            if lab.shape != out_size:
                lab = cv2.resize(lab, (out_size[1], out_size[0]), interpolation=cv2.INTER_NEAREST)
                conf = cv2.resize(conf, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR)
            out.append(SegmentationResult(lab, conf, self.label_set, in_size, image=image))
        t3 = time.perf_counter()
        timings = {
            "preprocess": (t1 - t0) * 1e3,
            "infer": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        }
        for r in out:
            r.timings_ms = dict(timings)
        return out


def build_segmenter(
    model_cfg: ModelConfig,
    options: BackendOptions | None = None,
    *,
    output_resolution: OutputResolution = "input",
    cancelled: Callable[[], bool] | None = None,
) -> Segmenter:
    """Model config + backend options -> ready Segmenter (the usual way to get one).

    The network size defaults to the one the weights record (360x480 for ``camvid``).
    ``cancelled``: give up within ~0.1 s once it returns True (a node shutting down), raising
    :class:`~refinenet_ros.backends.prepare.BuildCancelled`; slow builds then run in a child
    process (:mod:`~refinenet_ros.backends.child_build`).
    """
    model_cfg = model_cfg.resolved()
    options = with_weights_size(model_cfg, options or BackendOptions())
    if cancelled is None:
        backend = create_backend(model_cfg, options)
    else:
        backend = create_backend_interruptibly(model_cfg, options, cancelled)
    return Segmenter(
        backend,
        model_cfg.label_set,
        network_size=options.input_size,
        output_resolution=output_resolution,
    )
