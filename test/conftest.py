"""Shared fixtures. ROS fixtures live in ros_helpers.py (imported here when present)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

TEST_DIR = Path(__file__).resolve().parent
if str(TEST_DIR) not in sys.path:
    sys.path.insert(0, str(TEST_DIR))

# Keep any DDS traffic a test starts on this machine and away from other runs.
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "SHM?max_msg_size=8MB&sockets_size=64MB")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
# ONNX graphs and engines of this run go to a folder of its own, not the user's ~/.ros cache.
os.environ.setdefault("REFINENET_ROS_CACHE", tempfile.mkdtemp(prefix="refinenet_ros_cache_"))

try:  # ROS fixtures (node process, topic helpers) when the ROS helpers module exists
    from ros_helpers import *  # noqa: F403
except ImportError as exc:  # pragma: no cover - only without the module
    if "ros_helpers" not in str(exc):
        raise

SMALL_MODEL = "lw_refinenet_mobilenetv2"


@pytest.fixture(scope="session")
def small_model_cfg():
    """The cheapest real network (3.3 M params), seeded random weights, VOC classes."""
    from refinenet_ros.config import ModelConfig

    return ModelConfig(model=SMALL_MODEL, labels="voc", seed=0)


@pytest.fixture(scope="session")
def torch_backend(small_model_cfg):
    from refinenet_ros.backends import BackendOptions, create_backend

    return create_backend(small_model_cfg, BackendOptions(kind="torch", max_batch=4))
