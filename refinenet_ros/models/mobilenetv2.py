"""MobileNetV2 encoder in the Light-Weight RefineNet reference's own layout.

This is *not* torchvision's MobileNetV2 layout (``features.N``): the LW-RefineNet
release (``models/mobilenet.py``) registers the stem as ``layer1`` and each of the seven
inverted-residual groups of the MobileNetV2 paper's Table 2 as ``layer2..layer8``, each
block holding one ``output`` Sequential of three conv-BN(-ReLU6) triples. The published
VOC checkpoint is keyed that way (e.g. ``layer3.0.output.1.0.weight``), so we keep it.
There is no final 1x1 conv to 1280 channels: the decoder reads layer3..layer8.

Strides (each stride-2 3x3 conv with padding 1 gives ``ceil(n/2)``): layer1 /2,
layer2 /2, layer3 /4, layer4 /8, layer5 /16, layer6 /16, layer7 /32, layer8 /32.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from .blocks import ConvBNAct

__all__ = ["MOBILENETV2_CONFIG", "InvertedResidualBlock", "MobileNetV2Base", "MobileNetV2Encoder"]

#: (expansion t, output channels c, repeats n, first stride s) per group, paper Table 2.
MOBILENETV2_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidualBlock(nn.Module):
    """Expand (1x1) → depthwise 3x3 (carries the stride) → linear project (1x1).

    Note the reference always has the expansion conv, even at ``t = 1`` (torchvision
    skips it there); that is what the checkpoint holds, so we keep it. The residual is
    used when input and output shapes match.
    """

    def __init__(self, in_planes: int, out_planes: int, expansion_factor: int, stride: int = 1) -> None:
        super().__init__()
        hidden = in_planes * expansion_factor
        self.residual = in_planes == out_planes and stride == 1
        self.output = nn.Sequential(
            ConvBNAct(in_planes, hidden, 1),
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden),
            ConvBNAct(hidden, out_planes, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = cast(Tensor, self.output(x))
        return out + x if self.residual else out


class MobileNetV2Base(nn.Module):
    """MobileNetV2 layers (``layer1..layer8``) without ``forward``.

    A base class rather than a child module so the LW-RefineNet model has the encoder
    keys at the top level, as the reference checkpoint does.
    """

    backbone_prefixes: tuple[str, ...] = tuple(f"layer{i}." for i in range(1, 9))

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = ConvBNAct(3, 32, 3, stride=2)
        in_planes = 32
        for index, (t, c, n, s) in enumerate(MOBILENETV2_CONFIG, start=2):
            blocks: list[nn.Module] = []
            for i in range(n):
                blocks.append(InvertedResidualBlock(in_planes, c, t, stride=s if i == 0 else 1))
                in_planes = c
            self.add_module(f"layer{index}", nn.Sequential(*blocks))

    def mobilenet_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return layer3..layer8 outputs: 24@/4, 32@/8, 64@/16, 96@/16, 160@/32, 320@/32."""
        feats: list[Tensor] = []
        for i in range(1, 9):
            layer = cast(nn.Module, getattr(self, f"layer{i}"))
            x = cast(Tensor, layer(x))
            if i >= 3:
                feats.append(x)
        l3, l4, l5, l6, l7, l8 = feats
        return l3, l4, l5, l6, l7, l8


class MobileNetV2Encoder(MobileNetV2Base):
    """A standalone encoder returning the six feature maps the decoder uses."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.mobilenet_features(x)
