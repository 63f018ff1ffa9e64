"""Load RefineNet checkpoints (any published wrapper) into a model, loudly.

Published PyTorch RefineNet weights come in several wrappers: a flat ``state_dict``;
``{'model': sd}``; ``{'segmenter': sd, 'epoch_start': ..., 'best_val': ...}`` written
from a ``DataParallel`` model (every key prefixed ``module.``); ``{'weights': sd, ...}``;
and our own files with their metadata record (:mod:`.checkpoint_file` reads and writes
the files themselves).

The failure this module exists to prevent is *silently loading nothing* (or half a
decoder) and then publishing random segmentations. So:

* anything unreadable raises :class:`CheckpointError` naming the path and what was
  expected;
* zero matching keys, any shape mismatch, and any missing decoder key are always
  errors; the message names the keys (first few + count), the shapes, and, for a
  classifier of another class count, says so and names the label set to pass;
* ``strict=True`` (default) also rejects missing backbone keys and unexpected extras;
  ``strict=False`` tolerates both and lists them in the :class:`LoadReport`;
* ``num_batches_tracked`` buffers are ignored both ways (old and new PyTorch differ).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from refinenet_ros.errors import option
from refinenet_ros.model_specs import MODEL_NAMES
from refinenet_ros.models.checkpoint_file import (
    CHECKPOINT_MARKER,
    EXPECTED_FORMATS,
    CheckpointError,
    plain_data,
    state_digest,
    torch_load_safely,
)

__all__ = [
    "CheckpointFormat",
    "LoadReport",
    "checkpoint_num_classes",
    "guess_model_name",
    "load_checkpoint",
]

CheckpointFormat = Literal["flat", "model", "segmenter", "weights", "state_dict", "refinenet_ros"]

#: Wrapper keys, in the order they are tried. ``state_dict`` (Lightning-style) is an
#: extra beyond the published formats, cheap to accept.
_WRAPPER_KEYS: tuple[Literal["segmenter", "model", "weights", "state_dict"], ...] = (
    "segmenter",
    "model",
    "weights",
    "state_dict",
)
_PREFIX = "module."
_IGNORED_SUFFIX = "num_batches_tracked"
_SHOW = 5  # how many keys an error message lists before "(+N more)"
_DEFAULT_BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer", "encoders.", "backbone.")
_CLASSIFIER_NAMES = ("clf_conv", "segm")


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    ``loaded_keys`` counts tensors copied into the model. ``ignored_keys`` lists checkpoint
    entries not loaded on purpose (``num_batches_tracked``, unexpected extras in
    non-strict mode, the classifier when ``skip_classifier``). ``missing_keys`` lists model
    keys the checkpoint lacked that were tolerated (backbone keys, non-strict mode only).
    ``metadata`` is our own files' record, or the plain scalar/list extras beside a
    wrapper's weights (``epoch_start``, ``best_val``...), else empty.
    """

    source: str
    format: CheckpointFormat
    loaded_keys: int
    ignored_keys: list[str] = field(default_factory=list)
    stripped_prefix: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    missing_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs, e.g. ``loaded 1061 tensors from x.pth (segmenter, stripped 'module.')``."""
        parts: list[str] = [self.format]
        if self.stripped_prefix:
            parts.append(f"stripped {self.stripped_prefix!r}")
        line = f"loaded {self.loaded_keys} tensors from {self.source} ({', '.join(parts)})"
        if self.ignored_keys:
            n_nbt = sum(k.endswith(_IGNORED_SUFFIX) for k in self.ignored_keys)
            other = len(self.ignored_keys) - n_nbt
            detail = f"{n_nbt} num_batches_tracked" + (f", {other} other" if other else "")
            line += f"; ignored {len(self.ignored_keys)} ({detail})"
        if self.missing_keys:
            line += f"; {len(self.missing_keys)} backbone keys missing (left as initialised)"
        if self.metadata.get("model_name"):
            line += f"; model {self.metadata['model_name']}"
        return line


# ----------------------------------------------------------------------------- reading


def _as_state_dict(obj: Mapping[Any, Any], source: str, where: str) -> dict[str, Tensor]:
    """Check that ``obj`` maps str → Tensor; non-tensor entries make it not a state dict."""
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"{source}: {where} is not a state_dict: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
            f"not tensors ({_first(bad)}); expected {EXPECTED_FORMATS}"
        )
    return {cast(str, k): cast(Tensor, v) for k, v in obj.items()}


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Tensor], CheckpointFormat, dict[str, Any], list[str]]:
    """Find the state dict inside a loaded checkpoint object.

    Returns (state_dict, format, metadata, ignored top-level keys of a flat dict).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a dict; expected {EXPECTED_FORMATS}"
        )
    if CHECKPOINT_MARKER in obj:
        sd = obj.get("state_dict")
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{source}: refinenet_ros checkpoint without a 'state_dict' mapping")
        meta = obj.get("metadata")
        _, meta_plain = plain_data(meta if isinstance(meta, Mapping) else {})
        return _as_state_dict(sd, source, "'state_dict'"), "refinenet_ros", dict(meta_plain or {}), []
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            # Scalars and lists beside the weights (epoch, best_val, labels) are kept as
            # metadata; nested dicts (optimizer/scheduler states, configs) are not.
            extras: dict[str, Any] = {}
            for k, v in obj.items():
                ok, pv = plain_data(v)
                if k != key and isinstance(k, str) and ok and not isinstance(v, Mapping):
                    extras[k] = pv
            return _as_state_dict(inner, source, f"{key!r}"), key, extras, []
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        keys = [str(k) for k in obj]
        raise CheckpointError(
            f"{source} is a dict without tensors and without a 'model'/'segmenter'/'weights'/'state_dict' "
            f"entry (top-level keys: {_first(keys) if keys else 'none: it is empty'}); "
            f"expected {EXPECTED_FORMATS}"
        )
    others = [str(k) for k in obj if not (isinstance(k, str) and isinstance(obj[k], Tensor))]
    return tensors, "flat", {}, others


def _strip_prefix(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Drop ``module.`` (DataParallel/DDP) when every key carries it."""
    if sd and all(k.startswith(_PREFIX) for k in sd):
        return {k[len(_PREFIX) :]: v for k, v in sd.items()}, _PREFIX
    return sd, ""


def _first(keys: Sequence[str], n: int = _SHOW) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ----------------------------------------------------------------------------- identification


def _max_block_index(sd: Mapping[str, Any], stage: str) -> int:
    pattern = re.compile(rf"^{re.escape(stage)}\.(\d+)\.")
    indices = [int(m.group(1)) for k in sd if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def guess_model_name(state_dict: Mapping[str, Any]) -> str | None:
    """Which of :data:`MODEL_NAMES` a state dict was made for, from its key names.

    Used in error messages ("this checkpoint looks like ...") and by tools that want to
    pick the architecture from a bare published checkpoint. Accepts ``module.``-prefixed
    keys. A cascaded checkpoint returns its base name. ``None`` when unrecognised.
    """
    sd = {k[len(_PREFIX) :] if k.startswith(_PREFIX) else k: v for k, v in state_dict.items()}
    if "segm.weight" in sd and "layer8.0.output.0.0.weight" in sd:
        return "lw_refinenet_mobilenetv2"
    if any(k.startswith("encoders.0.layer3.") for k in sd):
        blocks = _max_block_index(sd, "encoders.0.layer3")
        family = "refinenet"
    elif "p_ims1d2_outl1_dimred.weight" in sd:
        blocks = _max_block_index(sd, "layer3")
        weight = sd["p_ims1d2_outl1_dimred.weight"]
        kernel = int(weight.shape[-1]) if isinstance(weight, Tensor) and weight.dim() == 4 else 0
        family = "refinenet" if kernel == 3 or "adapt_stage1_b.0.1_conv.weight" in sd else "lw_refinenet"
    else:
        return None
    depth = {6: 50, 23: 101, 36: 152}.get(blocks)
    if depth is None:
        return None
    name = f"{family}_resnet{depth}"
    return name if name in MODEL_NAMES else None


def checkpoint_num_classes(state_dict: Mapping[str, Any]) -> int | None:
    """Class count of a state dict's classifier (``clf_conv`` or ``segm``), if present."""
    for prefix in ("", _PREFIX):
        for name in _CLASSIFIER_NAMES:
            weight = state_dict.get(f"{prefix}{name}.weight")
            if isinstance(weight, Tensor) and weight.dim() >= 1:
                return int(weight.shape[0])
    return None


def _describe(sd: Mapping[str, Any]) -> str:
    name = guess_model_name(sd)
    if name is None:
        return ""
    cascaded = " (cascaded)" if any(k.startswith("encoders.") for k in sd) else ""
    classes = checkpoint_num_classes(sd)
    suffix = f" with {classes} classes." if classes else "."
    return f" The checkpoint looks like {name!r}{cascaded}{suffix}"


def _model_label(model: nn.Module) -> str:
    name = type(model).__name__
    depth = getattr(model, "depth", None)
    return f"{name}(depth={depth})" if depth else name


# ----------------------------------------------------------------------------- loading


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
    map_location: Any = "cpu",
    skip_classifier: bool = False,
) -> LoadReport:
    """Load weights into ``model`` from a file or an in-memory checkpoint; never silently.

    Accepts every wrapper described in the module docstring. Raises
    :class:`CheckpointError` when the source is unreadable or not a checkpoint, when no
    key matches, on any shape mismatch, on any missing decoder key, and in ``strict``
    mode also on missing backbone keys or unexpected keys. ``skip_classifier=True``
    leaves the model's classifier as initialised (fine-tuning to another class set);
    the checkpoint's classifier keys are then listed as ignored.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "<in-memory checkpoint>"
        obj: Any = path_or_state_dict
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        source = str(path)
        obj = torch_load_safely(path, map_location)
    else:
        raise CheckpointError(
            f"expected a checkpoint path or a state-dict mapping, got {type(path_or_state_dict).__name__}"
        )

    sd, fmt, metadata, ignored = _unwrap(obj, source)
    sd, stripped = _strip_prefix(sd)
    _check_integrity(sd, metadata, source)

    model_sd = model.state_dict()
    model_keys = [k for k in model_sd if not k.endswith(_IGNORED_SUFFIX)]
    classifier = str(getattr(model, "classifier_key", "") or "")
    classifier_keys = {k for k in model_keys if classifier and k.startswith(classifier + ".")}

    to_load: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, value in sd.items():
        if key.endswith(_IGNORED_SUFFIX) or (skip_classifier and key in classifier_keys):
            ignored.append(key)
        elif key not in model_sd:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(model_sd[key].shape):
            mismatched.append((key, tuple(value.shape), tuple(model_sd[key].shape)))
        else:
            to_load[key] = value

    if not to_load and not mismatched:
        raise CheckpointError(
            f"none of the {len(sd)} entries of {source} match {_model_label(model)}: "
            "nothing would be loaded. "
            f"Checkpoint keys: {_first(sorted(sd)) or 'none'}; model keys: {_first(model_keys)}."
            + _describe(sd)
        )
    if mismatched:
        raise CheckpointError(_mismatch_message(source, mismatched, classifier, sd))

    expected = [k for k in model_keys if not (skip_classifier and k in classifier_keys)]
    missing = [k for k in expected if k not in to_load]
    backbone_prefixes = tuple(getattr(model, "backbone_prefixes", _DEFAULT_BACKBONE_PREFIXES))
    missing_decoder = [k for k in missing if not k.startswith(backbone_prefixes)]
    missing_backbone = [k for k in missing if k.startswith(backbone_prefixes)]
    if missing_decoder:
        raise CheckpointError(
            f"{source} is missing {len(missing_decoder)} decoder key(s) of {_model_label(model)}: "
            f"{_first(missing_decoder)}. A partial decoder would give meaningless segmentations; "
            f"is this a checkpoint for another model?" + _describe(sd)
        )
    if strict and missing_backbone:
        raise CheckpointError(
            f"{source} is missing {len(missing_backbone)} backbone key(s) of {_model_label(model)}: "
            f"{_first(missing_backbone)}. Pass strict=False to keep those weights as initialised."
            + _describe(sd)
        )
    if strict and unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} key(s) the model {_model_label(model)} does not have: "
            f"{_first(unexpected)}. Pass strict=False to ignore them." + _describe(sd)
        )

    result = model.load_state_dict(to_load, strict=False)
    # Everything we passed is a model key of the right shape, so torch can only report
    # the keys we chose not to load; anything else is a bug worth failing on.
    if result.unexpected_keys:
        leftover = result.unexpected_keys[:_SHOW]
        raise CheckpointError(f"internal error: unexpected keys after filtering: {leftover}")

    return LoadReport(
        source=source,
        format=fmt,
        loaded_keys=len(to_load),
        ignored_keys=ignored + unexpected,
        stripped_prefix=stripped,
        metadata=metadata,
        missing_keys=missing_backbone,
    )


def _check_integrity(sd: Mapping[str, Tensor], metadata: Mapping[str, Any], source: str) -> None:
    """Refuse tensors that differ from what was saved (a recorded digest) and weights that are
    NaN or infinite: either would run and give other labels, with NaN confidence."""
    recorded = metadata.get("state_sha256")
    if isinstance(recorded, str) and recorded and state_digest(sd) != recorded:
        raise CheckpointError(
            f"{source}: its tensors differ from the ones saved (content hash mismatch): the file is "
            "damaged; copy or download it again"
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({_first(bad)}); the weights are "
            "damaged or training diverged: use an earlier checkpoint"
        )


def _mismatch_message(
    source: str,
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    classifier: str,
    sd: Mapping[str, Any],
) -> str:
    shown = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched[:_SHOW])
    more = f" (+{len(mismatched) - _SHOW} more)" if len(mismatched) > _SHOW else ""
    msg = f"{source}: {len(mismatched)} tensor(s) have a different shape than in the model: {shown}{more}."
    cls_names = (classifier,) if classifier else _CLASSIFIER_NAMES
    for key, ck_shape, model_shape in mismatched:
        if key.split(".")[0] in cls_names and ck_shape[:1] != model_shape[:1]:
            msg += (
                f" The checkpoint's classifier has {ck_shape[0]} classes but the model was built for "
                f"{model_shape[0]}: pass {option('labels')} with the checkpoint's "
                f"{ck_shape[0]}-class label set "
                f"(or build the model with num_classes={ck_shape[0]})."
            )
            break
    else:
        msg += " The checkpoint was made for another architecture or width." + _describe(sd)
    return msg
