"""The model wrapped with its pre- and postprocessing as one torch module.

``InferencePipeline`` is what the torch backend runs and what ONNX export traces, so the
eager path and the compiled engines compute exactly the same function:
uint8 NHWC RGB -> cast -> the weights' normalisation (mean/std) -> NCHW -> model (stride-4 logits)
-> bilinear upsample of the *logits* to H x W -> (argmax labels, max softmax).
Upsampling logits before the argmax gives smooth boundaries; upsampling stride-4 labels
with nearest neighbour (what several ROS nodes do) gives blocky ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Normalise(nn.Module):
    """uint8 NHWC RGB -> float NCHW ``(x / 255 - mean) / std``: the one preprocessing
    description (mean/std from the weights' metadata) shared by inference, export,
    evaluation and training, so they cannot drift apart.

    /255 and mean/std are folded into one multiply-add, ``x * scale + shift``; the
    NHWC -> NCHW permute is a view, so the result is channels_last in memory.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32) * 255.0
        mean_t = torch.tensor(mean, dtype=torch.float32) * 255.0
        self.register_buffer("scale", (1.0 / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).float() * self.scale + self.shift


class InferencePipeline(nn.Module):
    """uint8 [N,H,W,3] -> (labels int32 [N,H,W], confidence float32 [N,H,W]).

    ``temperature`` calibrates the confidence (top softmax of logits / T); at 1 the graph
    holds no extra op."""

    def __init__(
        self, model: nn.Module, mean: Sequence[float], std: Sequence[float], temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model
        self.normalise = Normalise(mean, std)
        self.inverse_temperature = 1.0 / float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = images.shape[1], images.shape[2]
        x = self.normalise(images)
        logits = self.model(x)
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        # max softmax = 1 / sum(exp(l - max l)): no full softmax tensor is materialised.
        top, labels = logits.max(dim=1)
        shifted = logits - top.unsqueeze(1)
        if self.inverse_temperature != 1.0:
            shifted = shifted * self.inverse_temperature
        confidence = 1.0 / torch.exp(shifted).sum(dim=1)
        return labels.to(torch.int32), confidence
