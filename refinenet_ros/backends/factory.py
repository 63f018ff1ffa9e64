"""``create_backend``: one entry point that picks and builds a backend by kind.

``auto`` picks the fastest backend this machine can run and logs why:
TensorRT when a CUDA device and a real TensorRT install are present, else ONNX Runtime
with a GPU execution provider; on a CPU it measures the candidates (torch, ONNX Runtime
fp32/int8, OpenVINO fp32/bf16/int8) once per machine + graph and picks the fastest that
agrees with FP32 (:mod:`auto_select`). The compiled backends get their
ONNX graph from the content-hashed export cache (``<engine_dir>/onnx``), so a node
restart neither re-exports nor rebuilds.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from refinenet_ros.backends.base import BACKEND_KINDS, PRECISIONS, Backend, BackendError, BackendOptions
from refinenet_ros.backends.int8_ranges import shipped_ranges
from refinenet_ros.config import ModelConfig, load_model, warn_if_random_weights
from refinenet_ros.errors import option

if TYPE_CHECKING:
    from refinenet_ros.backends.auto_select import Candidate

log = logging.getLogger("refinenet_ros")

__all__ = ["create_backend", "with_weights_size"]

AUTO_ENV = "REFINENET_ROS_AUTO"
"""``measure`` (default): CPU ``auto`` measures the candidates once per machine and graph;
``fixed``: the fixed preference (TensorRT, else ONNX Runtime, else torch), no measuring."""

DYNAMIC_TRACE_SIZE = (128, 128)
"""Tracing example for any-size graphs: small, so export and its check stay fast."""

TENSORRT_HOW_TO = (
    "on Jetson install JetPack (TensorRT comes with it); on x86 with an NVIDIA GPU "
    "`pip install tensorrt` (10.x) next to a CUDA build of torch"
)


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here, else one line saying what is missing and how to fix it.

    ``import tensorrt`` alone proves nothing: the ``tensorrt-stubs`` type package makes
    it import as an empty namespace package, so a real runtime must expose ``Builder``.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        return f"TensorRT is not installed ({exc}); {TENSORRT_HOW_TO}"
    if not hasattr(trt, "Builder"):
        return f"only TensorRT type stubs are installed here, no TensorRT runtime; {TENSORRT_HOW_TO}"
    version = str(getattr(trt, "__version__", "0"))
    if int(version.split(".")[0] or 0) < 10:
        return (
            f"TensorRT {version} is too old: this package uses the TensorRT 10 API; upgrade JetPack/tensorrt"
        )
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "torch is needed for CUDA memory management"
    if not torch.cuda.is_available():
        return (
            f"TensorRT {version} is installed but no CUDA device is visible "
            f"(torch {torch.__version__} reports none: CPU-only torch build, no driver, or "
            "CUDA_VISIBLE_DEVICES hides it)"
        )
    return None


_AUTO_CANDIDATE: contextvars.ContextVar[bool] = contextvars.ContextVar("auto_candidate", default=False)


def build_candidate(model_cfg: ModelConfig, options: BackendOptions) -> Backend:
    """One candidate of ``auto``'s measurement (logged as such, not as a backend asked for)."""
    token = _AUTO_CANDIDATE.set(True)
    try:
        return create_backend(model_cfg, options)
    finally:
        _AUTO_CANDIDATE.reset(token)


def candidate_builder(model_cfg: ModelConfig, options: BackendOptions) -> Callable[[Candidate], Backend]:
    """How ``auto``'s measurement builds each candidate: ``options`` with the candidate's kind
    and precision (``select_backend(build=...)``)."""

    def build(cand: Candidate) -> Backend:
        return build_candidate(model_cfg, replace(options, kind=cand.kind, precision=cand.precision))

    return build


def choose_kind(options: BackendOptions) -> tuple[str, str]:
    """(kind, why) for ``options.kind``; resolves ``auto`` in preference order."""
    if options.kind != "auto":
        return options.kind, "asked for"
    skip = []
    if options.device == "cpu":
        skip.append("TensorRT skipped: device cpu")
    else:
        reason = tensorrt_unavailable_reason()
        if reason is None and options.input_size is None and options.onnx is None:
            reason = "no fixed network size (set network_size to use TensorRT engines)"
        if reason is None:
            return "tensorrt", "CUDA device and TensorRT present"
        skip.append(f"TensorRT not used: {reason}")
    try:
        from refinenet_ros.backends.onnxruntime_backend import best_provider

        provider = best_provider() if options.device != "cpu" else "CPUExecutionProvider"
        return "onnxruntime", f"ONNX Runtime with {provider} ({'; '.join(skip)})"
    except ImportError as exc:
        skip.append(f"ONNX Runtime not importable: {exc}")
    return "torch", "; ".join(skip)


def with_weights_size(model_cfg: ModelConfig, options: BackendOptions) -> BackendOptions:
    """``options`` with the weights' recorded network size when none was asked for.

    The bundled CamVid model runs at the 360x480 it was trained and measured at; a camera
    frame of any size is resized to it (and the labels back), unless the user sets a size.
    """
    size = model_cfg.resolved().network_size
    if options.input_size is None and size is not None and options.onnx is None:
        return replace(options, input_size=size)
    return options


def create_backend(model_cfg: ModelConfig, options: BackendOptions | None = None) -> Backend:
    """Build the backend ``options.kind`` for ``model_cfg``.

    ``auto`` picks the fastest backend available on this machine. ``options.input_size``
    should already include the weights' default size (:func:`with_weights_size`). A first
    start that builds something (export, INT8 graph, compiled model, ``auto``'s measurement)
    ends with one line saying what was built and how long it took.
    """
    from refinenet_ros.backends.prepare import builds_reported

    with builds_reported(model_cfg.describe()):
        return _create_backend(model_cfg, options)


def _create_backend(model_cfg: ModelConfig, options: BackendOptions | None = None) -> Backend:
    model_cfg = model_cfg.resolved()
    options = options or BackendOptions()
    if options.kind not in BACKEND_KINDS:
        raise BackendError(f"unknown backend {options.kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    if options.precision not in PRECISIONS:
        raise BackendError(f"unknown precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    kind, why = choose_kind(options)
    if options.onnx is None:
        warn_if_random_weights(model_cfg)
    if options.precision == "bf16" and kind != "openvino" and options.kind != "auto":
        raise BackendError(
            f"{kind} backend has no bf16 path; bf16 runs on {option('backend', 'openvino')} "
            "on CPUs with AVX-512-BF16/AMX"
        )
    if options.kind == "auto" and measured_auto_applies(kind, options):
        return _measured_auto(model_cfg, options, why)
    cpu_kind = kind in ("onnxruntime", "openvino")
    if options.precision == "auto" and cpu_kind and measured_auto_applies(kind, options):
        return _measured_auto(model_cfg, options, why, only=kind)
    if options.precision == "auto":
        precision, how = fixed_precision(model_cfg, options, kind)
        options = replace(options, precision=precision)
        log.info("backend: %s %s (%s; precision auto: %s)", kind, precision, why, how)
    elif _AUTO_CANDIDATE.get():
        log.info("auto: building candidate %s %s", kind, options.precision)
    else:
        log.info("backend: %s %s (%s)", kind, options.precision, why)
    if kind == "torch":
        from refinenet_ros.backends.torch_backend import TorchBackend

        device = "cpu" if options.device == "auto" else options.device
        return TorchBackend(
            load_model(model_cfg),
            model_cfg.label_set.num_classes,
            device=device,
            input_size=options.input_size,
            max_batch=options.max_batch,
            threads=options.threads,
            precision=options.precision,
            mean=_triple(model_cfg.mean),
            std=_triple(model_cfg.std),
            temperature=model_cfg.temperature or 1.0,
        )
    if kind == "onnxruntime":
        return _onnxruntime_backend(model_cfg, options)
    if kind == "openvino":
        return _openvino_backend(model_cfg, options)
    if kind == "tensorrt":
        return _tensorrt_backend(model_cfg, options)
    raise BackendError(f"backend {kind!r} is not available in this build")  # pragma: no cover


def _triple(v: tuple[float, float, float] | None) -> tuple[float, float, float]:
    assert v is not None, "resolved configs always carry mean/std"
    return v


def onnx_for(model_cfg: ModelConfig, options: BackendOptions, *, dynamic_hw: bool = False) -> Path:
    """The ONNX graph to run: ``options.onnx`` when given, else the cached export.

    Static H/W when ``options.input_size`` is set (fastest); the batch axis is dynamic
    when ``max_batch`` > 1 so one graph serves every batch size up to it.
    """
    if options.onnx:
        path = Path(options.onnx)
        if not path.is_file():
            raise BackendError(f"{option('onnx', path)}: no such file")
        return path
    from refinenet_ros.backends.onnx_export import ExportSpec, export_cached

    if options.input_size is None or dynamic_hw:
        h, w = options.input_size or DYNAMIC_TRACE_SIZE
        spec = ExportSpec(h, w, dynamic=True)
    else:
        h, w = options.input_size
        spec = ExportSpec(h, w, batch=1, dynamic_batch=options.max_batch > 1)
    return export_cached(model_cfg, spec, Path(options.engine_dir) / "onnx").path


def graph_for(model_cfg: ModelConfig, options: BackendOptions) -> Path:
    """The graph ONNX Runtime or OpenVINO runs: the FP32 export, or for int8 its calibrated
    QDQ version (OpenVINO executes the Q/DQ pairs as int8 convolutions, so one calibration
    serves both runtimes)."""
    path = onnx_for(model_cfg, options)
    if options.precision == "int8":
        from refinenet_ros.backends.ort_quantize import quantized_cached

        path = quantized_cached(path, options, ranges=shipped_ranges(model_cfg, options))
    return path


def _onnxruntime_backend(model_cfg: ModelConfig, options: BackendOptions) -> Backend:
    from refinenet_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    path = graph_for(model_cfg, options)
    precision = options.precision
    return OnnxRuntimeBackend(
        path,
        device=options.device,
        threads=options.threads,
        max_batch=options.max_batch,
        precision=precision,
        engine_dir=options.engine_dir,
        num_classes=model_cfg.label_set.num_classes,
    )


def measured_auto_applies(kind: str, options: BackendOptions) -> bool:
    """True when ``auto`` fell back to a CPU backend: then it measures instead of guessing.

    TensorRT and ONNX Runtime's GPU providers keep the fixed preference (one GPU path is
    clearly fastest there); on a CPU the fastest correct path differs by machine and model.
    ``REFINENET_ROS_AUTO=fixed`` keeps the fixed preference on CPUs too: the first measurement
    per graph compiles and calibrates every candidate (tens of seconds), which a test suite
    or a CI job starting fresh caches for dozens of graph sizes should not pay each time.
    """
    if os.environ.get(AUTO_ENV, "measure") == "fixed" or options.device not in ("auto", "cpu"):
        return False
    if kind == "openvino":
        return True
    if kind == "onnxruntime":
        from refinenet_ros.backends.onnxruntime_backend import best_provider

        return options.device == "cpu" or best_provider() == "CPUExecutionProvider"
    if kind == "torch":
        import torch

        return options.device == "cpu" or not torch.cuda.is_available()
    return False


def fixed_precision(model_cfg: ModelConfig, options: BackendOptions, kind: str) -> tuple[str, str]:
    """(precision, why) for ``precision: auto`` where nothing is measured: TensorRT runs INT8
    when the weights ship INT8 ranges and a record that admits INT8, else FP16; the other
    backends (a GPU provider, torch, or ``REFINENET_ROS_AUTO=fixed``) run FP32."""
    if kind == "tensorrt":
        from refinenet_ros.weights.records import MIOU_LOSS_LIMIT, weights_accuracy

        record = weights_accuracy(model_cfg.weights) if shipped_ranges(model_cfg, options) else None
        losses = [record.loss(k) for k in record.miou if k.endswith(" int8")] if record else []
        loss = min((x for x in losses if x is not None), default=None)
        if loss is not None and loss <= MIOU_LOSS_LIMIT:
            return "int8", f"the weights' INT8 ranges, {-loss:+.2f} mIoU vs FP32 by their record"
        return "fp16", "no INT8 ranges with an accuracy record in the weights"
    if kind in ("onnxruntime", "openvino") and os.environ.get(AUTO_ENV, "measure") == "fixed":
        return "fp32", f"{AUTO_ENV}=fixed: no measuring"
    return "fp32", f"{kind} on {options.device} runs fp32"


def _measured_auto(
    model_cfg: ModelConfig, options: BackendOptions, why: str, only: str | None = None
) -> Backend:
    """The CPU ``auto`` measurement; ``only``: a backend the user named (``--backend openvino
    --precision auto``), whose precisions are measured against its own fp32."""
    from refinenet_ros.backends.auto_select import DEFAULT_CANDIDATES, select_backend

    cpu = replace(options, device="cpu")
    candidates = [c for c in DEFAULT_CANDIDATES if only is None or c.kind == only]
    graph = onnx_for(model_cfg, cpu)
    build = candidate_builder(model_cfg, cpu)
    backend, decision = select_backend(model_cfg, cpu, graph, candidates=candidates, build=build)
    asked = f"precision auto on {only}" if only else "auto"
    # ``why`` is the fixed preference order's reason ("ONNX Runtime with ..."): only its
    # skip notes (no CUDA, no TensorRT) still hold once the measurement has chosen.
    skipped = why.partition(" (")[2].rstrip(")") if why.startswith("ONNX Runtime with") else why
    log.info("backend: %s %s (%s: %s%s)", decision.kind, decision.precision, asked, decision.why(),
             f"; {skipped}" if skipped else "")  # fmt: skip
    return backend


def _openvino_backend(model_cfg: ModelConfig, options: BackendOptions) -> Backend:
    from refinenet_ros.backends.openvino_backend import OpenVinoBackend, openvino_unavailable_reason

    reason = openvino_unavailable_reason()
    if reason is not None:
        raise BackendError(f"openvino backend: {reason}")
    path = graph_for(model_cfg, options)
    return OpenVinoBackend(
        path,
        device=options.device,
        precision=options.precision,
        threads=options.threads,
        max_batch=options.max_batch,
        num_classes=model_cfg.label_set.num_classes,
    )


def _tensorrt_backend(model_cfg: ModelConfig, options: BackendOptions) -> Backend:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise BackendError(f"tensorrt backend: {reason}")
    if options.device == "cpu":
        raise BackendError(
            f"tensorrt backend runs on CUDA only; use {option('backend', 'onnxruntime')} "
            f"for {option('device', 'cpu')}"
        )
    if options.input_size is None and options.onnx is None:
        raise BackendError(
            "tensorrt backend needs a fixed network size (engines are built for one shape): "
            f"set {option('network_size')}"
        )
    from refinenet_ros.backends.tensorrt import TensorRTBackend

    graph = onnx_for(model_cfg, options)
    if options.precision == "int8" and options.onnx is None:
        # Explicit quantisation: the QDQ graph from the weights' ranges (or from the user's
        # calibration frames), symmetric INT8 as TensorRT wants it; no TensorRT calibrator.
        from refinenet_ros.backends.ort_quantize import TENSORRT_QUANT, quantized_cached

        graph = quantized_cached(graph, options, TENSORRT_QUANT, ranges=shipped_ranges(model_cfg, options))
    return TensorRTBackend.from_onnx(graph, options)
