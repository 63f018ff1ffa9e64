"""ResNet-50/101/152 backbone in the torchvision layout (written here, no torchvision).

Why this layout: both reference RefineNet ports put the ResNet directly on the
segmentation model with torchvision's names (``conv1``, ``bn1``, ``layer1..4``,
``layerN.i.conv1..3/bn1..3/downsample.0/.1``) and torchvision's "ResNet v1.5" stride
placement (stride on the 3x3 conv of the first bottleneck of a stage). Keeping both
means ImageNet torchvision weights and published RefineNet checkpoints load as-is.

Spatial sizes: conv1 (7x7, s2, p3) and maxpool (3x3, s2, p1) each give ``ceil(n/2)``,
and so does every stride-2 3x3 conv with padding 1, so for any input size ``H``:
layer1 is ``ceil(H/4)``, layer2 ``ceil(H/8)``, layer3 ``ceil(H/16)``, layer4
``ceil(H/32)``. The decoders rely on that chain and always resize to explicit sizes.
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

__all__ = ["RESNET_LAYERS", "Bottleneck", "ResNet", "ResNetBase", "resnet_stage_channels"]

#: Bottleneck counts per stage, from the ResNet paper (Table 1).
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def resnet_stage_channels() -> tuple[int, int, int, int]:
    """Output channels of layer1..layer4 for the bottleneck ResNets (expansion 4)."""
    return (256, 512, 1024, 2048)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (carries the stride) → 1x1 bottleneck with a projection shortcut."""

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else cast(Tensor, self.downsample(x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return cast(Tensor, self.relu(out + identity))


def _make_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage; the first block projects (1x1 conv + BN) when shape changes."""
    downsample: nn.Module | None = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers: list[nn.Module] = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetBase(nn.Module):
    """The ResNet layers with no ``forward``: a base class for the segmentation models.

    The RefineNet models subclass this instead of holding a ``backbone`` child because
    the reference checkpoints have the backbone at the top level (``layer1.0.conv1``,
    not ``backbone.layer1.0.conv1``). :meth:`resnet_features` returns the four stages.
    """

    #: State-dict key prefixes that belong to the backbone (for checkpoint reports).
    backbone_prefixes: tuple[str, ...] = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        blocks = RESNET_LAYERS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_stage(64, 64, blocks[0], stride=1)
        self.layer2 = _make_stage(256, 128, blocks[1], stride=2)
        self.layer3 = _make_stage(512, 256, blocks[2], stride=2)
        self.layer4 = _make_stage(1024, 512, blocks[3], stride=2)

    def resnet_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return layer1..layer4 outputs (strides 4, 8, 16, 32; 256..2048 channels)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = cast(Tensor, self.layer1(x))
        l2 = cast(Tensor, self.layer2(l1))
        l3 = cast(Tensor, self.layer3(l2))
        l4 = cast(Tensor, self.layer4(l3))
        return l1, l2, l3, l4


class ResNet(ResNetBase):
    """A standalone ResNet feature extractor (used twice by the cascaded RefineNet)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.resnet_features(x)
