"""Score a model on a labelled data set (mIoU, per-class IoU, accuracies, fwIoU); the
``refinenet-ros evaluate`` command line is :mod:`refinenet_ros.cli.evaluate`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from torch import nn

    from refinenet_ros.labels import LabelMapping, LabelSet
    from refinenet_ros.segmenter import Segmenter
    from refinenet_ros.training.datasets import SegmentationDataset
    from refinenet_ros.training.metrics import SegmentationMetrics

log = logging.getLogger("refinenet_ros")

Predictor = Callable[[Sequence[npt.NDArray[np.uint8]]], list[npt.NDArray[np.integer]]]
"""RGB images -> label images at each input's resolution."""


@dataclass(frozen=True)
class EvaluationResult:
    metrics: SegmentationMetrics
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def segmenter_predictor(segmenter: Segmenter) -> Predictor:
    """Single-scale prediction through any backend, labels at input resolution."""
    if segmenter.output_resolution != "input":
        raise ValueError("evaluation needs a Segmenter with output_resolution='input'")

    def predict(images: Sequence[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.integer]]:
        return [r.labels for r in segmenter.segment_batch(images)]

    return predict


def torch_predictor(
    model: nn.Module,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str = "cpu",
    network_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Predictor:
    """Multi-scale (+flip) prediction with the PyTorch model (``models.predict_probs``).

    With ``network_size`` each image is first resized to it (as the Segmenter would) and
    the averaged probabilities are resized back to the image before the argmax.
    """
    import torch
    import torch.nn.functional as F

    from refinenet_ros.backends.pipeline import Normalise
    from refinenet_ros.models import IMAGENET_MEAN, IMAGENET_STD, predict_probs

    normalise = Normalise(mean or IMAGENET_MEAN, std or IMAGENET_STD).to(device)

    def predict(images: Sequence[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.integer]]:
        out = []
        for image in images:
            with torch.inference_mode():
                x = normalise(torch.from_numpy(np.ascontiguousarray(image)).to(device)[None])
                size = (int(image.shape[0]), int(image.shape[1]))
                if network_size is not None and tuple(network_size) != size:
                    x = F.interpolate(x, size=tuple(network_size), mode="bilinear", align_corners=False)
            probs = predict_probs(model, x, scales=scales, flip=flip)
            with torch.inference_mode():
                if tuple(probs.shape[-2:]) != size:
                    probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
                out.append(probs.argmax(dim=1)[0].to(torch.int32).cpu().numpy())
        return out

    return predict


def evaluate(
    predict: Predictor,
    dataset: SegmentationDataset,
    label_set: LabelSet,
    *,
    batch: int = 1,
    progress: bool = False,
    save_dir: str | Path | None = None,
    score_through: LabelMapping | None = None,
) -> EvaluationResult:
    """Run ``predict`` over ``dataset`` and accumulate one confusion matrix.

    Ground truth outside the label set raises :class:`DatasetError` naming the image.
    With ``score_through`` (a union mapping: coarse ground truth such as IDD level-1 for a
    fine model) the metrics are over the mapping's source classes, each fine prediction
    counted through the unions (:meth:`LabelMapping.score_prediction`); predictions are
    still saved in the model's colours.
    """
    from refinenet_ros.training.datasets import DatasetError
    from refinenet_ros.training.metrics import ConfusionMatrix

    scored = len(score_through.source) if score_through is not None else label_set.num_classes
    # one more column for fine classes that no coarse class covers (wrong wherever predicted)
    cm = ConfusionMatrix(scored + (score_through is not None), label_set.ignore_index)
    bar = _progress(len(dataset), progress)
    t0 = time.perf_counter()
    for start in range(0, len(dataset), max(1, batch)):
        idx = range(start, min(len(dataset), start + max(1, batch)))
        pairs = [dataset[i] for i in idx]
        preds = predict([image for image, _ in pairs])
        for i, (_, target), pred in zip(idx, pairs, preds, strict=True):
            scored_pred = pred if score_through is None else score_through.score_prediction(target, pred)
            try:
                cm.update(target, scored_pred)
            except ValueError as exc:
                raise DatasetError(f"{dataset.samples[i].name}: {exc}") from None
            if save_dir is not None:
                _save_prediction(Path(save_dir), dataset.samples[i].name, pred, label_set)
        bar.update(len(pairs))
        if progress:
            bar.set_postfix(mIoU=f"{100 * _safe(cm.compute().miou):.1f}", refresh=False)
    seconds = time.perf_counter() - t0
    bar.close()
    metrics = cm.compute()
    if score_through is not None:
        metrics = metrics.first(scored)
    return EvaluationResult(metrics, len(dataset), seconds)


def _safe(v: float) -> float:
    return 0.0 if v != v else v  # NaN -> 0 for display


def _save_prediction(out_dir: Path, name: str, pred: npt.NDArray[np.integer], label_set: LabelSet) -> None:
    from refinenet_ros.io import write_rgb_png
    from refinenet_ros.labels import colorize

    write_rgb_png(out_dir / f"{name}.png", colorize(pred, label_set))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="evaluating", disable=not enabled, dynamic_ncols=True)
