"""The README's node reference cannot drift from the code's declarations."""

from __future__ import annotations

from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_parameter_table_is_the_generated_one() -> None:
    pytest.importorskip("rclpy", reason="the node's parameter table needs rclpy's types")
    from refinenet_ros.ros.params import PARAMETERS, parameter_table

    table = parameter_table()
    assert table in README, "stale README parameter table: paste refinenet_ros.ros.params.parameter_table()"
    assert all(f"| `{name}` |" in table for name in PARAMETERS)


def test_topic_table_names_every_output_and_input() -> None:
    pytest.importorskip("rclpy", reason="the node module needs rclpy")
    from refinenet_ros.ros.node import OUTPUTS

    topics = README.split("## Topics", 1)[1].split("\n## ", 1)[0]
    for leaf in (*OUTPUTS, "labels/camera_info"):
        assert f"| `~/{leaf}` |" in topics, leaf
    for name in ("image", "image/compressed", "camera_info"):
        assert f"| `{name}` (in) |" in topics, name
