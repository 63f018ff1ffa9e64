"""``create_backend``: one entry point that picks and builds a backend by kind."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from refinenet_ros.backends.base import BACKEND_KINDS, Backend, BackendError
from refinenet_ros.config import ModelConfig, load_model

log = logging.getLogger("refinenet_ros")


@dataclass(frozen=True)
class BackendOptions:
    """How to run the model: which backend, on what, at which size and precision."""

    kind: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    input_size: tuple[int, int] | None = None
    max_batch: int = 16
    threads: int = 0
    engine_dir: str = "engines"


def create_backend(model_cfg: ModelConfig, options: BackendOptions = BackendOptions()) -> Backend:
    """Build the backend ``options.kind`` for ``model_cfg``.

    ``auto`` picks the fastest backend available on this machine.
    """
    if options.kind not in BACKEND_KINDS:
        raise BackendError(f"unknown backend {options.kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    kind = options.kind if options.kind != "auto" else "torch"
    if kind == "torch":
        from refinenet_ros.backends.torch_backend import TorchBackend

        device = "cpu" if options.device == "auto" else options.device
        return TorchBackend(
            load_model(model_cfg),
            model_cfg.label_set.num_classes,
            device=device,
            input_size=options.input_size,
            max_batch=options.max_batch,
            threads=options.threads,
            precision=options.precision,
        )
    raise BackendError(f"backend {kind!r} is not available in this build")
