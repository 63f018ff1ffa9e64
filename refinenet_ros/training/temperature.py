"""Calibrated confidence: temperature scaling and expected calibration error (ECE).

The confidence every backend publishes is the top softmax probability. A network trained
with cross-entropy is over-confident off its training data: "0.95" is right far less
than 95 % of the time. Temperature scaling (Guo et al., ICML 2017) divides the logits by
one number T fitted on labelled validation pixels (minimum negative log-likelihood), so
that "0.9" means right about 90 % of the time. It changes no label (the argmax stays),
only the confidence; the weights carry T in their metadata (``temperature``) and every
backend applies it inside its graph.

ECE: the pixels are binned by confidence (15 equal-width bins); ECE is the pixel-weighted
mean of ``|accuracy - mean confidence|`` over the bins, 0 for perfect calibration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from torch import nn

    from refinenet_ros.training.datasets import SegmentationDataset

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
"""Fitted temperatures are searched within this range (a value at either end means the
validation set says something is wrong, e.g. labels of another class set)."""


def softmax_confidence(logits: npt.NDArray[np.floating], temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """Top softmax probability of ``logits`` [P, C] divided by ``temperature``: what the
    backends publish as confidence."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)


def expected_calibration_error(
    confidence: npt.NDArray[np.floating], correct: npt.NDArray[np.bool_], bins: int = ECE_BINS
) -> float:
    """ECE of per-pixel ``confidence`` (0..1) against whether each prediction was ``correct``."""
    conf = np.asarray(confidence, np.float64).ravel()
    hit = np.asarray(correct, bool).ravel()
    if conf.size != hit.size:
        raise ValueError(f"{conf.size} confidences for {hit.size} outcomes")
    if conf.size == 0:
        return math.nan
    index = np.minimum((conf * bins).astype(np.int64), bins - 1)
    conf_sum = np.bincount(index, weights=conf, minlength=bins)
    hit_sum = np.bincount(index, weights=hit.astype(np.float64), minlength=bins)
    return float(np.abs(hit_sum - conf_sum).sum() / conf.size)


def negative_log_likelihood(
    logits: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], temperature: float
) -> float:
    """Mean -log p(label) of ``logits`` [P, C] at ``temperature``."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    picked = z[np.arange(z.shape[0]), np.asarray(labels, np.int64)]
    return float((log_norm - picked).mean())


def fit_temperature(logits: npt.NDArray[np.floating], labels: npt.NDArray[np.integer]) -> float:
    """The T minimising the NLL of ``labels`` under ``softmax(logits / T)``.

    The NLL is convex in 1/T, so a golden-section search over log T within
    :data:`TEMPERATURE_RANGE` finds the minimum (to 0.1 %)."""
    if len(labels) == 0:
        raise ValueError("no labelled pixels to fit a temperature on")
    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    golden = (math.sqrt(5.0) - 1.0) / 2.0

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = lo, hi
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-3:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2.0)


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the ECE (0..1) it gives, against T = 1 and the weights' own T."""

    temperature: float
    ece_before: float
    ece_after: float
    ece_current: float
    current_temperature: float
    pixels: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "temperature": round(self.temperature, 4),
            "ece_uncalibrated": round(self.ece_before, 5),
            "ece_with_weights_temperature": round(self.ece_current, 5),
            "weights_temperature": self.current_temperature,
            "ece_calibrated": round(self.ece_after, 5),
            "pixels": self.pixels,
            "bins": ECE_BINS,
        }


def calibrate(
    logits: npt.NDArray[np.floating], labels: npt.NDArray[np.integer], current_temperature: float = 1.0
) -> Calibration:
    """Fit T on ``logits`` [P, C] / ``labels`` [P] and measure ECE at T = 1, the current T and the fit."""
    t = fit_temperature(logits, labels)
    correct = np.asarray(logits).argmax(axis=1) == np.asarray(labels)

    def ece(temp: float) -> float:
        return expected_calibration_error(softmax_confidence(logits, temp), correct)

    return Calibration(t, ece(1.0), ece(t), ece(current_temperature), current_temperature, len(labels))


def sample_logits(
    model: nn.Module,
    dataset: SegmentationDataset,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    network_size: tuple[int, int] | None,
    pixels_per_image: int = 20000,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Logits [P, C] and labels [P] of labelled pixels, sampled evenly from every image.

    Computed as the backends compute confidence: the image resized to ``network_size``
    (bilinear), the logits upsampled bilinearly to it; labels resized to it (nearest).
    A fixed ``seed`` picks the same pixels every time.
    """
    import cv2
    import torch
    import torch.nn.functional as F

    from refinenet_ros.backends.pipeline import Normalise

    normalise = Normalise(mean, std).to(device)
    rng = np.random.default_rng(seed)
    all_logits: list[npt.NDArray[np.float32]] = []
    all_labels: list[npt.NDArray[np.int64]] = []
    model.eval()
    for i in range(len(dataset)):
        image: npt.NDArray[Any]
        label: npt.NDArray[Any]
        image, label = dataset[i]
        if network_size is not None and image.shape[:2] != tuple(network_size):
            h, w = network_size
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
        with torch.inference_mode():
            x = normalise(torch.from_numpy(np.ascontiguousarray(image))[None].to(device))
            logits = model(x)
            logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        flat = logits[0].flatten(1).T.float().cpu().numpy()  # [H*W, C]
        lab = label.reshape(-1).astype(np.int64)
        keep = np.flatnonzero(lab < flat.shape[1])
        if keep.size > pixels_per_image:
            keep = np.sort(rng.choice(keep, pixels_per_image, replace=False))
        all_logits.append(flat[keep])
        all_labels.append(lab[keep])
    return np.concatenate(all_logits), np.concatenate(all_labels)
