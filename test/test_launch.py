"""Launch arguments and presets against the node's declared parameters.

The launch files run for real in test/test_robot.py (``make test-robot``); here, without a
ROS install: every override argument and every key of the shipped presets is a parameter
the node declares (or a user's ``weights:=...`` would silently do nothing), and an
argument left empty sends nothing, so the params file's value stands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from refinenet_ros.ros.launching import (
    COMMON_ARGUMENTS,
    OVERRIDES,
    file_parameters,
    given_overrides,
    transport_env,
)

ROOT = Path(__file__).resolve().parents[1]


def declared_parameters() -> set[str]:
    pytest.importorskip("rclpy", reason="the node's parameter table needs rclpy's types")
    from refinenet_ros.ros.params import PARAMETERS

    return set(PARAMETERS)


def test_override_arguments_are_node_parameters() -> None:
    assert {"model", "weights", "labels", "backend", "precision", "network_height", "network_width",
            "engine_dir"} <= set(OVERRIDES) <= declared_parameters()  # fmt: skip
    assert {"shm_only", "preset", "params_file"} <= {name for name, _, _ in COMMON_ARGUMENTS}


def test_only_given_arguments_override_and_shm_is_never_forced() -> None:
    given = {"network_height": "240", "weights": "", "precision": "int8", "shm_only": "false"}

    def arg(name: str) -> str:
        return given.get(name, "")

    assert given_overrides(arg) == {"network_height": 240, "precision": "int8"}
    given["network_width"] = "wide"
    with pytest.raises(ValueError, match=r"^launch argument network_width:=wide must be a whole number$"):
        given_overrides(arg)
    assert transport_env(arg) == {}
    assert "SHM" in transport_env(lambda n: "true" if n == "shm_only" else "")["FASTDDS_BUILTIN_TRANSPORTS"]


@pytest.mark.parametrize("preset", ["street", "indoor"])
def test_presets_set_only_declared_parameters(preset: str) -> None:
    path = ROOT / "config" / f"{preset}.yaml"
    params = file_parameters(path)
    assert params == yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    assert set(params) <= declared_parameters()
    # each preset runs its bundled model, at the size it was packed and measured at
    from refinenet_ros.weights import get_weights

    bundled = get_weights({"street": "camvid", "indoor": "indoor"}[preset])
    assert (params["weights"], params["labels"], params["model"]) == (
        bundled.name,
        bundled.labels,
        bundled.model,
    )
    assert (params["network_height"], params["network_width"]) == bundled.network_size
