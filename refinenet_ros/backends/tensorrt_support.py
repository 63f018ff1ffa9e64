"""Which ONNX graphs TensorRT 10's ONNX parser accepts, checked without TensorRT.

Every export is checked here (:func:`tensorrt_problems`), so a graph that would fail on the
robot's engine build fails on the developer's machine, where TensorRT cannot be installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["TENSORRT_SUPPORTED_OPS", "tensorrt_problems"]

# Operators the TensorRT 10 ONNX parser supports: the rows marked "Y" in onnx-tensorrt's
# docs/operators.md for TensorRT 10.15, minus the LLM-era additions (Attention,
# RotaryEmbedding, RMSNormalization, TensorScatter) and the signal ops (window functions,
# STFT). Everything our graphs emit (Conv, Relu/Clip, Add, MaxPool, Resize, Cast,
# Transpose, Mul, Sub, Exp, ReduceMax/ReduceSum, ArgMax, Reciprocal and the shape ops of
# dynamic graphs) is in the TensorRT 8.5 matrix already, so it parses on every TensorRT 10.
_TENSORRT_OPS_TABLE = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
"""
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset(_TENSORRT_OPS_TABLE.split())
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT 10's ONNX parser would reject ``model`` (empty when it would not).

    Checks the operator list and the restrictions our graphs could plausibly hit:
    Resize modes, MaxPool/AveragePool dilations, Reduce axes given as constants, and
    uint8 tensors anywhere but the graph's inputs/outputs.
    """
    import onnx

    problems: list[str] = []
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    for node in graph.node:
        where = f"{node.op_type} node {node.name or '?'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        if node.op_type not in TENSORRT_SUPPORTED_OPS:
            problems.append(f"{where}: operator not supported by the TensorRT 10 ONNX parser")
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize":
            mode = attrs.get("mode", b"nearest")
            coords = attrs.get("coordinate_transformation_mode", b"half_pixel")
            mode = mode.decode() if isinstance(mode, bytes) else str(mode)
            coords = coords.decode() if isinstance(coords, bytes) else str(coords)
            if mode not in _RESIZE_MODES:
                problems.append(f"{where}: Resize mode {mode!r} (TensorRT: nearest|linear)")
            if coords not in _RESIZE_COORDINATES:
                problems.append(f"{where}: coordinate_transformation_mode {coords!r} unsupported")
            if attrs.get("antialias", 0):
                problems.append(f"{where}: antialiased Resize unsupported")
        if node.op_type in ("MaxPool", "AveragePool", "LpPool") and any(
            d != 1 for d in attrs.get("dilations", [])
        ):
            problems.append(f"{where}: pooling dilations must be 1")
        reduce_axes = node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1]
        if reduce_axes and node.input[1] not in constants:
            problems.append(f"{where}: axes input must be a constant")
    io_names = {v.name for v in graph.input} | {v.name for v in graph.output}
    typed = list(graph.value_info) + list(graph.input) + list(graph.output)
    for value in typed:
        if value.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and value.name not in io_names:
            problems.append(f"tensor {value.name}: uint8 is only allowed as a network input/output")
    return problems
