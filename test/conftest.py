"""Shared fixtures. ROS fixtures live in ros_helpers.py (imported here when present)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from refinenet_ros.ros.process import SHM_ONLY, own_domain_id

TEST_DIR = Path(__file__).resolve().parent
if str(TEST_DIR) not in sys.path:
    sys.path.insert(0, str(TEST_DIR))

# Keep any DDS traffic a test starts on this machine and away from other runs.
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", SHM_ONLY)
os.environ.setdefault("ROS_DOMAIN_ID", own_domain_id())
# ONNX graphs and engines of this run go to a folder of its own, not the user's ~/.ros cache.
os.environ.setdefault("REFINENET_ROS_CACHE", tempfile.mkdtemp(prefix="refinenet_ros_cache_"))
# `auto` measures its CPU candidates once per graph (compiling and calibrating each): the
# suite's dozens of fresh graphs keep the fixed preference; test_openvino tests the measuring.
os.environ.setdefault("REFINENET_ROS_AUTO", "fixed")

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


ROS_FIXTURES = frozenset({"ros_env", "ros_client"})
"""Every test that starts ROS 2 processes or joins DDS goes through one of these."""
SLOW_MODULES = frozenset({"test_fleet", "test_ort_quantize", "test_train", "test_prepare"})
"""Whole modules that train a model, start a Ray cluster or spawn builds: tens of seconds each.

Single tests that take 2 s or more on the 2-core CI machine (an ONNX export, a CLI run in a
subprocess, INT8 calibration) carry ``@pytest.mark.slow`` themselves, so that
``make test-fast`` stays a one-minute loop; ``make test`` (the README's and CI's) runs all."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``-m ros`` / ``-m slow`` select what they say (``make test-fast`` deselects both):
    a test using a ROS fixture is ``ros`` and ``slow`` (it starts node processes), and the
    modules in SLOW_MODULES are ``slow``."""
    for item in items:
        if ROS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ros)
            item.add_marker(pytest.mark.slow)
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
