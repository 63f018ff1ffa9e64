"""ONNX Runtime backend: the exported pipeline graph on CPU, CUDA or ORT's TensorRT EP.

The session is built once (graph optimisation ``ORT_ENABLE_ALL``: Conv+Relu/Clip fusion,
constant folding, NCHWc layout on CPU) and everything the backend reports — input size,
batch limit, class count — is read from the graph itself, so the backend can never
disagree with the file it runs. On CPU no IO binding is needed: ``run`` reads the numpy
batch in place and returns freshly allocated outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.base import BackendError, check_batch, classes_from_metadata, pad_to_batch
from refinenet_ros.backends.onnx_export import INPUT_NAME, OUTPUT_NAMES
from refinenet_ros.errors import option

log = logging.getLogger("refinenet_ros")

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def best_provider() -> str:
    """The fastest execution provider this onnxruntime build offers."""
    available = available_providers()
    return next((p for p in GPU_PROVIDERS if p in available), "CPUExecutionProvider")


def _provider_list(device: str, precision: str, engine_dir: str | None) -> list[Any]:
    """Providers in preference order for ``device`` (auto|cpu|cuda[:N])."""
    available = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        trt_opts: dict[str, Any] = {"device_id": index, "trt_fp16_enable": precision == "fp16"}
        if engine_dir:
            # ORT's own TensorRT engine cache, keyed by ORT; kept beside ours.
            trt_opts |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(Path(engine_dir) / "ort_trt"),
            }
        providers.append(("TensorrtExecutionProvider", trt_opts))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    if device.startswith("cuda") and not providers:
        raise BackendError(
            f"onnxruntime backend: device {device!r} asked for but this onnxruntime has no CUDA/TensorRT "
            f"provider (has: {', '.join(available)}); install onnxruntime-gpu "
            f"or use {option('device', 'cpu')}"
        )
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeBackend:
    """Runs an exported ``image -> (labels, confidence)`` graph with one InferenceSession."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        max_batch: int = 16,
        precision: str = "fp32",
        engine_dir: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in ("fp32", "fp16", "int8"):
            raise BackendError(f"onnxruntime backend: unknown precision {precision!r}")
        providers = _provider_list(device, precision, engine_dir)
        if precision == "fp16" and not any(
            (p[0] if isinstance(p, tuple) else p) == "TensorrtExecutionProvider" for p in providers
        ):
            raise BackendError(
                "onnxruntime backend: fp16 needs the TensorRT execution provider; "
                f"use {option('precision', 'fp32')} "
                f"(or {option('precision', 'int8')} for a quantised CPU graph)"
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # one graph, sequential: extra pools only add contention
        opts.log_severity_level = 3
        # ORT's worker threads busy-wait after each run by default. The node and the bag
        # tool render, serialise and write on the same cores right after inference, so the
        # spinning stole their CPU: on 2 cores, 1080p render 8.7-10.9 -> 5.0-5.3 ms and
        # postprocess 1.9-2.5 -> 1.2 ms without it, while back-to-back inference speed was
        # unchanged (LW-MNv2 640x480 187 ms, LW-RN50 512x512 403-405 ms either way).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(onnx_path)
        try:
            self._session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(f"onnxruntime could not load {self.path}: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= outputs:
            raise BackendError(
                f"{self.path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, found "
                f"{sorted(inputs)} -> {sorted(outputs)}; export it with `refinenet-ros export`"
            )
        shape = inputs[INPUT_NAME].shape  # ints for static dims, str/None for symbolic ones
        batch, height, width = shape[0], shape[1], shape[2]
        self.input_size: tuple[int, int] | None = (
            (height, width) if isinstance(height, int) and isinstance(width, int) else None
        )
        self._static_batch = batch if isinstance(batch, int) else None
        self.max_batch = batch if isinstance(batch, int) else max(1, max_batch)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        self.num_classes = classes_from_metadata(meta, num_classes, self.path)
        active = self._session.get_providers()[0]
        self.provider = active
        self.device = "cpu" if active == "CPUExecutionProvider" else f"cuda:{device.partition(':')[2] or 0}"
        self.precision = precision
        log.info(
            "onnxruntime %s: %s on %s (%s), input %s, max batch %d, %s threads",
            ort.__version__, self.path.name, self.device, active,
            "x".join(map(str, self.input_size)) if self.input_size else "any size",
            self.max_batch, threads or "default",
        )  # fmt: skip

    def infer(self, images: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        check_batch(images, self)
        n = images.shape[0]
        batch = pad_to_batch(images, self._static_batch)  # a fixed-batch graph: padding dropped below
        labels, confidence = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return labels[:n], confidence[:n]
