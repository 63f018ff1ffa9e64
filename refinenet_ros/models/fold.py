"""Fold inference-mode BatchNorm into the convolution before it, for the eager torch backend.

In eval mode a BatchNorm2d is a per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias. ONNX Runtime and TensorRT do this fold
themselves when they optimise the graph; eager PyTorch does not, and runs every BN as an
extra memory-bound pass over the activations. Folding removes those passes.

Only the pairs our models are built from are folded, each recognised by structure:

- an ``nn.Sequential`` holding a ``Conv2d`` directly followed by a ``BatchNorm2d``
  (MobileNetV2's ``ConvBNAct``, the ResNet ``downsample`` shortcut);
- sibling attributes ``convN`` / ``bnN`` in a module whose forward computes
  ``bnN(convN(x))`` (torchvision-style ResNet stems and bottlenecks).

The second rule is a naming convention, so :func:`fold_batchnorm` is meant for the models
of this package (a test compares folded and unfolded outputs for every one of them). The
model is changed in place and is for inference only afterwards: the BN modules become
``nn.Identity`` and their statistics are gone, so never train or save a folded model.
"""

from __future__ import annotations

import re
from itertools import pairwise

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]

_CONV_NAME = re.compile(r"conv(\d+)")


def _foldable(conv: object, bn: object) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.num_features == conv.out_channels
    )


def _fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = parent._modules[conv_name], parent._modules[bn_name]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
    parent._modules[bn_name] = nn.Identity()


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every recognised Conv2d + BatchNorm2d pair of ``model`` in place; return how many.

    Puts the model in eval mode first (folding uses the running statistics, which is
    what eval-mode BN computes with).
    """
    model.eval()
    pairs: list[tuple[nn.Module, str, str]] = []
    for parent in model.modules():
        children = list(parent._modules.items())
        if isinstance(parent, nn.Sequential):
            for (conv_name, conv), (bn_name, bn) in pairwise(children):
                if _foldable(conv, bn):
                    pairs.append((parent, conv_name, bn_name))
        else:
            for name, conv in children:
                match = _CONV_NAME.fullmatch(name)
                bn_name = f"bn{match.group(1)}" if match else ""
                if match and _foldable(conv, parent._modules.get(bn_name)):
                    pairs.append((parent, name, bn_name))
    for parent, conv_name, bn_name in pairs:
        _fold(parent, conv_name, bn_name)
    return len(pairs)
