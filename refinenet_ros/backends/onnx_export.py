"""Export :class:`InferencePipeline` to ONNX: uint8 images in, labels + confidence out.

The graph holds the whole per-frame computation (cast, ImageNet normalisation,
NHWC->NCHW, the network, bilinear upsample of the logits, max softmax, argmax), so ONNX
Runtime and TensorRT take camera bytes and hand back only what the node publishes:

* input ``image``: uint8 [N, H, W, 3] RGB;
* outputs ``labels``: int32 [N, H, W] and ``confidence``: float32 [N, H, W].

Shapes are static by default (fastest engines); ``dynamic`` makes N, H and W symbolic
for a TensorRT optimisation profile; ``dynamic_batch`` only N (what the ONNX Runtime
backend uses so one graph serves any batch up to ``max_batch``).

Exporter choice: the TorchScript exporter (``dynamo=False``) plus the onnxscript optimiser
gives the same minimal graph as the dynamo exporter (static LW-MobileNetV2:
Conv/Clip/Add/MaxPool/Resize and the 9 pre/post-processing nodes, no Identity/Shape
leftovers) in a fraction of the time, and keeps H/W truly dynamic where ``torch.export``
specialises them. Dynamo is the fallback when a future torch drops the TorchScript exporter.

Every export is verified: the graph must pass ``onnx.checker.check_model(full_check=True)``,
use only what TensorRT 10's ONNX parser supports
(:func:`~refinenet_ros.backends.tensorrt_support.tensorrt_problems`), and ONNX Runtime's labels
must match PyTorch's on a test input (at a second size too for dynamic graphs, which
catches sizes baked in by tracing).

Graphs are cached by content hash (:func:`export_cached`), so a node restart reuses the
file instead of re-exporting.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from refinenet_ros.backends.base import BackendError
from refinenet_ros.backends.prepare import require_build
from refinenet_ros.backends.tensorrt_support import tensorrt_problems
from refinenet_ros.config import ModelConfig
from refinenet_ros.io import atomic_write_bytes
from refinenet_ros.version import __version__

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("refinenet_ros")

INPUT_NAME = "image"
OUTPUT_NAMES = ("labels", "confidence")
DEFAULT_OPSET = 17
"""Opset 17: inside TensorRT 10.0's supported range (9..20) and ONNX Runtime's, and the
last opset where Reduce* take ``axes`` as an attribute (TensorRT needs them constant)."""
EXPORT_FORMAT = 1
"""Part of the cache key: bump when this module changes what it writes."""
MIN_AGREEMENT = 0.999
"""Fraction of pixels where ONNX Runtime's labels must equal PyTorch's after export."""


@dataclass(frozen=True)
class ExportSpec:
    """Input geometry of an exported graph.

    ``dynamic``: N, H and W symbolic (``height``/``width``/``batch`` are then only the
    tracing example). ``dynamic_batch``: only N symbolic.
    """

    height: int
    width: int
    batch: int = 1
    dynamic: bool = False
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 32:
            raise BackendError(f"export size {self.height}x{self.width}: both sides must be >= 32 pixels")
        if self.batch < 1:
            raise BackendError(f"export batch {self.batch}: must be >= 1")
        if not 13 <= self.opset <= 20:
            raise BackendError(
                f"opset {self.opset}: use 13..20 (TensorRT 10 parses opsets 9..20; the pipeline needs 13+)"
            )

    def describe(self) -> str:
        if self.dynamic:
            return "dynamic NxHxW"
        batch = "N" if self.dynamic_batch else str(self.batch)
        return f"{batch}x{self.height}x{self.width}"


@dataclass(frozen=True)
class ExportResult:
    """A verified ONNX file and what is known about it."""

    path: Path
    sha256: str
    metadata: dict[str, str]
    cached: bool = False
    seconds: float = 0.0
    agreement: float | None = None


def _sha256_file(path: Path) -> str:
    from refinenet_ros.backends.engine_cache import sha256_file

    return sha256_file(path)


def weights_fingerprint(cfg: ModelConfig) -> str:
    """sha256 of the checkpoint, or ``random-init-seed-N`` without one."""
    return _sha256_file(Path(cfg.weights)) if cfg.weights else f"random-init-seed-{cfg.seed}"


def build_metadata(cfg: ModelConfig, spec: ExportSpec, weights: str) -> dict[str, str]:
    """metadata_props: enough to know, from the .onnx alone, what it computes and from what."""
    cfg = cfg.resolved()
    assert cfg.mean is not None and cfg.std is not None
    label_set = cfg.label_set
    return {
        "refinenet_ros.version": __version__,
        "model_name": str(cfg.model),
        "label_set": label_set.name,
        "num_classes": str(label_set.num_classes),
        "label_names": json.dumps(list(label_set.classes)),
        "mean": json.dumps([float(v) for v in cfg.mean]),
        "std": json.dumps([float(v) for v in cfg.std]),
        "checkpoint_sha256": weights if cfg.weights else "",
        "weights": (cfg.weights_name or Path(cfg.weights).name)
        if cfg.weights
        else f"random init (seed {cfg.seed}): labels meaningless",
        "network_size": "dynamic" if spec.dynamic else f"{spec.height}x{spec.width}",
        "dynamic": "NHW" if spec.dynamic else ("N" if spec.dynamic_batch else ""),
        "cascaded": str(cfg.cascaded).lower(),
        "input": f"{INPUT_NAME}: uint8 [N,H,W,3] RGB",
        "outputs": "labels: int32 [N,H,W]; confidence: float32 [N,H,W] (max softmax)",
    } | ({"temperature": repr(cfg.temperature)} if (cfg.temperature or 1.0) != 1.0 else {})


def _dynamic_axes(spec: ExportSpec) -> dict[str, dict[int, str]] | None:
    if spec.dynamic:
        axes = {0: "N", 1: "H", 2: "W"}
    elif spec.dynamic_batch:
        axes = {0: "N"}
    else:
        return None
    return {name: dict(axes) for name in (INPUT_NAME, *OUTPUT_NAMES)}


def _trace_to_onnx(pipeline: nn.Module, example: Any, spec: ExportSpec) -> onnx.ModelProto:
    """TorchScript exporter + onnxscript optimiser; dynamo exporter where TorchScript is gone."""
    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice; the choice is documented above.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        try:
            torch.onnx.export(
                pipeline,
                (example,),
                buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=spec.opset,
                do_constant_folding=True,
                dynamic_axes=_dynamic_axes(spec),
            )
            model = onnx.load_from_string(buf.getvalue())
        except TypeError:  # pragma: no cover - a torch without the TorchScript exporter
            model = _dynamo_export(pipeline, example, spec)
    try:
        import onnxscript.optimizer

        # Folds the exporter's Identity/Constant/Shape leftovers: a smaller graph for
        # TensorRT to parse and the exact node set the TensorRT operator check sees.
        with _quiet_loggers("onnx_ir", "onnxscript"):  # ~80 INFO lines per export otherwise
            model = onnxscript.optimizer.optimize(model)
    except ImportError:  # pragma: no cover - onnxscript is a dependency
        log.debug("onnxscript not installed: graph left unoptimised")
    return model


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise library loggers to WARNING for the duration (their INFO is per-node chatter)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _dynamo_export(pipeline: nn.Module, example: Any, spec: ExportSpec) -> onnx.ModelProto:
    import torch

    dims: dict[int, Any] = {}
    if spec.dynamic or spec.dynamic_batch:
        dims[0] = torch.export.Dim("N", min=1, max=1024)
    if spec.dynamic:
        dims[1] = torch.export.Dim("H", min=32, max=8192)
        dims[2] = torch.export.Dim("W", min=32, max=8192)
    program = torch.onnx.export(
        pipeline,
        (example,),
        None,
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=max(spec.opset, 18),
        dynamic_shapes=({k: v for k, v in dims.items()},) if dims else None,
    )
    assert program is not None
    return program.model_proto


def _name_output_dims(proto: onnx.ModelProto, spec: ExportSpec) -> None:
    """Give the outputs the input's dims (the tracer leaves names like ``Castlabels_dim_1``),
    so consumers read [N,H,W] straight from the graph."""
    dims: list[int | str] = [
        "N" if spec.dynamic or spec.dynamic_batch else spec.batch,
        "H" if spec.dynamic else spec.height,
        "W" if spec.dynamic else spec.width,
    ]
    for output in proto.graph.output:
        for dim, value in zip(output.type.tensor_type.shape.dim, dims, strict=True):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value


def verify_against_torch(
    model_bytes: bytes, pipeline: nn.Module, spec: ExportSpec, *, seed: int = 0
) -> float:
    """Lowest fraction of pixels where ONNX Runtime's labels equal PyTorch's.

    Dynamic graphs are checked at a second, odd size and batch too: a size baked in by
    tracing shows up there as an error or a mismatch.
    """
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    shapes = [(spec.batch, spec.height, spec.width)]
    if spec.dynamic:
        shapes.append((2, spec.height + 13, spec.width + 7))
    elif spec.dynamic_batch:
        shapes.append((2, spec.height, spec.width))
    rng = np.random.default_rng(seed)
    worst = 1.0
    for n, h, w in shapes:
        images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
        labels, confidence = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        with torch.inference_mode():
            ref_labels, ref_conf = pipeline(torch.from_numpy(images))
        if labels.shape != (n, h, w):
            raise BackendError(f"exported graph returned labels {labels.shape} for input {(n, h, w, 3)}")
        agreement = float((labels == ref_labels.numpy()).mean())
        conf_err = float(np.abs(confidence - ref_conf.numpy()).max())
        log.debug("export check %dx%dx%d: labels agree %.5f, max |dconf| %.2e", n, h, w, agreement, conf_err)
        worst = min(worst, agreement)
    return worst


class _CastFirst(nn.Module):
    """Casts the uint8 input before anything else touches it: TensorRT accepts uint8 only
    at the network boundary, so the graph must start with Cast whatever order the wrapped
    pipeline uses (``.float()`` on a float tensor records no node)."""

    def __init__(self, pipeline: nn.Module) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, images: torch.Tensor) -> Any:
        return self.pipeline(images.float())


def export_onnx(
    cfg: ModelConfig,
    spec: ExportSpec,
    out: str | Path,
    *,
    model: nn.Module | None = None,
    verify: bool = True,
) -> ExportResult:
    """Export, check and (atomically) write the graph for ``cfg`` at ``spec`` to ``out``."""
    import onnx
    import torch

    from refinenet_ros.backends.pipeline import InferencePipeline
    from refinenet_ros.config import load_model

    t0 = time.perf_counter()
    cfg = cfg.resolved()
    assert cfg.mean is not None and cfg.std is not None
    weights = weights_fingerprint(cfg)
    net = model if model is not None else load_model(cfg)
    pipeline = InferencePipeline(net.eval(), cfg.mean, cfg.std, cfg.temperature or 1.0).eval()
    example = torch.zeros((spec.batch, spec.height, spec.width, 3), dtype=torch.uint8)
    with torch.no_grad():
        proto = _trace_to_onnx(_CastFirst(pipeline).eval(), example, spec)
    _name_output_dims(proto, spec)
    onnx.helper.set_model_props(proto, build_metadata(cfg, spec, weights))
    proto.producer_name, proto.producer_version = "refinenet_ros", __version__
    proto.doc_string = f"RefineNet segmentation pipeline ({cfg.describe()}), uint8 RGB in, labels out"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BackendError(f"exported graph fails the ONNX checker: {exc}") from exc
    problems = tensorrt_problems(proto)
    if problems:
        raise BackendError("exported graph would not parse in TensorRT 10: " + "; ".join(problems[:5]))
    data = proto.SerializeToString()
    agreement = None
    if verify:
        agreement = verify_against_torch(data, pipeline, spec)
        if agreement < MIN_AGREEMENT:
            raise BackendError(
                f"exported graph disagrees with PyTorch on {1 - agreement:.3%} of pixels "
                f"(limit {1 - MIN_AGREEMENT:.1%}); report this with the model name and size"
            )
    out = Path(out)
    atomic_write_bytes(out, data)
    seconds = time.perf_counter() - t0
    meta = {p.key: p.value for p in proto.metadata_props}
    log.info(
        "exported %s %s -> %s (%.1f MB, %d nodes, %.1f s%s)",
        cfg.model, spec.describe(), out, len(data) / 1e6, len(proto.graph.node), seconds,
        f", labels agree with torch on {agreement:.4%}" if agreement is not None else "",
    )  # fmt: skip
    return ExportResult(out, hashlib.sha256(data).hexdigest(), meta, False, seconds, agreement)


def cache_key(cfg: ModelConfig, spec: ExportSpec, weights: str | None = None) -> str:
    """Content hash of everything the exported bytes depend on."""
    import torch

    cfg = cfg.resolved()
    record = {
        "format": EXPORT_FORMAT,
        "package": __version__,
        "torch": torch.__version__,
        "model": cfg.model,
        "labels": cfg.labels,
        "cascaded": cfg.cascaded,
        "mean": cfg.mean,
        "std": cfg.std,
        "weights": weights if weights is not None else weights_fingerprint(cfg),
        "spec": asdict(spec),
    }
    if (cfg.temperature or 1.0) != 1.0:  # calibrated confidence is another graph
        record["temperature"] = cfg.temperature
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def cached_path(cfg: ModelConfig, spec: ExportSpec, cache_dir: str | Path, key: str) -> Path:
    cfg = cfg.resolved()
    geometry = (
        "dyn" if spec.dynamic else f"{'n' if spec.dynamic_batch else spec.batch}x{spec.height}x{spec.width}"
    )
    return Path(cache_dir) / f"{cfg.model}_{cfg.labels}_{geometry}_{key[:16]}.onnx"


def export_cached(cfg: ModelConfig, spec: ExportSpec, cache_dir: str | Path) -> ExportResult:
    """The cached graph for (model, weights, spec, opset, versions), exporting it if needed."""
    from refinenet_ros.backends.engine_cache import cache_decision, digest_problem, nearest_differences

    weights = weights_fingerprint(cfg)
    key = cache_key(cfg, spec, weights)
    path = cached_path(cfg, spec, cache_dir, key)
    if path.is_file():
        sha = _sha256_file(path)
        problem = digest_problem(path, sha)
        if problem is not None:  # damaged or replaced: never run it
            log.warning("ONNX graph cache: miss: rebuilt because %s -> %s", problem, path)
            require_build(f"ONNX export of {path.name}")
            return _export_and_record(cfg, spec, path)
        try:
            meta = read_metadata(path)
        except Exception as exc:  # unreadable: fall through and re-export over it
            log.warning("cached ONNX %s is unreadable (%s); exporting again", path, exc)
        else:
            log.info(cache_decision("ONNX graph", path, hit=True))
            return ExportResult(path, sha, meta, cached=True)
    # Why no cached graph serves: the newest graph of this model, by its recorded metadata.
    resolved = cfg.resolved()
    others = [p for p in Path(cache_dir).glob(f"{resolved.model}_*.onnx") if "_int8_" not in p.name]
    diffs = nearest_differences(others, build_metadata(cfg, spec, weights), read_metadata)
    if others and not diffs:
        diffs = ["a key field outside the graph's metadata differed (torch, package, opset or export format)"]
    log.info(cache_decision("ONNX graph", path, hit=False, differences=diffs))
    require_build(f"ONNX export of {path.name}")
    return _export_and_record(cfg, spec, path)


def _export_and_record(cfg: ModelConfig, spec: ExportSpec, path: Path) -> ExportResult:
    """Export into the cache and record the graph's content hash beside it."""
    from refinenet_ros.backends.engine_cache import record_digest

    result = export_onnx(cfg, spec, path)
    record_digest(path, result.sha256)
    return result


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file (weights are not loaded)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
