"""Slow builds in a child process, through ``build_segmenter(cancelled=...)``.

The ONNX export holds the GIL for seconds, so a caller that must stay responsive (the node's
configure) has the export run in a spawned child: a cold cache spawns one, a warm one none,
a cancel gives up at once and leaves no half-written graph, a dead child is one clear error.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from refinenet_ros.backends import BackendError, BackendOptions
from refinenet_ros.backends.prepare import BuildCancelled
from refinenet_ros.config import ModelConfig
from refinenet_ros.segmenter import build_segmenter

MODEL = ModelConfig(model="lw_refinenet_mobilenetv2", labels="camvid", weights="random")
SPAWNED = "building in a child process"


def _options(cache: Path) -> BackendOptions:
    return BackendOptions(
        kind="onnxruntime", device="cpu", input_size=(64, 96), max_batch=1, engine_dir=str(cache)
    )


def test_a_cold_cache_builds_in_a_child_and_a_warm_one_spawns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="refinenet_ros")
    first = build_segmenter(MODEL, _options(tmp_path), cancelled=lambda: False)
    assert SPAWNED in caplog.text
    assert "exported lw_refinenet_mobilenetv2" in caplog.text  # the child's log lines reach ours
    assert [p for p in (tmp_path / "onnx").glob("*.onnx")], "the child filled the cache"
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    labels = first(image).labels
    caplog.clear()
    second = build_segmenter(MODEL, _options(tmp_path), cancelled=lambda: False)
    assert SPAWNED not in caplog.text
    np.testing.assert_array_equal(second(image).labels, labels)
    # No line is said twice although the child and the retry walk the same path.
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(set(lines)), lines


def test_cancel_gives_up_at_once_and_leaves_no_half_built_graph(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(BuildCancelled):
        build_segmenter(MODEL, _options(tmp_path), cancelled=lambda: time.monotonic() - t0 > 1.0)
    assert time.monotonic() - t0 < 1.0 + 2.0
    assert not multiprocessing.active_children(), "the build child outlived the cancel"
    assert not list(tmp_path.rglob("*.onnx"))


def test_a_child_that_dies_is_one_clear_error(tmp_path: Path) -> None:
    def kill_the_child() -> bool:
        for child in multiprocessing.active_children():
            if child.name == "refinenet-build" and child.pid is not None:
                os.kill(child.pid, signal.SIGKILL)
        return False

    with pytest.raises(BackendError, match="build process died"):
        build_segmenter(MODEL, _options(tmp_path), cancelled=kill_the_child)
