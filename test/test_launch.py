"""Launch files and presets against the node's declared parameters.

The launch package is not installable here (it comes with a ROS install), so the launch
files are read as Python source: every argument they turn into a node parameter, and
every key of the shipped presets, must be a parameter the node declares, or a user's
``weights:=...`` would silently do nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def declared_parameters() -> set[str]:
    pytest.importorskip("rclpy", reason="the node's parameter table needs rclpy's types")
    from refinenet_ros.ros.params import PARAMETERS

    return set(PARAMETERS)


def literal_dict(tree: ast.Module, name: str) -> dict[str, object]:
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            value = node.value
            assert isinstance(value, ast.Dict)
            return {ast.literal_eval(k): v for k, v in zip(value.keys, value.values, strict=True) if k}
    raise AssertionError(f"{name} not found")


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_overrides_are_node_parameters(path: Path) -> None:
    tree = ast.parse(path.read_text())
    overrides = literal_dict(tree, "OVERRIDES")
    assert {"model", "weights", "labels", "backend", "precision", "network_height", "network_width",
            "engine_dir"} <= set(overrides)  # fmt: skip
    assert set(overrides) <= declared_parameters()
    # the parameter dicts the launch file builds inline name declared parameters too
    inline = {
        ast.literal_eval(k)
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for k in node.keys
        if isinstance(k, ast.Constant) and isinstance(k.value, str)
    }
    assert inline - {"FASTDDS_BUILTIN_TRANSPORTS"} <= declared_parameters() | set(overrides)
    declared_args = {
        ast.literal_eval(call.args[0])
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and getattr(call.func, "id", "") == "DeclareLaunchArgument"
        and call.args
        and isinstance(call.args[0], ast.Constant)
    }
    assert "shm_only" in declared_args, "shared-memory-only DDS must be a launch argument, never forced"


@pytest.mark.parametrize("preset", ["street", "indoor"])
def test_presets_set_only_declared_parameters(preset: str) -> None:
    params = yaml.safe_load((ROOT / "config" / f"{preset}.yaml").read_text())["/**"]["ros__parameters"]
    assert set(params) <= declared_parameters()
    if preset == "street":  # the bundled model, at the size it was trained and measured at
        assert (params["weights"], params["labels"]) == ("camvid", "camvid")
        assert (params["network_height"], params["network_width"]) == (360, 480)
