"""INT8 for the ONNX Runtime backend: static QDQ quantisation calibrated on real images.

``onnxruntime.quantization.quantize_static`` inserts QuantizeLinear/DequantizeLinear
pairs (QDQ format, per-channel weight scales) around the ops of :class:`QuantOptions`,
with activation ranges measured by running the FP32 graph on calibration images — the
same sources and the same preprocessing as TensorRT's INT8 calibration
(:mod:`calibration`). The default op set (Conv, Add, MaxPool, Relu, Clip) keeps
activations INT8 from one convolution to the next; quantising Conv alone leaves the
residual adds and the chained residual pooling converting back and forth, which costs
most of the INT8 gain on this kind of CPU (docs/benchmarks.md has the figures). Only the
network is quantised: the pipeline's input normalisation and its upsampling +
softmax/argmax head stay FP32 (a quantised normalisation Add on the full-size image cost
more than it saved).

The quantised graph is cached beside the FP32 one, keyed by the FP32 graph's sha256, the
calibration fingerprint and the quantisation settings.
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

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise BackendError(
                f"int8 calibration method {self.method!r} unknown; "
                f"choose one of {', '.join(CALIBRATION_METHODS)}"
            )
        if not self.op_types:
            raise BackendError("int8 quantisation needs at least one op type (e.g. Conv)")

    def settings(self) -> dict[str, Any]:
        """JSON-able description: the cache key and the ``quantization`` graph metadata."""
        return {
            "format": "QDQ",
            "activation": "QUInt8",
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
            "onnxruntime int8 needs a fixed network size to calibrate at: pass --network-size H W "
            "(network_size parameter)"
        )
    return int(dims[1]), int(dims[2])


CALIBRATION_CHUNK = 8
"""Frames per calibration pass (a divisor of the frame count, at most this many)."""


def quantize_graph(
    fp32_path: Path,
    out_path: Path,
    source: ImageSource,
    *,
    max_images: int = 64,
    options: QuantOptions = QuantOptions(),
) -> Path:
    """Write the QDQ INT8 version of ``fp32_path`` to ``out_path`` (atomically)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    size = _static_size(fp32_path)

    # Network-size uint8 frames, held once (100 VGA frames: 90 MB). ORT keeps every
    # intermediate tensor of the images one collect pass sees: all 100 frames of the CamVid
    # model at 360x480 in one pass took 21 GB and the OOM killer. Passes of a few frames
    # (CalibStridedMinMax, which every calibration method honours) merge into the same
    # histograms at a bounded cost.
    frames = [b for _, b in zip(range(max_images), calibration_batches(source, size, 1), strict=False)]
    if not frames:
        raise BackendError(f"int8 calibration got no images from {source.describe()}")
    stride = next(k for k in range(CALIBRATION_CHUNK, 0, -1) if len(frames) % k == 0)

    class Reader(CalibrationDataReader):
        """Feeds one network-size uint8 image per call, as the backend will see it."""

        def __init__(self) -> None:
            self.set_range(0, len(frames))
            self.count = 0

        def __len__(self) -> int:
            return len(frames)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next, self._end = start_index, min(end_index, len(frames))

        def get_next(self) -> dict[str, npt.NDArray[np.uint8]] | None:
            if self._next >= self._end:
                return None
            self._next += 1
            self.count += 1
            return {INPUT_NAME: frames[self._next - 1]}

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="refinenet_quant_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out_tmp = Path(tmp) / "int8.onnx"
        # Shape inference + graph optimisation first, as ORT's quantisation guide asks.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        nodes = list(onnx.load(str(pre), load_external_data=False).graph.node)
        quantize_static(
            str(pre),
            str(out_tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            op_types_to_quantize=list(options.op_types),
            nodes_to_exclude=_outside_network(nodes) + _excluded_nodes(nodes, options.keep_fp32, pre.name),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, options.method),
            extra_options={
                "CalibStridedMinMax": stride,
                **({"CalibPercentile": options.percentile} if options.method == "Percentile" else {}),
            },
        )
        if reader.count == 0:
            raise BackendError(f"int8 calibration got no images from {source.describe()}")
        _copy_metadata(fp32_path, out_tmp, options)
        atomic_write_bytes(out_path, out_tmp.read_bytes())
    log.info(
        "quantised %s to INT8 (QDQ %s, %s calibration on %d images) -> %s",
        fp32_path.name,
        "+".join(options.op_types),
        options.method,
        reader.count,
        out_path,
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


def quantized_cached(fp32_path: Path, options: BackendOptions, quant: QuantOptions = QuantOptions()) -> Path:
    """The cached INT8 graph for ``fp32_path``, the options' calibration data and ``quant``."""
    source = options.calibration.source()
    record = {"fp32": sha256_file(fp32_path), "calib": source.fingerprint(), "settings": quant.settings()}
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
    require_build(f"INT8 calibration of {fp32_path.name}")
    log.info("quantising to INT8, calibrating on %s", source.describe())
    path = quantize_graph(fp32_path, out, source, max_images=options.calibration.count, options=quant)
    try:
        atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:  # the graph is cached; only the next miss's explanation is lost
        log.warning("INT8 graph key record not written (%s)", exc)
    record_digest(path)
    return path
