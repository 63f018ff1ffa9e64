"""``refinenet-ros demo`` end to end (small frames): node + player + recorder, PNGs, an mcap
bag readable by rosbags, and a summary whose counts add up."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ros_helpers import CLI_CMD, ROS_ENV

from refinenet_ros.io import read_label_png

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_demo_plays_records_and_reports(tmp_path: Path, ros_env: dict[str, str]) -> None:
    out = tmp_path / "demo_out"
    env = dict(os.environ, **ROS_ENV)
    args = ["demo", "--frames", "8", "--rate", "4", "--image-size", "64", "96", "--out", str(out)]
    # backend auto (the product default) with the bundled camvid model
    proc = subprocess.run(
        [*CLI_CMD, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "latency (stamp -> recorder) p50" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_sent"] == 8 and 0 < summary["frames_out"] <= summary["frames_in"] <= 8
    accounted = summary["frames_out"] + summary["dropped_skipped_latest_only"] + summary["no_subscriber_yet"]
    assert accounted == summary["frames_in"], summary
    assert summary["latency_ms"]["p50"] > 0 and summary["node_exit"]["code"] == 0
    labels = read_label_png(out / "labels.png")
    assert labels.shape == (64, 96) and labels.max() < 11  # the bundled camvid model
    for name in ("color.png", "overlay.png", "confidence.png"):
        assert (out / name).stat().st_size > 0

    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    with Reader(out / "outputs_bag") as reader:
        topics = {c.topic: c for c in reader.connections}
        prefix = "/demo/refinenet_segmentation"
        assert {f"{prefix}/labels", f"{prefix}/labels/camera_info", f"{prefix}/overlay/compressed"} <= set(
            topics
        )
        msgs = list(reader.messages(connections=[topics[f"{prefix}/labels"]]))
        assert len(msgs) == summary["frames_out"]
        conn, _, raw = msgs[-1]
        msg: Any = typestore.deserialize_cdr(raw, conn.msgtype)
        assert (msg.height, msg.width, msg.encoding) == (64, 96, "mono8")
        np.testing.assert_array_equal(msg.data.reshape(64, 96), labels)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging left behind"
