"""Test-time multi-scale (and flip) inference: the average of softmax maps.

The RefineNet paper reports its best numbers with the image evaluated at several
scales and the class probabilities averaged (:data:`PAPER_SCALES`, optionally with
horizontal flips). Averaging *probabilities* (not logits) is what the paper does and
keeps each scale's vote bounded. Each scale's logits are resized to the input size
before the softmax so all maps line up pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PAPER_SCALES", "predict_probs"]

#: The paper's test-time scales.
PAPER_SCALES: tuple[float, ...] = (0.4, 0.6, 0.8, 1.0, 1.2)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if (int(x.shape[-2]), int(x.shape[-1])) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def predict_probs(
    model: nn.Module,
    x: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Class probabilities ``[N, C, H, W]`` at the input size, averaged over scales/flips.

    ``x`` is a normalised float NCHW batch (as the model takes). For each scale ``s`` the
    input is resized (bilinear, ``align_corners=True``) to ``round(s*H) x round(s*W)``
    (at least 1 pixel), run through ``model``, the logits are resized back to ``H x W``,
    and softmaxed over classes; with ``flip`` the horizontally mirrored input is run
    too and its map mirrored back. The result is the mean of all these maps, so each
    pixel's probabilities sum to 1.

    Runs under ``torch.inference_mode`` with the model temporarily in ``eval()`` (dropout
    off); its previous mode is restored afterwards.
    """
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
    scale_list = [float(s) for s in scales]
    if not scale_list or any(not math.isfinite(s) or s <= 0 for s in scale_list):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {list(scales)!r}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            total: Tensor | None = None
            count = 0
            for s in scale_list:
                size = (max(1, math.floor(h * s + 0.5)), max(1, math.floor(w * s + 0.5)))
                xs = _resize(x, size)
                inputs = [(xs, False), (xs.flip(-1), True)] if flip else [(xs, False)]
                for inp, flipped in inputs:
                    logits = _resize(model(inp), (h, w))
                    probs = torch.softmax(logits.float(), dim=1)
                    if flipped:
                        probs = probs.flip(-1)
                    total = probs if total is None else total.add_(probs)
                    count += 1
            assert total is not None  # scale_list is non-empty
            return total.div_(count)
    finally:
        model.train(was_training)
