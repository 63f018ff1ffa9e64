"""What a robot installed by colcon alone has: no street photographs (``make`` fetches
those) and no scikit-image. ``backend: auto`` (the street preset) must still configure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from refinenet_ros.backends.auto_select import agreement_frames
from refinenet_ros.samples import STREET_ENV, street_scenes


def test_auto_checks_agreement_without_sample_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(STREET_ENV, str(tmp_path))  # no street photographs
    monkeypatch.setitem(sys.modules, "skimage", None)  # scikit-image not installed
    frames = agreement_frames((360, 480), count=3)
    assert [f.shape for f in frames] == [(360, 480, 3)] * 3
    assert "drawn street scenes" in caplog.text
    # not noise: large flat regions and edges, like a camera frame, and different scenes
    first = frames[0].astype(np.int16)
    assert np.mean(np.abs(np.diff(first, axis=1)) < 8) > 0.8
    assert not np.array_equal(frames[0], frames[1])


def test_drawn_scenes_are_reproducible() -> None:
    assert all(np.array_equal(a, b) for a, b in zip(street_scenes(2), street_scenes(2), strict=True))
