"""RefineNet building blocks: RCU chains, chained residual pooling, fusion helpers.

Sub-module and parameter names follow the released reference code (DrSleep's
``refinenet-pytorch`` and ``light-weight-refinenet``, ``utils/layer_factory.py``)
exactly, so that published checkpoints load without renaming:

* an RCU chain registers ``"{i}_conv"`` (3x3, with bias) and
  ``"{i}_conv_relu_varout_dimred"`` (3x3, no bias) for ``i = 1..n_blocks``;
* chained residual pooling registers ``"{i}_outvar_dimred"`` (3x3 in RefineNet,
  1x1 in Light-Weight RefineNet, no bias) for ``i = 1..n_stages``;
* the reference wraps each of them in a one-element ``nn.Sequential``, which is why
  keys look like ``adapt_stage1_b.0.1_conv.weight``; :func:`wrap` reproduces that.

The code here is written from the papers and from reading that code; it shares
names, not implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChainedResidualPooling",
    "ConvBNAct",
    "RCUChain",
    "RefineNetBlock",
    "conv1x1",
    "conv3x3",
    "upsample_to",
    "wrap",
]


def conv3x3(in_planes: int, out_planes: int, *, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with padding 1 (keeps the spatial size at stride 1)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_planes: int, out_planes: int, *, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution: the Light-Weight RefineNet replaces every decoder 3x3 with this."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=bias)


def wrap(module: nn.Module) -> nn.Sequential:
    """Put ``module`` in a one-element ``nn.Sequential``.

    The reference builds every RCU/CRP through ``nn.Sequential(*[block])``, which adds a
    ``.0.`` level to the state-dict keys; checkpoints only load if we keep it.
    """
    return nn.Sequential(module)


def upsample_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinearly resize ``x`` to an explicit ``size`` with ``align_corners=True``.

    Always an explicit target size (never a scale factor) so that odd feature sizes from
    the ceil-rounding stride chain line up exactly with the map they are summed with;
    ``align_corners=True`` is what the reference models were trained with.
    """
    if torch.jit.is_tracing():
        # ONNX export: keep the sizes symbolic (int() would bake the example's sizes into
        # the graph and break exports with dynamic H/W). Touched by the backends owner.
        return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=True)
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


class RCUChain(nn.Module):
    """``n_blocks`` residual conv units applied one after the other (no BatchNorm).

    One unit is ``x + conv3x3_nobias(relu(conv3x3_bias(relu(x))))`` (RefineNet paper,
    Fig. 2b; the reference's ``RCUBlock`` with two stages). The ReLUs are not in-place:
    the unit's input is also its residual.
    """

    def __init__(self, in_planes: int, out_planes: int, n_blocks: int) -> None:
        super().__init__()
        if in_planes != out_planes:
            # The residual sum needs equal widths; the reference only ever uses equal ones.
            raise ValueError(f"RCUChain needs in_planes == out_planes, got {in_planes} != {out_planes}")
        self.n_blocks = n_blocks
        for i in range(1, n_blocks + 1):
            self.add_module(f"{i}_conv", conv3x3(in_planes, out_planes, bias=True))
            self.add_module(f"{i}_conv_relu_varout_dimred", conv3x3(out_planes, out_planes, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.n_blocks + 1):
            first = cast(nn.Conv2d, getattr(self, f"{i}_conv"))
            second = cast(nn.Conv2d, getattr(self, f"{i}_conv_relu_varout_dimred"))
            x = x + second(F.relu(first(F.relu(x))))
        return x


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling: ``n_stages`` of maxpool(5, stride 1, pad 2) then conv.

    Each stage pools the previous stage's output (the chain) and its result is added to
    the running sum, so the block gathers context from ever larger windows while the
    identity path keeps the input. There is no ReLU inside: the reference applies one
    ReLU to the block's input (after fusion), and that is done by the caller.
    ``kernel_size`` is 3 for RefineNet and 1 for Light-Weight RefineNet.
    """

    def __init__(self, in_planes: int, out_planes: int, n_stages: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
        if in_planes != out_planes:
            raise ValueError(f"CRP needs in_planes == out_planes, got {in_planes} != {out_planes}")
        self.n_stages = n_stages
        make = conv3x3 if kernel_size == 3 else conv1x1
        for i in range(1, n_stages + 1):
            self.add_module(f"{i}_outvar_dimred", make(in_planes, out_planes, bias=False))
        self.maxpool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for i in range(1, self.n_stages + 1):
            conv = cast(nn.Conv2d, getattr(self, f"{i}_outvar_dimred"))
            top = conv(self.maxpool(top))
            x = x + top
        return x


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm (+ ReLU6): the MobileNetV2 reference's ``convbnrelu``.

    A ``Sequential`` subclass so the state-dict keys are ``.0.weight`` (conv) and
    ``.1.weight/.1.running_mean`` (BN), as in the released MobileNetV2 checkpoints.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_planes,
                out_planes,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_planes, eps=1e-5, momentum=0.1),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class _InputPath(nn.Module):
    """One backbone input of a generic :class:`RefineNetBlock`.

    Adapt conv (3x3, no bias) to the block width, two RCUs, then the multi-resolution
    fusion conv (3x3, no bias) applied at the path's own resolution. The fusion conv is
    omitted when the block has a single input, as in the reference's RefineNet-4.
    """

    def __init__(self, in_planes: int, planes: int, *, fuse: bool) -> None:
        super().__init__()
        self.adapt = conv3x3(in_planes, planes, bias=False)
        self.rcu = RCUChain(planes, planes, 2)
        self.fuse: nn.Module = conv3x3(planes, planes, bias=False) if fuse else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self.fuse(self.rcu(self.adapt(x))))


class RefineNetBlock(nn.Module):
    """A general multi-input RefineNet block, used by the cascaded variant.

    The non-cascaded models keep the reference's flat attribute names instead (so that
    published checkpoints load); this class is the same computation for any number of
    inputs, which the 4-cascaded 2-scale RefineNet needs (2 or 3 inputs per block):

    * each backbone feature: adapt conv → 2 RCUs → fusion conv (own resolution);
    * the previous block's output (if any): fusion conv only, from ``prev_planes`` —
      the reference likewise gives that path no RCUs
      (``mflow_conv_g{k}_b3_joint_varout_dimred`` is its fusion conv);
    * upsample everything to the largest input (bilinear, ``align_corners=True``), sum,
      ReLU, chained residual pooling (4 stages), 3 output RCUs.
    """

    def __init__(self, in_planes: Sequence[int], planes: int, *, prev_planes: int | None = None) -> None:
        super().__init__()
        n_inputs = len(in_planes) + (prev_planes is not None)
        if not in_planes:
            raise ValueError("RefineNetBlock needs at least one backbone input")
        fuse = n_inputs > 1
        self.paths = nn.ModuleList(_InputPath(c, planes, fuse=fuse) for c in in_planes)
        self.prev_fuse: nn.Module | None = (
            conv3x3(prev_planes, planes, bias=False) if prev_planes is not None else None
        )
        self.crp = ChainedResidualPooling(planes, planes, 4, kernel_size=3)
        self.out_rcu = RCUChain(planes, planes, 3)

    def forward(self, features: Sequence[Tensor], prev: Tensor | None = None) -> Tensor:
        if len(features) != len(self.paths):
            raise ValueError(f"expected {len(self.paths)} backbone features, got {len(features)}")
        if (prev is None) != (self.prev_fuse is None):
            raise ValueError("prev must be given exactly when the block was built with prev_planes")
        outs = [path(f) for path, f in zip(self.paths, features, strict=True)]
        if prev is not None and self.prev_fuse is not None:
            outs.append(self.prev_fuse(prev))
        # Largest spatial map wins; ties keep the first (the highest-resolution backbone).
        target = max((o.shape[-2:] for o in outs), key=lambda s: int(s[0]) * int(s[1]))
        total = upsample_to(outs[0], target)
        for o in outs[1:]:
            total = total + upsample_to(o, target)
        x = F.relu(total)
        x = self.crp(x)
        return cast(Tensor, self.out_rcu(x))
