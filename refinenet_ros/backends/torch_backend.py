"""Eager PyTorch backend: CPU (channels_last) or CUDA, any input size.

The fallback when neither TensorRT nor ONNX Runtime is available. BatchNorm is folded into
the convolutions (what ONNX Runtime and TensorRT do to their graphs), so the backend takes
ownership of the model it is given: it is for inference only afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from refinenet_ros.backends.base import BackendError, check_batch
from refinenet_ros.backends.pipeline import InferencePipeline
from refinenet_ros.models import IMAGENET_MEAN, IMAGENET_STD, fold_batchnorm


class TorchBackend:
    """Runs :class:`InferencePipeline` under ``torch.inference_mode``."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        device: str = "cpu",
        input_size: tuple[int, int] | None = None,
        max_batch: int = 16,
        threads: int = 0,
        precision: str = "fp32",
        fold_bn: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        temperature: float = 1.0,
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"torch backend: device {device!r} asked for but CUDA is not available")
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"torch backend supports precision fp32|fp16, not {precision!r}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("torch backend: fp16 needs a CUDA device; use fp32 on CPU")
        self._threads = threads  # applied per call: a process-wide setting would leak to the caller
        self.device = device
        self.num_classes = num_classes
        self.input_size = input_size
        self.max_batch = max_batch
        self.precision = precision
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        model.eval()
        if fold_bn:  # 1.02-1.09x on CPU (docs/benchmarks.md), and fewer kernel launches on CUDA
            fold_batchnorm(model)
        pipeline = InferencePipeline(model, mean, std, temperature)
        # channels_last: 1.9x faster convolutions on this CPU (oneDNN NHWC kernels).
        self._pipeline = pipeline.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self._dtype == torch.float16:
            self._pipeline.model.half()

    def infer(self, images: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        check_batch(images, self)
        with _intra_op_threads(self._threads), torch.inference_mode():
            if not images.flags.writeable:  # decoded bag/message views: torch wants writable memory
                images = images.copy()
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
            if self._dtype == torch.float16:
                with torch.autocast("cuda", dtype=torch.float16):
                    labels, confidence = self._pipeline(x)
            else:
                labels, confidence = self._pipeline(x)
            return labels.cpu().numpy(), confidence.float().cpu().numpy()


@contextlib.contextmanager
def _intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count for one call (0: leave it), restored after (0.4 us).

    ``torch.set_num_threads`` is global state of the calling thread's pool: set once at
    construction it changed every later torch call of the user's process."""
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
