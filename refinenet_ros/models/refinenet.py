"""RefineNet and Light-Weight RefineNet models, their metadata, and ``build_model``.

Sources (architecture and parameter names; the code here is our own):

* RefineNet — G. Lin, A. Milan, C. Shen, I. Reid, "RefineNet: Multi-Path Refinement
  Networks for High-Resolution Semantic Segmentation", CVPR 2017 (arXiv:1611.06612);
  PyTorch port of the released models: https://github.com/DrSleep/refinenet-pytorch
* Light-Weight RefineNet — V. Nekrasov, C. Shen, I. Reid, "Light-Weight RefineNet for
  Real-Time Semantic Segmentation", BMVC 2018 (arXiv:1810.03272);
  https://github.com/DrSleep/light-weight-refinenet

Every model takes a normalised float NCHW RGB batch (``/255`` then ImageNet mean/std)
and returns logits of shape ``[N, num_classes, ceil(H/4), ceil(W/4)]`` for any ``H, W``.
Parameter names match the reference code so that published checkpoints load unchanged
(see :mod:`refinenet_ros.models.checkpoint`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refinenet_ros.model_specs import MODEL_NAMES, MODEL_SPECS, ModelSpec

from .blocks import ChainedResidualPooling, RCUChain, RefineNetBlock, conv1x1, conv3x3, upsample_to, wrap
from .mobilenetv2 import MobileNetV2Base
from .resnet import ResNet, ResNetBase, resnet_stage_channels

__all__ = [
    "CASCADE_SCALES",
    "CascadedRefineNet",
    "LWRefineNet",
    "LWRefineNetMobileNetV2",
    "RefineNet",
    "build_model",
    "count_parameters",
]

#: Input scales of the two backbones of the 4-cascaded 2-scale RefineNet (paper Fig. 7c).
CASCADE_SCALES: tuple[float, float] = (1.2, 0.6)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running stats are buffers, not counted).

    Shared parameters are counted once, as ``model.parameters()`` yields them once.
    """
    return sum(p.numel() for p in model.parameters())


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


class RefineNet(ResNetBase):
    """4-cascaded single-scale RefineNet on a ResNet-50/101/152 (the released model).

    Blocks are numbered as in the reference code: ``g1``/``outl1``/``stage1`` is the
    deepest (layer4, 1/32, 512 channels), ``g4`` the finest (layer1, 1/4). Per block:

    * backbone path: 3x3 adapt conv ``p_ims1d2_outl{k}_dimred`` (no bias) and 2 RCUs
      ``adapt_stage{k}_b``; for k > 1 its fusion conv
      ``adapt_stage{k}_b2_joint_varout_dimred`` (3x3, at its own resolution);
    * the previous block's output enters through its fusion conv
      ``mflow_conv_g{k-1}_b3_joint_varout_dimred`` (3x3 at the coarse resolution), is
      bilinearly upsampled (``align_corners=True``) to the explicit size of this stage,
      and summed; then one ReLU (the reference's placement: after the sum, before
      pooling; block 1 has a single input and gets the ReLU after its RCUs);
    * chained residual pooling ``mflow_conv_g{k}_pool`` (4 stages, 3x3 convs) and 3
      output RCUs ``mflow_conv_g{k}_b``.

    Dropout (default 0.5) is applied to the layer3 and layer4 features and before the
    3x3 classifier ``clf_conv`` (with bias), as in the reference; it is inactive in
    ``eval()``. Output stride 4.
    """

    classifier_key: str = "clf_conv"
    cascaded: bool = False

    def __init__(self, depth: int, num_classes: int, *, dropout: float = 0.5) -> None:
        super().__init__(depth)
        self.num_classes = _check_num_classes(num_classes)
        self.do = nn.Dropout(p=dropout)
        c1, c2, c3, c4 = resnet_stage_channels()

        self.p_ims1d2_outl1_dimred = conv3x3(c4, 512)
        self.adapt_stage1_b = wrap(RCUChain(512, 512, 2))
        self.mflow_conv_g1_pool = wrap(ChainedResidualPooling(512, 512, 4, kernel_size=3))
        self.mflow_conv_g1_b = wrap(RCUChain(512, 512, 3))
        self.mflow_conv_g1_b3_joint_varout_dimred = conv3x3(512, 256)

        self.p_ims1d2_outl2_dimred = conv3x3(c3, 256)
        self.adapt_stage2_b = wrap(RCUChain(256, 256, 2))
        self.adapt_stage2_b2_joint_varout_dimred = conv3x3(256, 256)
        self.mflow_conv_g2_pool = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=3))
        self.mflow_conv_g2_b = wrap(RCUChain(256, 256, 3))
        self.mflow_conv_g2_b3_joint_varout_dimred = conv3x3(256, 256)

        self.p_ims1d2_outl3_dimred = conv3x3(c2, 256)
        self.adapt_stage3_b = wrap(RCUChain(256, 256, 2))
        self.adapt_stage3_b2_joint_varout_dimred = conv3x3(256, 256)
        self.mflow_conv_g3_pool = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=3))
        self.mflow_conv_g3_b = wrap(RCUChain(256, 256, 3))
        self.mflow_conv_g3_b3_joint_varout_dimred = conv3x3(256, 256)

        self.p_ims1d2_outl4_dimred = conv3x3(c1, 256)
        self.adapt_stage4_b = wrap(RCUChain(256, 256, 2))
        self.adapt_stage4_b2_joint_varout_dimred = conv3x3(256, 256)
        self.mflow_conv_g4_pool = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=3))
        self.mflow_conv_g4_b = wrap(RCUChain(256, 256, 3))

        self.clf_conv = conv3x3(256, self.num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        l1, l2, l3, l4 = self.resnet_features(x)
        l4 = self.do(l4)
        l3 = self.do(l3)

        x4 = F.relu(self.adapt_stage1_b(self.p_ims1d2_outl1_dimred(l4)))
        x4 = self.mflow_conv_g1_b(self.mflow_conv_g1_pool(x4))
        x4 = upsample_to(self.mflow_conv_g1_b3_joint_varout_dimred(x4), l3.shape[-2:])

        x3 = self.adapt_stage2_b2_joint_varout_dimred(self.adapt_stage2_b(self.p_ims1d2_outl2_dimred(l3)))
        x3 = F.relu(x3 + x4)
        x3 = self.mflow_conv_g2_b(self.mflow_conv_g2_pool(x3))
        x3 = upsample_to(self.mflow_conv_g2_b3_joint_varout_dimred(x3), l2.shape[-2:])

        x2 = self.adapt_stage3_b2_joint_varout_dimred(self.adapt_stage3_b(self.p_ims1d2_outl3_dimred(l2)))
        x2 = F.relu(x2 + x3)
        x2 = self.mflow_conv_g3_b(self.mflow_conv_g3_pool(x2))
        x2 = upsample_to(self.mflow_conv_g3_b3_joint_varout_dimred(x2), l1.shape[-2:])

        x1 = self.adapt_stage4_b2_joint_varout_dimred(self.adapt_stage4_b(self.p_ims1d2_outl4_dimred(l1)))
        x1 = F.relu(x1 + x2)
        x1 = self.mflow_conv_g4_b(self.mflow_conv_g4_pool(x1))
        return cast(Tensor, self.clf_conv(self.do(x1)))


class LWRefineNet(ResNetBase):
    """Light-Weight RefineNet on a ResNet-50/101/152.

    Same cascade as :class:`RefineNet` with the LW paper's simplifications, following
    the reference code: no RCUs at all, every decoder conv 1x1 (no bias), chained
    residual pooling with 1x1 convs, no dropout anywhere; the classifier ``clf_conv``
    stays 3x3 with bias. ReLU placement as in RefineNet (after each fusion sum, and after
    the adapt conv of the single-input deepest block). Output stride 4.
    """

    classifier_key: str = "clf_conv"
    cascaded: bool = False

    def __init__(self, depth: int, num_classes: int) -> None:
        super().__init__(depth)
        self.num_classes = _check_num_classes(num_classes)
        c1, c2, c3, c4 = resnet_stage_channels()

        self.p_ims1d2_outl1_dimred = conv1x1(c4, 512)
        self.mflow_conv_g1_pool = wrap(ChainedResidualPooling(512, 512, 4, kernel_size=1))
        self.mflow_conv_g1_b3_joint_varout_dimred = conv1x1(512, 256)

        self.p_ims1d2_outl2_dimred = conv1x1(c3, 256)
        self.adapt_stage2_b2_joint_varout_dimred = conv1x1(256, 256)
        self.mflow_conv_g2_pool = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))
        self.mflow_conv_g2_b3_joint_varout_dimred = conv1x1(256, 256)

        self.p_ims1d2_outl3_dimred = conv1x1(c2, 256)
        self.adapt_stage3_b2_joint_varout_dimred = conv1x1(256, 256)
        self.mflow_conv_g3_pool = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))
        self.mflow_conv_g3_b3_joint_varout_dimred = conv1x1(256, 256)

        self.p_ims1d2_outl4_dimred = conv1x1(c1, 256)
        self.adapt_stage4_b2_joint_varout_dimred = conv1x1(256, 256)
        self.mflow_conv_g4_pool = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))

        self.clf_conv = conv3x3(256, self.num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        l1, l2, l3, l4 = self.resnet_features(x)

        x4 = F.relu(self.p_ims1d2_outl1_dimred(l4))
        x4 = self.mflow_conv_g1_pool(x4)
        x4 = upsample_to(self.mflow_conv_g1_b3_joint_varout_dimred(x4), l3.shape[-2:])

        x3 = self.adapt_stage2_b2_joint_varout_dimred(self.p_ims1d2_outl2_dimred(l3))
        x3 = self.mflow_conv_g2_pool(F.relu(x3 + x4))
        x3 = upsample_to(self.mflow_conv_g2_b3_joint_varout_dimred(x3), l2.shape[-2:])

        x2 = self.adapt_stage3_b2_joint_varout_dimred(self.p_ims1d2_outl3_dimred(l2))
        x2 = self.mflow_conv_g3_pool(F.relu(x2 + x3))
        x2 = upsample_to(self.mflow_conv_g3_b3_joint_varout_dimred(x2), l1.shape[-2:])

        x1 = self.adapt_stage4_b2_joint_varout_dimred(self.p_ims1d2_outl4_dimred(l1))
        x1 = self.mflow_conv_g4_pool(F.relu(x1 + x2))
        return cast(Tensor, self.clf_conv(x1))


class LWRefineNetMobileNetV2(MobileNetV2Base):
    """Light-Weight RefineNet on MobileNetV2, with the reference's own decoder names.

    The reference ``MBv2`` does not reuse the ResNet names: the decoder is ``conv8``..
    ``conv3`` (1x1 projections of layer8..layer3 to 256), ``crp4``..``crp1`` (4-stage
    1x1 chained residual pooling), ``conv_adapt4``..``conv_adapt2`` (1x1 before each
    upsample) and ``segm`` (3x3 classifier with bias). Published checkpoints use these
    keys, so we keep them. The four fusion levels are /32 (layer8 + layer7), /16
    (layer6 + layer5 + previous), /8 (layer4 + previous), /4 (layer3 + previous); each
    sum is followed by ReLU6, the reference's activation throughout this model.
    """

    classifier_key: str = "segm"
    cascaded: bool = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.conv8 = conv1x1(320, 256)
        self.conv7 = conv1x1(160, 256)
        self.conv6 = conv1x1(96, 256)
        self.conv5 = conv1x1(64, 256)
        self.conv4 = conv1x1(32, 256)
        self.conv3 = conv1x1(24, 256)
        self.crp4 = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))
        self.crp3 = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))
        self.crp2 = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))
        self.crp1 = wrap(ChainedResidualPooling(256, 256, 4, kernel_size=1))
        self.conv_adapt4 = conv1x1(256, 256)
        self.conv_adapt3 = conv1x1(256, 256)
        self.conv_adapt2 = conv1x1(256, 256)
        self.segm = conv3x3(256, self.num_classes, bias=True)
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        l3, l4, l5, l6, l7, l8 = self.mobilenet_features(x)
        y = self.relu(self.conv8(l8) + self.conv7(l7))
        y = self.conv_adapt4(self.crp4(y))
        y = upsample_to(y, l6.shape[-2:])

        y = self.relu(self.conv5(l5) + self.conv6(l6) + y)
        y = self.conv_adapt3(self.crp3(y))
        y = upsample_to(y, l4.shape[-2:])

        y = self.relu(self.conv4(l4) + y)
        y = self.conv_adapt2(self.crp2(y))
        y = upsample_to(y, l3.shape[-2:])

        y = self.relu(self.conv3(l3) + y)
        y = self.crp1(y)
        return cast(Tensor, self.segm(y))


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _scaled_size(n: int, scale: float) -> int:
    """Round-half-up rescaled length, at least 1 pixel."""
    return max(1, math.floor(n * scale + 0.5))


class CascadedRefineNet(nn.Module):
    """The paper's 4-cascaded 2-scale RefineNet (Lin et al. 2017, Sec. 3.2, Fig. 7c).

    What is built, and why:

    * Two **independent** ResNets (``encoders.0`` and ``encoders.1``, same depth, no
      weight sharing), as in the paper: the input is bilinearly resized
      (``align_corners=True``) by 1.2 for the first and 0.6 for the second
      (:data:`CASCADE_SCALES`), sizes rounded half-up.
    * Four :class:`~refinenet_ros.models.blocks.RefineNetBlock` s. RefineNet-4
      (``refine4``) takes layer4 of both ResNets (2 inputs, 512 channels); RefineNet-k,
      k = 3, 2, 1, takes stage k of both ResNets plus the previous block's output
      (3 inputs, 256 channels). Each backbone input has its own 3x3 adapt conv, 2 RCUs
      and 3x3 fusion conv; the previous block's output gets only a fusion conv, as in
      the reference single-scale model (whose ``mflow_conv_g*_b3_joint_varout_dimred``
      is exactly that conv). Fusion upsamples to the largest input (the 1.2 path), sums,
      ReLU, then 4-stage chained residual pooling (3x3) and 3 output RCUs.
    * Dropout 0.5 on layer3/layer4 of both ResNets and before ``clf_conv``, as in the
      single-scale model.
    * The 1.2-scale path makes the fused map larger than ``ceil(H/4)``; the logits are
      bilinearly resized (``align_corners=True``) to ``[ceil(H/4), ceil(W/4)]`` so the
      output contract is the same as every other model, relative to the original input.

    No checkpoint of this variant was released, so its key names are our own
    (``encoders.*``, ``refine{1-4}.*``, ``clf_conv``).
    """

    classifier_key: str = "clf_conv"
    cascaded: bool = True
    backbone_prefixes: tuple[str, ...] = ("encoders.",)

    def __init__(
        self,
        depth: int,
        num_classes: int,
        *,
        dropout: float = 0.5,
        scales: tuple[float, float] = CASCADE_SCALES,
    ) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        if len(scales) != 2 or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be two positive factors, got {scales!r}")
        self.scales = (float(scales[0]), float(scales[1]))
        self.encoders = nn.ModuleList([ResNet(depth), ResNet(depth)])
        c1, c2, c3, c4 = resnet_stage_channels()
        self.refine4 = RefineNetBlock([c4, c4], 512)
        self.refine3 = RefineNetBlock([c3, c3], 256, prev_planes=512)
        self.refine2 = RefineNetBlock([c2, c2], 256, prev_planes=256)
        self.refine1 = RefineNetBlock([c1, c1], 256, prev_planes=256)
        self.do = nn.Dropout(p=dropout)
        self.clf_conv = conv3x3(256, self.num_classes, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        per_scale: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for scale, encoder in zip(self.scales, self.encoders, strict=True):
            size = (_scaled_size(h, scale), _scaled_size(w, scale))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            l1, l2, l3, l4 = cast(tuple[Tensor, Tensor, Tensor, Tensor], encoder(xs))
            per_scale.append((l1, l2, self.do(l3), self.do(l4)))
        (a1, a2, a3, a4), (b1, b2, b3, b4) = per_scale
        y = self.refine4([a4, b4])
        y = self.refine3([a3, b3], y)
        y = self.refine2([a2, b2], y)
        y = self.refine1([a1, b1], y)
        logits = cast(Tensor, self.clf_conv(self.do(y)))
        return upsample_to(logits, (_ceil_div(h, 4), _ceil_div(w, 4)))


_DEPTHS: dict[str, int] = {"resnet50": 50, "resnet101": 101, "resnet152": 152}


def _builder(spec: ModelSpec, num_classes: int, cascaded: bool, options: Mapping[str, Any]) -> nn.Module:
    allowed: dict[tuple[str, bool], frozenset[str]] = {
        ("refinenet", False): frozenset({"dropout"}),
        ("refinenet", True): frozenset({"dropout", "scales"}),
        ("lw_refinenet", False): frozenset(),
    }
    accepted = allowed[(spec.family, cascaded)]
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"build_model({spec.name!r}{', cascaded=True' if cascaded else ''}) got unknown option(s) "
            f"{unknown}; accepted: {sorted(accepted) or 'none'}"
        )
    factory: Callable[..., nn.Module]
    if spec.backbone == "mobilenetv2":
        return LWRefineNetMobileNetV2(num_classes)
    depth = _DEPTHS[spec.backbone]
    if spec.family == "lw_refinenet":
        factory = LWRefineNet
    elif cascaded:
        factory = CascadedRefineNet
    else:
        factory = RefineNet
    return factory(depth, num_classes, **options)


def build_model(
    name: str,
    num_classes: int,
    *,
    seed: int | None = 0,
    cascaded: bool = False,
    **options: Any,
) -> nn.Module:
    """Build a model by name with random (seeded) weights; load weights separately.

    ``seed``: the weights are initialised under ``torch.random.fork_rng`` with
    ``torch.manual_seed(seed)``, so the same seed gives bit-identical weights and the
    caller's global RNG state is left untouched; ``None`` draws from the global RNG.
    Initialisation is PyTorch's default, as in the reference code (neither reference
    ResNet model re-initialises): random models give small, well-scaled logits (about
    0.1) instead of the 1e7-sized ones a He init of this BN-free decoder produces.
    ``cascaded=True`` builds the 4-cascaded 2-scale variant (full RefineNet on ResNet
    only; see :class:`CascadedRefineNet`). ``options``: ``dropout`` (full RefineNet),
    ``scales`` (cascaded). The model is returned in ``eval()`` mode, ready for inference;
    call ``.train()`` to fine-tune.
    """
    spec = MODEL_SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown model name {name!r}; expected one of: {', '.join(MODEL_NAMES)}")
    _check_num_classes(num_classes)
    if cascaded and not spec.supports_cascaded:
        supported = [n for n in MODEL_NAMES if MODEL_SPECS[n].supports_cascaded]
        raise ValueError(
            f"{name!r} has no cascaded (4-cascaded 2-scale) variant; the paper defines it for the "
            f"full ResNet RefineNets only: {', '.join(supported)}"
        )
    if seed is None:
        model = _builder(spec, num_classes, cascaded, options)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _builder(spec, num_classes, cascaded, options)
    model.eval()
    return model
