"""Which INT8 activation ranges a quantised graph is built from.

The bundled weights ship ranges calibrated on their training frames, so INT8 needs no
frames of the user's. Two things replace them: the user's own calibration frames
(``--calib-images``/``--calib-bag``), and the user's own graph (``--onnx``), whose tensors
the shipped ranges do not describe. Shared by the backend factory (which builds the INT8
graph) and ``auto`` (whose decision is keyed by the ranges' source).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig

__all__ = ["own_calibration", "shipped_ranges"]


def own_calibration(options: BackendOptions) -> bool:
    """True when the user gave calibration frames (``--calib-images``/``--calib-bag``): they
    replace the ranges the weights ship."""
    return options.calibration.images is not None or options.calibration.bag is not None


def shipped_ranges(model_cfg: ModelConfig, options: BackendOptions) -> dict[str, Any] | None:
    """The weights' INT8 activation ranges, unless the user calibrates on their own frames or
    runs their own graph (``--onnx``)."""
    if options.onnx is not None or own_calibration(options):
        return None
    from refinenet_ros.weights.records import weights_int8_ranges

    return weights_int8_ranges(model_cfg.weights)
