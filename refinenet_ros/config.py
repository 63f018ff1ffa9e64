"""What model to run and where its weights come from: shared by every entry point.

The node, ``segment``, ``bag``, ``evaluate``, ``export``, ``bench`` and ``train`` all
describe their model with one :class:`ModelConfig` and get it from :func:`load_model`,
so "no weights given" is reported the same way everywhere: one warning line, because
labels from a randomly initialised network are meaningless and a user must never
mistake them for a result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from refinenet_ros.labels import LabelSet, get_label_set

log = logging.getLogger("refinenet_ros")

DEFAULT_MODEL = "lw_refinenet_mobilenetv2"
DEFAULT_LABELS = "voc"


@dataclass(frozen=True)
class ModelConfig:
    """A model name, its label set and optional weights.

    ``model``/``labels`` left as None take the values recorded in a refinenet_ros
    checkpoint (``save_checkpoint``), else the package defaults.
    """

    model: str | None = None
    labels: str | None = None
    weights: str | None = None
    seed: int = 0
    cascaded: bool = False

    def resolved(self) -> ModelConfig:
        """Fill model/labels from the checkpoint's metadata, then from the defaults."""
        model, labels, cascaded = self.model, self.labels, self.cascaded
        if self.weights is not None and (model is None or labels is None):
            from refinenet_ros.models import read_checkpoint_metadata

            meta = read_checkpoint_metadata(self.weights) or {}
            model = model or meta.get("model_name")
            recorded = meta.get("label_set")
            labels = labels or (recorded if isinstance(recorded, str) else None)
            cascaded = cascaded or bool(meta.get("cascaded", False))
        return replace(self, model=model or DEFAULT_MODEL, labels=labels or DEFAULT_LABELS, cascaded=cascaded)

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.resolved().labels or DEFAULT_LABELS)

    def describe(self) -> str:
        cfg = self.resolved()
        source = Path(cfg.weights).name if cfg.weights else f"random init (seed {cfg.seed})"
        return f"{cfg.model} [{cfg.labels}] weights={source}"


def warn_if_random_weights(cfg: ModelConfig) -> None:
    """The one line every inference entry point prints when no weights were given.

    Called where a model is put to work (``create_backend``, multi-scale evaluation),
    not in :func:`load_model`: a cached ONNX graph or engine skips building the model,
    and the user must be told all the same.
    """
    if cfg.weights is None:
        cfg = cfg.resolved()
        log.warning(
            "no weights given: %s uses seeded random weights (seed %d), so its labels are "
            "meaningless; pass --weights / the 'weights' parameter for real segmentation",
            cfg.model,
            cfg.seed,
        )


def load_model(cfg: ModelConfig) -> nn.Module:
    """Build the network in eval mode with the configured weights (or seeded random)."""
    from refinenet_ros.models import build_model, load_checkpoint

    cfg = cfg.resolved()
    assert cfg.model is not None
    label_set = get_label_set(cfg.labels or DEFAULT_LABELS)
    model = build_model(cfg.model, label_set.num_classes, seed=cfg.seed, cascaded=cfg.cascaded)
    if cfg.weights is not None:
        report = load_checkpoint(model, cfg.weights)
        log.info("loaded %s", report.summary())
    return model.eval()
