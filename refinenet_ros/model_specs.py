"""The RefineNet family by name: what each model is, without torch.

Names, published parameter counts, papers and the preprocessing their released checkpoints
expect. The command line lists and checks ``--model`` against these, and
:mod:`refinenet_ros.config` resolves a model name, without importing torch;
:mod:`refinenet_ros.models` builds the networks they name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODEL_NAMES", "MODEL_SPECS", "ModelSpec"]

MODEL_NAMES: tuple[str, ...] = (
    "refinenet_resnet50",
    "refinenet_resnet101",
    "refinenet_resnet152",
    "lw_refinenet_resnet50",
    "lw_refinenet_resnet101",
    "lw_refinenet_resnet152",
    "lw_refinenet_mobilenetv2",
)
"""Every network :mod:`refinenet_ros.models` builds."""

#: ImageNet statistics in RGB order on the 0..1 scale (input is ``(x/255 - mean)/std``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_REFINENET_PAPER = (
    "Lin, Milan, Shen, Reid. RefineNet: Multi-Path Refinement Networks for "
    "High-Resolution Semantic Segmentation. CVPR 2017. arXiv:1611.06612"
)
_LW_PAPER = (
    "Nekrasov, Shen, Reid. Light-Weight RefineNet for Real-Time Semantic "
    "Segmentation. BMVC 2018. arXiv:1810.03272"
)
_REFINENET_CODE = "https://github.com/DrSleep/refinenet-pytorch"
_LW_CODE = "https://github.com/DrSleep/light-weight-refinenet"


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about one model name, kept beside the code (torchvision style).

    ``params_m_21`` is the published parameter count in millions for 21 classes (VOC);
    a test checks the built model against it. ``mean``/``std`` are the preprocessing
    the released checkpoints expect. ``supports_cascaded`` says whether
    ``build_model(..., cascaded=True)`` is available.
    """

    name: str
    family: Literal["refinenet", "lw_refinenet"]
    backbone: str
    paper: str
    code_url: str
    params_m_21: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    supports_cascaded: bool = False


def _spec(name: str, params_m_21: float) -> ModelSpec:
    """Derive family, backbone, paper and code from the name (``<family>_<backbone>``)."""
    lw = name.startswith("lw_")
    return ModelSpec(
        name=name,
        family="lw_refinenet" if lw else "refinenet",
        backbone=name.rsplit("_", 1)[1],
        paper=_LW_PAPER if lw else _REFINENET_PAPER,
        code_url=_LW_CODE if lw else _REFINENET_CODE,
        params_m_21=params_m_21,
        supports_cascaded=not lw,
    )


# Parameters in millions at 21 classes, in MODEL_NAMES order.
_PARAMS_M_21 = (99.06, 118.05, 133.70, 27.36, 46.35, 61.99, 3.28)
MODEL_SPECS: dict[str, ModelSpec] = {
    name: _spec(name, params) for name, params in zip(MODEL_NAMES, _PARAMS_M_21, strict=True)
}
