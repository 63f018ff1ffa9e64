"""INT8 as a QDQ graph, for ONNX Runtime, OpenVINO and TensorRT alike.

``onnxruntime.quantization.quantize_static`` inserts QuantizeLinear/DequantizeLinear
pairs (QDQ format, per-channel weight scales) around the ops of :class:`QuantOptions`.
The activation ranges come from one of two places: the weights' own range table (one
(low, high) per tensor, calibrated once when the weights were packed, see
:func:`calibrate_ranges`; no frames are read on the robot, and building the graph takes
about a second), or a calibration pass over the user's frames (``--calib-images`` /
``--calib-bag``, the same sources and preprocessing as every calibration,
:mod:`calibration`). TensorRT takes the same ranges as a symmetric signed-INT8 graph
(:data:`TENSORRT_QUANT`), explicitly quantised: no TensorRT calibrator.

The default op set (Conv, Add, MaxPool, Relu, Clip) keeps
activations INT8 from one convolution to the next; quantising Conv alone leaves the
residual adds and the chained residual pooling converting back and forth, which costs
most of the INT8 gain on this kind of CPU (docs/benchmarks.md has the figures). Only the
network is quantised: the pipeline's input normalisation and its upsampling +
softmax/argmax head stay FP32 (a quantised normalisation Add on the full-size image cost
more than it saved).

The quantised graph is cached beside the FP32 one, keyed by the FP32 graph's sha256, the
ranges' digest or the calibration frames' fingerprint, and the quantisation settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.base import BackendError
from refinenet_ros.backends.calibration import ImageSource, calibration_batches
from refinenet_ros.backends.engine_cache import (
    cache_decision,
    digest_problem,
    nearest_differences,
    record_digest,
    sha256_file,
)
from refinenet_ros.backends.onnx_export import INPUT_NAME
from refinenet_ros.backends.prepare import require_build
from refinenet_ros.errors import option
from refinenet_ros.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import onnx

    from refinenet_ros.backends.base import BackendOptions

log = logging.getLogger("refinenet_ros")

CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")

FAST_OP_TYPES: tuple[str, ...] = ("Conv", "Add", "MaxPool", "Relu", "Clip")
"""Conv plus the ops between convolutions, so activations stay INT8 from conv to conv."""


@dataclass(frozen=True)
class QuantOptions:
    """How the FP32 graph is quantised; every field is part of the cache key.

    ``op_types``: the ONNX ops given QDQ pairs. Conv alone leaves every residual Add and
    every max-pool of the chained residual pooling between a DequantizeLinear and a
    QuantizeLinear, so the graph converts back and forth between convolutions; adding
    Add/MaxPool/Relu keeps activations INT8 from one conv to the next (the measured
    speed-up on this CPU is in docs/benchmarks.md). ``method``: how activation ranges are
    taken from the calibration images (``Percentile`` clips rare outliers, which MinMax
    would stretch every range for). ``keep_fp32``: node-name substrings left unquantised
    (e.g. the classifier), for graphs whose labels need a full-precision head.
    """

    op_types: tuple[str, ...] = FAST_OP_TYPES
    method: str = "Percentile"
    percentile: float = 99.999
    per_channel: bool = True
    keep_fp32: tuple[str, ...] = ()
    activation: str = "QUInt8"
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise BackendError(
                f"int8 calibration method {self.method!r} unknown; "
                f"choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        if not self.op_types:
            raise BackendError("int8 quantisation needs at least one op type (e.g. Conv)")
        if self.activation not in ("QUInt8", "QInt8"):
            raise BackendError(f"int8 activation type {self.activation!r}: QUInt8 or QInt8")

    def settings(self) -> dict[str, Any]:
        """JSON-able description: the cache key and the ``quantization`` graph metadata."""
        return {
            "format": "QDQ",
            "weight": "QInt8",
            "version": 3,  # 3: the pipeline's pre/post-processing is never quantised
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
        }


def _static_size(onnx_path: Path) -> tuple[int, int]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in model.graph.input[0].type.tensor_type.shape.dim
    ]
    if len(dims) != 4 or dims[1] is None or dims[2] is None:
        raise BackendError(
            f"onnxruntime int8 needs a fixed network size to calibrate at: pass {option('network_size')}"
        )
    return int(dims[1]), int(dims[2])


TENSORRT_QUANT = QuantOptions(activation="QInt8", symmetric=True)
"""TensorRT's explicit quantisation takes symmetric signed INT8 only (zero points of 0); the
same activation ranges give it (the scale covers the larger of -low and high)."""

CALIBRATION_CHUNK = 8
"""Frames per calibration pass (a divisor of the frame count, at most this many)."""


def _frames(source: ImageSource, size: tuple[int, int], max_images: int) -> list[npt.NDArray[np.uint8]]:
    # Network-size uint8 frames, held once (100 VGA frames: 90 MB). ORT keeps every
    # intermediate tensor of the images one collect pass sees: all 100 frames of the CamVid
    # model at 360x480 in one pass took 21 GB and the OOM killer. Passes of a few frames
    # (CalibStridedMinMax, which every calibration method honours) merge into the same
    # histograms at a bounded cost.
    frames = [b for _, b in zip(range(max_images), calibration_batches(source, size, 1), strict=False)]
    if not frames:
        raise BackendError(f"int8 calibration got no images from {source.describe()}")
    return frames


class _Reader:
    """Feeds one network-size uint8 image per call, as the backend will see it (ORT's
    CalibrationDataReader protocol, strided)."""

    def __init__(self, frames: list[npt.NDArray[np.uint8]]) -> None:
        self.frames = frames
        self.set_range(0, len(frames))
        self.count = 0

    def __len__(self) -> int:
        return len(self.frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.frames))

    def get_next(self) -> dict[str, npt.NDArray[np.uint8]] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        self.count += 1
        return {INPUT_NAME: self.frames[self._next - 1]}


def _quantize(
    fp32_path: Path,
    out_path: Path,
    options: QuantOptions,
    *,
    frames: list[npt.NDArray[np.uint8]] | None = None,
    ranges: dict[str, Any] | None = None,
    ranges_out: Path | None = None,
) -> int:
    """Quantise ``fp32_path`` to ``out_path`` (not atomically: a temporary path) from
    calibration ``frames`` or a range table; ``ranges_out``: where ORT leaves the ranges it
    calibrated. Returns the number of frames calibrated on (0 with ``ranges``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    with tempfile.TemporaryDirectory(prefix="refinenet_quant_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference + graph optimisation first, as ORT's quantisation guide asks.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        nodes = list(onnx.load(str(pre), load_external_data=False).graph.node)
        excluded = _outside_network(nodes) + _excluded_nodes(nodes, options.keep_fp32, pre.name)
        reader = _Reader(frames) if frames is not None else None
        cache = ranges_out or Path(tmp) / "ranges.json"
        if ranges is not None:
            missing = sorted(ranges_needed(pre, options, excluded) - set(ranges["ranges"]))
            if missing:
                raise RangesMismatch(
                    f"{len(missing)} activation tensors of {fp32_path.name} have no shipped range "
                    f"(e.g. {missing[0]!r}): the graph was exported differently from the one the "
                    "ranges were calibrated on"
                )
            _write_ort_ranges(cache, ranges)
        quantize_static(
            str(pre),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            op_types_to_quantize=list(options.op_types),
            nodes_to_exclude=excluded,
            activation_type=getattr(QuantType, options.activation),
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, options.method),
            extra_options={
                **({"CalibStridedMinMax": _stride(len(frames))} if frames else {}),
                **({"ActivationSymmetric": True, "WeightSymmetric": True} if options.symmetric else {}),
                **({"CalibPercentile": options.percentile} if options.method == "Percentile" else {}),
            },
            calibration_cache_path=str(cache),
        )
        return reader.count if reader is not None else 0


def _stride(count: int) -> int:
    return next(k for k in range(CALIBRATION_CHUNK, 0, -1) if count % k == 0)


class RangesMismatch(BackendError):
    """Shipped INT8 ranges that do not name this graph's tensors (another exporter's names)."""


RANGES_FORMAT = 1
"""Layout of the range table stored with weights; a different one is recalibrated, not read."""


def ranges_needed(graph: Path, options: QuantOptions, excluded: Sequence[str]) -> set[str]:
    """Activation tensors the quantiser needs a range for: every non-constant input and output
    of the quantised op types (``graph`` is the pre-processed FP32 graph)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    skip = set(excluded)
    needed: set[str] = set()
    for node in model.graph.node:
        if node.op_type in options.op_types and node.name not in skip:
            needed |= {t for t in (*node.input, *node.output) if t and t not in constants}
    return needed


def _write_ort_ranges(path: Path, ranges: dict[str, Any]) -> None:
    """The range table as ONNX Runtime's calibration cache (``calibration_cache_path``)."""
    method = str(ranges.get("method", "Percentile"))
    data = {
        name: {"lowest": float(lo), "highest": float(hi), "CLS": "TensorData"}
        for name, (lo, hi) in ranges["ranges"].items()
    }
    payload = {
        "CLS": "TensorsData",
        "data": data,
        "calibration_method": {"CLS": "CalibrationMethod", "value": f"CalibrationMethod.{method}"},
        "smooth_quant": False,
    }
    path.write_text(json.dumps(payload))


def _read_ort_ranges(path: Path) -> dict[str, list[float]]:
    """ONNX Runtime's calibration cache -> {tensor: [low, high]} (the histograms are dropped:
    the QDQ scales need only the range)."""
    data = json.loads(path.read_text())["data"]

    def scalar(v: Any) -> float:
        if isinstance(v, dict):  # {"CLS": "numpy.array", "data": ...}
            v = v["data"]
        return float(np.asarray(v, dtype=np.float64).reshape(-1)[0])

    return {name: [scalar(t["lowest"]), scalar(t["highest"])] for name, t in sorted(data.items())}


def calibrate_ranges(
    fp32_path: Path, source: ImageSource, *, max_images: int = 64, options: QuantOptions = QuantOptions()
) -> dict[str, Any]:
    """INT8 activation ranges of ``fp32_path`` calibrated on ``source``: the small table
    (one (low, high) per tensor) that weights carry so INT8 needs no frames where they run."""
    size = _static_size(fp32_path)
    frames = _frames(source, size, max_images)
    with tempfile.TemporaryDirectory(prefix="refinenet_ranges_") as tmp:
        cache = Path(tmp) / "ranges.json"
        count = _quantize(fp32_path, Path(tmp) / "int8.onnx", options, frames=frames, ranges_out=cache)
        table = _read_ort_ranges(cache)
    settings = options.settings()
    return {
        "format": RANGES_FORMAT,
        "method": options.method,
        "settings": settings,
        "frames": count,
        "source": source.describe(),
        "network_size": list(size),
        "ranges": table,
    }


def quantize_graph(
    fp32_path: Path,
    out_path: Path,
    source: ImageSource | None,
    *,
    max_images: int = 64,
    options: QuantOptions = QuantOptions(),
    ranges: dict[str, Any] | None = None,
) -> Path:
    """Write the QDQ INT8 version of ``fp32_path`` to ``out_path`` (atomically), calibrated on
    ``source`` or built from a shipped range table (``ranges``: no frames read)."""
    if ranges is None and source is None:
        raise BackendError("int8 quantisation needs calibration frames or shipped ranges")
    frames = _frames(source, _static_size(fp32_path), max_images) if ranges is None and source else None
    with tempfile.TemporaryDirectory(prefix="refinenet_quant_") as tmp:
        out_tmp = Path(tmp) / "int8.onnx"
        count = _quantize(fp32_path, out_tmp, options, frames=frames, ranges=ranges)
        if frames is not None and count == 0 and source is not None:
            raise BackendError(f"int8 calibration got no images from {source.describe()}")
        _copy_metadata(fp32_path, out_tmp, options)
        atomic_write_bytes(out_path, out_tmp.read_bytes())
    how = (
        f"shipped ranges of {len(ranges['ranges'])} tensors, no frames"
        if ranges is not None
        else f"{options.method} calibration on {count} images"
    )
    log.info(
        "quantised %s to INT8 (QDQ %s, %s) -> %s", fp32_path.name, "+".join(options.op_types), how, out_path
    )
    return out_path


def _outside_network(nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """Nodes before the first Conv and after the last one, left in FP32.

    They are the InferencePipeline's own ops: uint8 cast, normalisation and layout change
    in front, bilinear logit upsampling and the softmax-max/argmax head behind (ONNX
    graphs are topologically sorted). With Add in the op set, the normalisation Add on the
    full-size image became a QLinearAdd: 10.8 ms of a 174 ms LW-MobileNetV2 640x480 run.
    """
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return []
    return [n.name for i, n in enumerate(nodes) if (i < convs[0] or i > convs[-1]) and n.name]


def _excluded_nodes(nodes: Sequence[onnx.NodeProto], patterns: tuple[str, ...], graph_name: str) -> list[str]:
    """Names of the nodes whose name contains any of ``patterns`` (left in FP32)."""
    if not patterns:
        return []
    excluded = [n.name for n in nodes if any(p in n.name for p in patterns)]
    if not excluded:
        raise BackendError(f"int8 keep_fp32 {list(patterns)} matches no node of {graph_name}")
    return excluded


def _copy_metadata(src: Path, dst: Path, options: QuantOptions) -> None:
    """quantize_static drops metadata_props; the backend reads num_classes etc. from them."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    meta["precision"] = "int8"
    meta["quantization"] = json.dumps(options.settings(), sort_keys=True)
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(dst))


def quantized_cached(
    fp32_path: Path,
    options: BackendOptions,
    quant: QuantOptions = QuantOptions(),
    *,
    ranges: dict[str, Any] | None = None,
) -> Path:
    """The cached INT8 graph for ``fp32_path`` and ``quant``, from the weights' shipped range
    table (``ranges``: no calibration pass) or else calibrated on the options' frames.

    Ranges that do not fit the graph (another exporter named its tensors differently) fall
    back to calibrating, with a warning saying so.
    """
    if ranges is not None and (ranges.get("format") != RANGES_FORMAT or ranges.get("method") != quant.method):
        log.warning(
            "INT8: the weights' ranges are of another format or method; calibrating on frames instead"
        )
        ranges = None
    if ranges is not None:
        digest = hashlib.sha256(json.dumps(ranges["ranges"], sort_keys=True).encode()).hexdigest()
        calib = f"shipped ranges {digest[:16]}"
        source: ImageSource | None = None
    else:
        source = options.calibration.source()
        calib = source.fingerprint()
    record = {"fp32": sha256_file(fp32_path), "calib": calib, "settings": quant.settings()}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    out = fp32_path.with_name(f"{fp32_path.stem}_int8_{key[:12]}.onnx")
    if out.is_file():
        problem = digest_problem(out)  # bit rot in the weights still parses and runs: check the content
        if problem is None:
            log.info("%s", cache_decision("INT8 graph", out, hit=True))
            return out
        log.warning("INT8 graph cache: %s is not used: %s; building it again", out, problem)
    # Why not a neighbour: each INT8 graph keeps its key record beside it (<graph>.json).
    neighbours = fp32_path.parent.glob(f"{fp32_path.stem}_int8_*.json")
    why = nearest_differences(neighbours, record, lambda p: json.loads(p.read_text()))
    log.info("%s", cache_decision("INT8 graph", out, hit=False, differences=why))
    if source is None:
        require_build(f"INT8 graph of {fp32_path.name} from the weights' ranges")
        log.info(
            "building the INT8 graph from the weights' shipped activation ranges (no calibration frames)"
        )
        try:
            path = quantize_graph(fp32_path, out, None, options=quant, ranges=ranges)
        except RangesMismatch as exc:
            log.warning("INT8: %s; calibrating on frames instead", exc)
            return quantized_cached(fp32_path, options, quant)
    else:
        require_build(f"INT8 calibration of {fp32_path.name}")
        log.info("quantising to INT8, calibrating on %s", source.describe())
        path = quantize_graph(fp32_path, out, source, max_images=options.calibration.count, options=quant)
    try:
        atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # the graph is cached; only the next miss's explanation is lost
        log.warning("INT8 graph key record not written (%s)", exc)
    record_digest(path)
    return path
