"""What model to run and where its weights come from: shared by every entry point.

The node, ``segment``, ``bag``, ``evaluate``, ``export`` and ``bench`` describe their
model with one :class:`ModelConfig` (what the user asked for) and resolve it once, at the
edge, into a :class:`ModelConfig` whose fields are all filled (:meth:`ModelConfig.resolved`):

* ``weights``: a bundled name (``camvid``, see :mod:`refinenet_ros.weights`) or a
  checkpoint path; left empty, the bundled default that fits the asked model/labels;
  ``random`` asks for seeded random weights (one warning line wherever such a model is
  put to work, because its labels are meaningless);
* ``model``, ``labels``, ``cascaded``: as asked, else as the checkpoint records them;
* ``mean``/``std`` and ``network_size``: the preprocessing the weights were trained with,
  from the checkpoint's metadata (else the architecture's defaults), used by every
  backend, the ONNX export, evaluate and train alike;
* ``temperature``: the confidence calibration recorded with the weights (else 1).

Resolution reads the checkpoint's metadata once per file (cached by path, size and
modification time), however many times it is asked.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refinenet_ros.errors import RefineNetRosError, option
from refinenet_ros.labels import LabelSet, get_label_set
from refinenet_ros.model_specs import MODEL_NAMES, MODEL_SPECS

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("refinenet_ros")

DEFAULT_MODEL = "lw_refinenet_mobilenetv2"
DEFAULT_LABELS = "camvid"
RANDOM_WEIGHTS = "random"
"""The ``weights`` value that asks for seeded random weights (tests, benchmarks)."""


class ConfigError(RefineNetRosError, ValueError):
    """The asked model/labels/weights do not make a model; the message says which and why."""


@dataclass(frozen=True)
class ModelConfig:
    """A model name, its label set, its weights and their preprocessing.

    Construct with what the user gave (None = not given) and call :meth:`resolved` once;
    the resolved config has every field but ``weights`` (None = random init) filled.
    """

    model: str | None = None
    labels: str | None = None
    weights: str | None = None
    seed: int = 0
    cascaded: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    network_size: tuple[int, int] | None = None
    #: confidence = top softmax of logits / temperature (calibrated on val; the weights'
    #: metadata ``temperature``, else 1); it never changes a label
    temperature: float | None = None
    #: the bundled weights' name when ``weights`` came from the registry (for messages)
    weights_name: str | None = None
    #: False: no bundled default when ``weights`` is None (train: random or backbone init)
    default_weights: bool = True
    #: False: no weights that fit (and no explicit ``random``) is an error, not a random model
    #: (the node: a robot never publishes meaningless labels by accident)
    allow_random: bool = True
    is_resolved: bool = False

    def resolved(self) -> ModelConfig:
        """Every field filled (see the module docstring); a resolved config returns itself."""
        return self if self.is_resolved else _resolve(self)

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.resolved().labels or DEFAULT_LABELS)

    def describe(self) -> str:
        cfg = self.resolved()
        if cfg.weights is None:
            source = f"random init (seed {cfg.seed})"
        else:
            source = cfg.weights_name or Path(cfg.weights).name
        return f"{cfg.model} [{cfg.labels}] weights={source}"


@functools.lru_cache(maxsize=64)
def _metadata(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    """A checkpoint's metadata record, read once per file version (``torch.load`` is slow)."""
    from refinenet_ros.models import read_checkpoint_metadata

    return read_checkpoint_metadata(path) or {}


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    st = os.stat(path)
    return _metadata(str(path), st.st_size, st.st_mtime_ns)


def _resolve(cfg: ModelConfig) -> ModelConfig:
    from refinenet_ros.weights import WEIGHTS, get_weights, weights_for

    weights, name = cfg.weights, cfg.weights_name
    if weights == RANDOM_WEIGHTS:
        weights = None
    elif weights is None and cfg.default_weights:
        bundled = weights_for(cfg.model, cfg.labels)
        if bundled is not None:
            weights, name = str(bundled.path), bundled.name
    elif weights is not None and weights in WEIGHTS and not Path(weights).is_file():
        bundled = get_weights(weights)
        weights, name = str(bundled.path), bundled.name
    if weights is None and cfg.weights != RANDOM_WEIGHTS and not cfg.allow_random:
        asked = ", ".join(f"{k} {v}" for k, v in (("model", cfg.model), ("labels", cfg.labels)) if v)
        raise ConfigError(
            f"no trained weights fit {asked or 'the asked model'}: give weights (bundled: "
            f"{', '.join(WEIGHTS)}, or a checkpoint file), or weights 'random' for seeded random "
            "weights (meaningless labels)"
        )
    model, labels, cascaded = cfg.model, cfg.labels, cfg.cascaded
    mean, std, size, temperature = cfg.mean, cfg.std, cfg.network_size, cfg.temperature
    if weights is not None:
        if not Path(weights).is_file():
            raise ConfigError(f"weights {weights!r}: no such file and no bundled weights of that name")
        meta = checkpoint_metadata(weights)
        check_metadata(weights, meta, size_given=size is not None)
        model = model or meta.get("model_name")
        recorded = meta.get("label_set")
        labels = labels or (recorded if isinstance(recorded, str) else None)
        cascaded = cascaded or bool(meta.get("cascaded", False))
        mean = mean or _triple(meta.get("mean"))
        std = std or _triple(meta.get("std"))
        recorded_size = meta.get("network_size")
        if size is None and isinstance(recorded_size, list) and len(recorded_size) == 2:
            size = (int(recorded_size[0]), int(recorded_size[1]))
        if temperature is None:
            temperature = recorded_temperature(meta)
    model = model or DEFAULT_MODEL
    spec = MODEL_SPECS.get(model)
    if spec is None:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(MODEL_SPECS)}")
    return replace(
        cfg,
        model=model,
        labels=labels or DEFAULT_LABELS,
        weights=weights,
        weights_name=name,
        cascaded=cascaded,
        mean=mean or spec.mean,
        std=std or spec.std,
        network_size=size,
        temperature=1.0 if temperature is None else float(temperature),
        is_resolved=True,
    )


def check_metadata(weights: str | Path, meta: dict[str, Any], *, size_given: bool = False) -> None:
    """Refuse a checkpoint whose metadata would configure a wrong model, in one line each:
    an unknown label set or model, a mean or std that is not 3 finite numbers (std > 0: a
    zero divides every pixel by zero), a network size outside the bounds every entry point
    accepts (a 1x1 size runs and gives one label; not checked when ``size_given``). Without it
    the node reported "active" and then failed or mislabelled every frame."""
    import math

    from refinenet_ros.backends.base import network_size_problem
    from refinenet_ros.labels import LABEL_SET_NAMES

    where = f"weights {weights}: metadata records"
    label_set = meta.get("label_set")
    if isinstance(label_set, str) and label_set not in LABEL_SET_NAMES:
        raise ConfigError(
            f"{where} label set {label_set!r}, unknown here (known: {', '.join(LABEL_SET_NAMES)}); "
            f"pass the label set it was trained for ({option('labels')})"
        )
    model = meta.get("model_name")
    if model is not None and model not in MODEL_NAMES:
        raise ConfigError(
            f"{where} model {model!r}, unknown here; pass {option('model')} (one of {', '.join(MODEL_NAMES)})"
        )
    classes = meta.get("num_classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise ConfigError(f"{where} num_classes {classes!r}; expected a whole number >= 1")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is None:
            continue
        numbers = value if isinstance(value, list | tuple) else []
        ok = len(numbers) == 3 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers
        )
        if not ok or (key == "std" and any(v <= 0 for v in numbers)):
            need = "3 finite numbers" + (" above 0" if key == "std" else "")
            raise ConfigError(
                f"{where} {key} {value!r}; expected {need} (re-save it with the values it was trained with)"
            )
    extra = meta.get("extra")
    temperature = extra.get("temperature") if isinstance(extra, dict) else None
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
        or not math.isfinite(temperature) or temperature <= 0
    ):  # fmt: skip
        raise ConfigError(
            f"{where} temperature {temperature!r}; expected a number above 0 (re-pack it with "
            "refinenet-ros weights --pack ... --temperature T)"
        )
    size = meta.get("network_size")
    if size is not None and not size_given:
        problem = network_size_problem(size)
        if problem is not None:
            raise ConfigError(f"{where} network size {size!r}: {problem}; pass {option('network_size')}")


def recorded_temperature(meta: dict[str, Any]) -> float | None:
    """The confidence temperature a checkpoint's metadata records (``extra.temperature``)."""
    extra = meta.get("extra")
    value = extra.get("temperature") if isinstance(extra, dict) else None
    return float(value) if value is not None else None


def _triple(value: Any) -> tuple[float, float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 3:
        return (float(value[0]), float(value[1]), float(value[2]))
    return None


def warn_if_random_weights(cfg: ModelConfig) -> None:
    """The one line every inference entry point prints when it runs random weights.

    Called where a model is put to work (``create_backend``, multi-scale evaluation),
    not in :func:`load_model`: a cached ONNX graph or engine skips building the model,
    and the user must be told all the same.
    """
    cfg = cfg.resolved()
    if cfg.weights is None:
        log.warning(
            "%s runs seeded random weights (seed %d), so its labels are meaningless; "
            "drop %s for the bundled camvid model, or pass a checkpoint",
            cfg.model,
            cfg.seed,
            option("weights", "random"),
        )


def load_model(cfg: ModelConfig) -> nn.Module:
    """Build the network in eval mode with the configured weights (or seeded random)."""
    from refinenet_ros.models import build_model, load_checkpoint

    cfg = cfg.resolved()
    assert cfg.model is not None
    model = build_model(cfg.model, cfg.label_set.num_classes, seed=cfg.seed, cascaded=cfg.cascaded)
    if cfg.weights is not None:
        report = load_checkpoint(model, cfg.weights)
        log.info("%s", report.summary())
    return model.eval()
