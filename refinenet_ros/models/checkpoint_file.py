"""Checkpoint files: read without running code, written atomically with a metadata record.

Files are read with ``torch.load(weights_only=True)`` (no arbitrary code execution),
allow-listing only NumPy scalar types, which training scripts often store as
``best_val``; torch's advice to pass ``weights_only=False`` is never relayed. Our own files
(:func:`save_checkpoint`) carry a metadata record (model name, label set, normalisation,
network size, a digest of the tensors) so the rest of the package can configure itself and
a damaged file is refused at load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import os
import pickle
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.io import atomic_write, signals_deferred
from refinenet_ros.model_specs import MODEL_NAMES

__all__ = [
    "CHECKPOINT_MARKER",
    "EXPECTED_FORMATS",
    "CheckpointError",
    "plain_data",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "state_digest",
    "torch_load_safely",
]

#: Top-level key that marks a file written by :func:`save_checkpoint` (value: version).
CHECKPOINT_MARKER = "refinenet_ros_checkpoint"
_FORMAT_VERSION = 1


EXPECTED_FORMATS = (
    "a PyTorch file written by torch.save holding a RefineNet state_dict: flat, "
    "{'model': sd}, {'segmenter': sd} (optionally 'module.'-prefixed), {'weights': sd, ...}, "
    "or a refinenet_ros checkpoint"
)


class CheckpointError(RefineNetRosError, ValueError):
    """A checkpoint could not be read, or does not fit the model. The message says why."""


def _numpy_safe_globals() -> list[Any]:
    """NumPy scalar/dtype globals that are safe to allow under ``weights_only``.

    Training scripts store metrics such as ``best_val`` as ``np.float64``; refusing those
    files would make users fall back to unsafe ``weights_only=False``.
    """
    allowed: list[Any] = [np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with suppress(ImportError, AttributeError):
            allowed.append(importlib.import_module(module_name).scalar)
            break
    for t in (
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    ):
        allowed.append(type(np.dtype(t)))
    return allowed


def torch_load_safely(path: Path, map_location: Any, *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist; expected {EXPECTED_FORMATS}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path {str(path)!r} is not a file; expected {EXPECTED_FORMATS}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty; expected {EXPECTED_FORMATS}")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            if mmap:
                try:
                    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
                except RuntimeError:
                    pass  # legacy (non-zip) files cannot be memory-mapped: read normally
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not readable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or isinstance(exc, pickle.UnpicklingError):
            # torch's text advises weights_only=False (running arbitrary code): never relay it
            raise CheckpointError(
                f"{str(path)!r} is not a PyTorch checkpoint this package can read safely "
                f"(not a plain tensor archive); expected {EXPECTED_FORMATS}"
            ) from exc
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint this package can read "
            f"({type(exc).__name__}: {first[:300]}); expected {EXPECTED_FORMATS}"
        ) from exc


def plain_data(value: Any) -> tuple[bool, Any]:
    """(is plain data, value with NumPy scalars turned into Python ones)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    if isinstance(value, np.generic):
        return True, value.item()
    if isinstance(value, (list, tuple)):
        items = [plain_data(v) for v in value]
        return all(ok for ok, _ in items), type(value)(v for _, v in items)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            ok, pv = plain_data(v)
            if not ok or not isinstance(k, (str, int)):
                return False, None
            out[k] = pv
        return True, out
    return False, None


def state_digest(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: what
    :func:`save_checkpoint` records so a flipped bit in the tensor data is found at load."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_name: str,
    label_set: str | Sequence[str],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    network_size: tuple[int, int] | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model``'s weights plus a metadata record, atomically.

    The file is written to a temporary file in the destination directory, fsynced, and
    moved over ``path`` with ``os.replace``: readers (a running node, an engine build)
    see the old file or the new one, never a torn one, and a crash leaves no partial file.
    ``network_size`` is (height, width) or None. ``extra`` must be plain data (numbers,
    strings, lists, dicts) so the file stays loadable with ``weights_only=True``.
    """
    if model_name not in MODEL_NAMES:
        raise ValueError(f"unknown model_name {model_name!r}; expected one of: {', '.join(MODEL_NAMES)}")
    model_classes = getattr(model, "num_classes", None)
    if isinstance(model_classes, int) and model_classes != num_classes:
        raise ValueError(f"num_classes={num_classes} but the model was built for {model_classes} classes")
    if len(tuple(mean)) != 3 or len(tuple(std)) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)!r} and {list(std)!r}")
    if network_size is not None and (len(network_size) != 2 or any(int(v) <= 0 for v in network_size)):
        raise ValueError(f"network_size must be (height, width) > 0 or None, got {network_size!r}")
    ok, extra_plain = plain_data(dict(extra or {}))
    if not ok:
        raise ValueError("extra must hold only plain data (None, bool, int, float, str, lists, dicts)")
    labels: str | list[str] = label_set if isinstance(label_set, str) else [str(v) for v in label_set]

    package_version = getattr(importlib.import_module("refinenet_ros"), "__version__", "unknown")

    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    metadata: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "model_name": model_name,
        "cascaded": bool(getattr(model, "cascaded", False)),
        "label_set": labels,
        "num_classes": int(num_classes),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "network_size": [int(v) for v in network_size] if network_size is not None else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "refinenet_ros_version": str(package_version),
        "extra": extra_plain,
        "state_sha256": state_digest(state),
    }
    payload = {CHECKPOINT_MARKER: _FORMAT_VERSION, "metadata": metadata, "state_dict": state}
    _atomic_torch_save(Path(path), payload)


def _atomic_torch_save(path: Path, payload: Any) -> None:
    """Ctrl-C or SIGTERM during the write is held until it ends: ``torch.save`` stopped
    half way raises its own error in place of the interrupt (the temporary file is gone either way)."""
    with signals_deferred(), atomic_write(path) as handle:
        torch.save(payload, handle)


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata record of a file written by :func:`save_checkpoint`, else ``None``.

    Published checkpoints have no record and give ``None``. The file is memory-mapped
    where possible, so this is cheap even for large checkpoints. Unreadable files raise
    :class:`CheckpointError`.
    """
    obj = torch_load_safely(Path(path), "cpu", mmap=True)
    if isinstance(obj, Mapping) and CHECKPOINT_MARKER in obj and isinstance(obj.get("metadata"), Mapping):
        _, meta = plain_data(obj["metadata"])
        return dict(meta or {})
    return None
