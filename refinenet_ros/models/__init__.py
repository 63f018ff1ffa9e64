"""PyTorch RefineNet family: builders, metadata, checkpoint I/O, multi-scale inference.

Public API (other modules code against these names)::

    build_model(name, num_classes, *, seed=0, cascaded=False, **options) -> nn.Module
    MODEL_NAMES, MODEL_SPECS, ModelSpec, IMAGENET_MEAN, IMAGENET_STD, count_parameters
    load_checkpoint(model, path_or_state_dict, *, strict=True, map_location="cpu",
                    skip_classifier=False) -> LoadReport
    save_checkpoint(path, model, *, model_name, label_set, num_classes, mean, std, network_size, extra=None)
    read_checkpoint_metadata(path) -> dict | None, CheckpointError, LoadReport
    guess_model_name(state_dict) -> str | None, checkpoint_num_classes(state_dict) -> int | None
    predict_probs(model, x, *, scales=(1.0,), flip=False) -> Tensor, PAPER_SCALES
    fold_batchnorm(model) -> int  (inference only: BN folded into the conv before it)

Models take normalised float NCHW RGB and return logits at ``ceil(H/4) x ceil(W/4)``.
"""

from __future__ import annotations

from refinenet_ros.model_specs import IMAGENET_MEAN, IMAGENET_STD, MODEL_NAMES, MODEL_SPECS, ModelSpec

from .checkpoint import LoadReport, checkpoint_num_classes, guess_model_name, load_checkpoint
from .checkpoint_file import CheckpointError, read_checkpoint_metadata, save_checkpoint
from .fold import fold_batchnorm
from .multiscale import PAPER_SCALES, predict_probs
from .refinenet import (
    CASCADE_SCALES,
    CascadedRefineNet,
    LWRefineNet,
    LWRefineNetMobileNetV2,
    RefineNet,
    build_model,
    count_parameters,
)

__all__ = [
    "CASCADE_SCALES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "PAPER_SCALES",
    "CascadedRefineNet",
    "CheckpointError",
    "LWRefineNet",
    "LWRefineNetMobileNetV2",
    "LoadReport",
    "ModelSpec",
    "RefineNet",
    "build_model",
    "checkpoint_num_classes",
    "count_parameters",
    "fold_batchnorm",
    "guess_model_name",
    "load_checkpoint",
    "predict_probs",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
