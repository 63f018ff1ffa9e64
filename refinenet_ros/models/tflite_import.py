"""ImageNet initialisation for the MobileNetV2 encoder from TensorFlow's quantised TFLite model.

TensorFlow's ``mobilenet_v2_1.0_224_quant.tflite`` is the ImageNet-trained MobileNetV2
with BatchNorm folded into each convolution and everything quantised to uint8. Its block
layout is the one LW-RefineNet's encoder uses, so the mapping is positional: the n-th
CONV_2D / DEPTHWISE_CONV_2D of the graph is the n-th convolution of our encoder, in
order, with two adjustments:

* TensorFlow's first inverted-residual block has no 1x1 expansion (t = 1); the reference
  layout always has one, so it gets an identity 1x1 conv. Its input is the stem's ReLU6
  output (already in [0, 6]), so ``ReLU6(identity)`` changes nothing: exact.
* BatchNorm was folded into the weights, so each of our BatchNorms becomes the identity
  (weight 1, running var 1 - eps) with the folded bias as its bias. Fine-tuning then
  trains them like any BatchNorm.

Weights are dequantised as ``(q - zero_point) * scale`` (per tensor or per channel), the
int32 biases the same way. The network expects ``x / 127.5 - 1``, i.e. mean = std = 0.5
on [0, 1] inputs: :data:`TFLITE_MEAN` / :data:`TFLITE_STD`, recorded in every checkpoint
trained from it so inference normalises the same way.

TensorFlow pads stride-2 convolutions "SAME" (one pixel at the bottom/right for even
sizes); PyTorch pads one pixel on each side. The segmentation encoder keeps PyTorch's
symmetric padding (fine-tuning absorbs the one-pixel shift); :func:`mobilenetv2_classifier`
can reproduce TensorFlow's padding exactly, which is how the conversion is proven against
the TFLite interpreter (same top-5, logits within int8 noise).

Reading the file needs the ``tflite`` flatbuffer parser (``pip install .[imagenet]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refinenet_ros.errors import RefineNetRosError

from .blocks import ConvBNAct
from .mobilenetv2 import MobileNetV2Base

__all__ = [
    "TFLITE_MEAN",
    "TFLITE_STD",
    "TFLiteConv",
    "TFLiteImportError",
    "load_mobilenetv2_tflite",
    "mobilenetv2_classifier",
    "read_tflite_convs",
]

TFLITE_MEAN = (0.5, 0.5, 0.5)
TFLITE_STD = (0.5, 0.5, 0.5)

# TFLite TensorType codes we read (schema.fbs).
_FLOAT32, _INT32, _UINT8, _INT8 = 0, 2, 3, 9
_NUMPY = {_FLOAT32: np.float32, _INT32: np.int32, _UINT8: np.uint8, _INT8: np.int8}


class TFLiteImportError(RefineNetRosError, ValueError):
    """The file is not a MobileNetV2 TFLite model we can map; the message says why."""


@dataclass(frozen=True)
class TFLiteConv:
    """One dequantised convolution of the graph: weight in PyTorch layout + bias."""

    name: str
    depthwise: bool
    weight: npt.NDArray[np.float32]  # [out, in/groups, kh, kw]
    bias: npt.NDArray[np.float32]  # [out]
    stride: int


def _dequantise(model: Any, tensor: Any, buffers: Any) -> npt.NDArray[np.float32]:
    ttype = tensor.Type()
    if ttype not in _NUMPY:
        raise TFLiteImportError(f"tensor {tensor.Name().decode()} has unsupported type {ttype}")
    raw = buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(raw, int):  # an empty buffer: activations, not weights
        raise TFLiteImportError(f"tensor {tensor.Name().decode()} holds no constant data")
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy())
    values = np.frombuffer(raw.tobytes(), dtype=_NUMPY[ttype]).reshape(shape)
    if ttype == _FLOAT32:
        return values.astype(np.float32)
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        raise TFLiteImportError(f"tensor {tensor.Name().decode()} is quantised without a scale")
    scale = q.ScaleAsNumpy().astype(np.float64)
    zero = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
    if scale.size > 1:  # per-channel along quantized_dimension
        axis = int(q.QuantizedDimension())
        bshape = [1] * values.ndim
        bshape[axis] = scale.size
        scale, zero = scale.reshape(bshape), zero.reshape(bshape)
    return ((values.astype(np.float64) - zero) * scale).astype(np.float32)


def read_tflite_convs(path: str | Path) -> list[TFLiteConv]:
    """Every CONV_2D / DEPTHWISE_CONV_2D of the file's graph, in execution order, dequantised."""
    try:
        import tflite
    except ImportError:
        raise TFLiteImportError(
            "reading a .tflite file needs the tflite parser: pip install 'refinenet_ros[imagenet]'"
        ) from None
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise TFLiteImportError(f"{path}: {exc.strerror or exc}") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise TFLiteImportError(f"{path}: not a TensorFlow Lite model (no TFL3 identifier)")
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    conv, dwconv = tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D
    out: list[TFLiteConv] = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if kind not in (conv, dwconv):
            continue
        w_t, b_t = graph.Tensors(op.Inputs(1)), graph.Tensors(op.Inputs(2))
        w = _dequantise(model, w_t, model.Buffers)
        b = _dequantise(model, b_t, model.Buffers)
        opts_table = op.BuiltinOptions()
        if kind == conv:
            opts: Any = tflite.Conv2DOptions()
            opts.Init(opts_table.Bytes, opts_table.Pos)
            weight = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        else:
            opts = tflite.DepthwiseConv2DOptions()
            opts.Init(opts_table.Bytes, opts_table.Pos)
            weight = w.transpose(3, 0, 1, 2)  # 1HWC -> C1HW
        name = w_t.Name().decode().split(";")[0]
        out.append(TFLiteConv(name, kind == dwconv, np.ascontiguousarray(weight), b, int(opts.StrideH())))
    return out


def _set_conv_bn(block: ConvBNAct, conv: TFLiteConv) -> None:
    conv_mod = cast(nn.Conv2d, block[0])
    bn = cast(nn.BatchNorm2d, block[1])
    if tuple(conv_mod.weight.shape) != conv.weight.shape:
        raise TFLiteImportError(
            f"{conv.name}: weight {conv.weight.shape} does not fit {tuple(conv_mod.weight.shape)}; "
            "the file is not a width-1.0 MobileNetV2"
        )
    with torch.no_grad():
        conv_mod.weight.copy_(torch.from_numpy(conv.weight))
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.from_numpy(conv.bias))
        cast(Tensor, bn.running_mean).zero_()
        cast(Tensor, bn.running_var).fill_(1.0 - bn.eps)


def _identity_conv_bn(block: ConvBNAct) -> None:
    conv_mod = cast(nn.Conv2d, block[0])
    bn = cast(nn.BatchNorm2d, block[1])
    c = conv_mod.weight.shape[0]
    with torch.no_grad():
        conv_mod.weight.copy_(torch.eye(c).view(c, c, 1, 1))
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        cast(Tensor, bn.running_mean).zero_()
        cast(Tensor, bn.running_var).fill_(1.0 - bn.eps)


def _encoder_blocks(model: MobileNetV2Base) -> list[ConvBNAct | None]:
    """Our encoder's conv slots in TFLite order; None marks the identity expansion."""
    slots: list[ConvBNAct | None] = [model.layer1]
    first = True
    for i in range(2, 9):
        for block in cast(nn.Sequential, getattr(model, f"layer{i}")):
            expand, dw, project = cast(nn.Sequential, block.output)
            slots.extend(
                [None if first else cast(ConvBNAct, expand), cast(ConvBNAct, dw), cast(ConvBNAct, project)]
            )
            first = False
    return slots


def load_mobilenetv2_tflite(model: nn.Module, path: str | Path) -> list[TFLiteConv]:
    """Put the TFLite MobileNetV2's ImageNet weights into ``model``'s encoder (layer1..8).

    Returns the convolutions that were not used by the encoder (the 1x1 to 1280 channels
    and the 1001-way classifier), for :func:`mobilenetv2_classifier`.
    """
    if not isinstance(model, MobileNetV2Base):
        raise TFLiteImportError(
            f"ImageNet TFLite initialisation is for the MobileNetV2 models, not {type(model).__name__}"
        )
    convs = read_tflite_convs(path)
    slots = _encoder_blocks(model)
    needed = sum(1 for s in slots if s is not None)
    if len(convs) < needed:
        raise TFLiteImportError(f"{path}: {len(convs)} convolutions, a MobileNetV2 has {needed + 2}")
    it = iter(convs)
    for slot in slots:
        if slot is not None:
            _set_conv_bn(slot, next(it))
    # TensorFlow's first block has no expansion: ours becomes the identity (exact, see above).
    block0 = cast(nn.Sequential, model.layer2)[0]
    _identity_conv_bn(cast(ConvBNAct, cast(nn.Sequential, block0.output)[0]))
    return list(it)


class _TFSamePad(nn.Module):
    """Pad like TensorFlow's SAME for a stride-2 3x3 conv: extra pixel bottom/right."""

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph = 1 if h % 2 == 0 else 2
        pw = 1 if w % 2 == 0 else 2
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _Classifier(nn.Module):
    def __init__(self, encoder: MobileNetV2Base, head: list[TFLiteConv]) -> None:
        super().__init__()
        self.encoder = encoder
        last, logits = head[0], head[1]
        self.conv_last = ConvBNAct(320, last.weight.shape[0], 1)
        _set_conv_bn(self.conv_last, last)
        self.logits = nn.Conv2d(logits.weight.shape[1], logits.weight.shape[0], 1)
        with torch.no_grad():
            self.logits.weight.copy_(torch.from_numpy(logits.weight))
            cast(Tensor, self.logits.bias).copy_(torch.from_numpy(logits.bias))

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encoder.mobilenet_features(x)
        y = self.conv_last(feats[-1])
        y = F.adaptive_avg_pool2d(y, 1)
        return cast(Tensor, self.logits(y)).flatten(1)


def mobilenetv2_classifier(path: str | Path, *, tf_padding: bool = True) -> nn.Module:
    """The full ImageNet classifier (1001 logits, index 0 = background) from the TFLite file.

    Takes NCHW float RGB normalised with :data:`TFLITE_MEAN` / :data:`TFLITE_STD`.
    ``tf_padding`` reproduces TensorFlow's SAME padding on the stride-2 convolutions, so
    the logits match the TFLite interpreter's up to its int8 activation rounding.
    """
    encoder = MobileNetV2Base()
    head = load_mobilenetv2_tflite(encoder, path)
    if len(head) != 2:
        raise TFLiteImportError(f"{path}: expected 2 convolutions after the encoder, found {len(head)}")
    if tf_padding:
        for m in encoder.modules():
            if isinstance(m, ConvBNAct):
                conv = cast(nn.Conv2d, m[0])
                if conv.stride[0] == 2:
                    conv.padding = (0, 0)
                    m.insert(0, _TFSamePad())
    return _Classifier(encoder, head).eval()
