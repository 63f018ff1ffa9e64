"""Inference backends behind one protocol (see :mod:`refinenet_ros.backends.base`)."""

from refinenet_ros.backends.base import (
    BACKEND_KINDS,
    PRECISIONS,
    Backend,
    BackendError,
    BackendOptions,
    CalibrationSpec,
    check_batch,
)
from refinenet_ros.backends.factory import create_backend

__all__ = [
    "BACKEND_KINDS",
    "PRECISIONS",
    "Backend",
    "BackendError",
    "BackendOptions",
    "CalibrationSpec",
    "check_batch",
    "create_backend",
]
