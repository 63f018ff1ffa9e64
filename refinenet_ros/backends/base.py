"""The one small protocol every inference backend implements.

Backends take what the camera gives (uint8 RGB, NHWC) and return only what the node
publishes (labels + confidence), so preprocessing and the argmax live inside the
backend — inside the ONNX graph / TensorRT engine for the compiled ones. That keeps
4x fewer bytes crossing into the accelerator and 1/C bytes coming back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from refinenet_ros.errors import RefineNetRosError, option

if TYPE_CHECKING:
    from refinenet_ros.backends.calibration import ImageSource

BACKEND_KINDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16", "int8")
"""auto (the default): the fastest precision whose accuracy is known to hold (see
:mod:`~refinenet_ros.backends.auto_select`); bf16: OpenVINO on CPUs with AVX-512-BF16/AMX;
a backend without the asked precision refuses it with the reason."""


class BackendError(RefineNetRosError, RuntimeError):
    """A backend could not be created or run; the message says what to change."""


MIN_NETWORK_SIDE = 32
"""Smallest network side: the encoder's output stride; below it the deepest features are empty."""
MAX_NETWORK_SIDE = 8192
"""Largest network side accepted (the node's network_height/width bound): beyond it a
typo like 100000 would try to allocate tens of GB before failing."""


def network_size_problem(size: object) -> str | None:
    """Why ``size`` is not a network size (H, W) within the bounds every entry point uses, else None."""
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        return f"{size!r} is not a (height, width) pair"
    for side in size:
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)):
            return f"{side!r} is not a whole number of pixels"
        if not MIN_NETWORK_SIDE <= int(side) <= MAX_NETWORK_SIDE:
            return f"each side must be within {MIN_NETWORK_SIDE}..{MAX_NETWORK_SIDE} pixels, got {int(side)}"
    return None


@dataclass(frozen=True)
class CalibrationSpec:
    """The frames INT8 calibration reads: an image folder, or a bag and its image topic;
    neither = the bundled samples (with a warning: a robot's own frames calibrate better).
    ``count``: how many frames at most."""

    images: str | None = None
    bag: str | None = None
    topic: str | None = None
    count: int = 64

    def source(self) -> ImageSource:
        """The frame source (checked: one kind of input, a bag with its topic)."""
        from refinenet_ros.backends.calibration import make_source

        return make_source(self.images, self.bag, self.topic, self.count)


def _default_cache_dir() -> str:
    from refinenet_ros.backends.engine_cache import default_cache_dir

    return default_cache_dir()


@dataclass(frozen=True)
class BackendOptions:
    """How to run the model: which backend, on what, at which size and precision.

    Lives beside the protocol so every backend module can take it without importing the
    factory that imports them. ``onnx``: run this exported graph instead of exporting the
    model (onnxruntime, openvino and tensorrt). ``calibration``: INT8 calibration frames.
    ``workspace_mb``: TensorRT builder workspace pool limit.
    """

    kind: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    input_size: tuple[int, int] | None = None
    max_batch: int = 16
    threads: int = 0
    engine_dir: str = field(default_factory=_default_cache_dir)
    onnx: str | None = None
    calibration: CalibrationSpec = CalibrationSpec()
    workspace_mb: int = 2048

    def __post_init__(self) -> None:
        """Checked once, wherever the options are made (CLI, node, :func:`refinenet_ros.load`), so
        a bad size or thread count fails here in one line, not at the first frame; a thread
        count above the cores present is capped to them with a warning."""
        from refinenet_ros.machine import bounded_threads

        if self.input_size is not None:
            problem = network_size_problem(self.input_size)
            if problem is not None:
                raise BackendError(f"network size {self.input_size!r}: {problem}")
            object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise BackendError(
                f"threads {self.threads!r}: must be a whole number >= 0 (0: the library's default)"
            )
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise BackendError(f"max_batch {self.max_batch!r}: must be >= 1")
        object.__setattr__(self, "threads", bounded_threads(self.threads, "threads"))


@runtime_checkable
class Backend(Protocol):
    """``infer(uint8 [N,H,W,3] RGB) -> (labels [N,H,W] int, confidence [N,H,W] float32)``.

    ``input_size`` is the (H, W) the backend was built for, or None when it takes any
    size (eager torch, dynamic-shape graphs). ``max_batch`` bounds N.
    """

    name: str
    device: str
    num_classes: int
    input_size: tuple[int, int] | None
    max_batch: int

    def infer(
        self, images: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]: ...


def check_batch(images: npt.NDArray[np.uint8], backend: Backend) -> None:
    """Validate a batch against a backend's contract with an error that names the fix."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise BackendError(f"{backend.name}: expected uint8 [N,H,W,3] RGB, got {images.dtype} {images.shape}")
    if images.shape[0] > backend.max_batch:
        raise BackendError(
            f"{backend.name}: batch {images.shape[0]} exceeds max_batch {backend.max_batch}; "
            f"rebuild with a larger {option('batch')} or split the batch"
        )
    if backend.input_size is not None and tuple(images.shape[1:3]) != backend.input_size:
        raise BackendError(
            f"{backend.name}: built for {backend.input_size[0]}x{backend.input_size[1]} (HxW), "
            f"got {images.shape[1]}x{images.shape[2]}; set network_size to match or rebuild"
        )


def pad_to_batch(images: npt.NDArray[np.uint8], static_batch: int | None) -> npt.NDArray[np.uint8]:
    """A short batch padded with zeros to a graph's fixed batch size (callers drop the padding
    from the outputs); contiguous, as the runtimes want their input."""
    n = images.shape[0]
    if static_batch is not None and n < static_batch:
        padded = np.zeros((static_batch, *images.shape[1:]), dtype=np.uint8)
        padded[:n] = images
        return padded
    return np.ascontiguousarray(images)


def classes_from_metadata(meta: Mapping[str, str], num_classes: int | None, path: object) -> int:
    """The class count an exported graph records, else the caller's; a graph with neither
    cannot be told from another model's, so it is refused with the fix."""
    if "num_classes" in meta:
        return int(meta["num_classes"])
    if num_classes is not None:
        return num_classes
    raise BackendError(f"{path} has no num_classes metadata; re-export it with refinenet-ros")
