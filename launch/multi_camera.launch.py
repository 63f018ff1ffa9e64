"""Several cameras, one node, one batched backend call per round:
``ros2 launch refinenet_ros multi_camera.launch.py cameras:=front,left,right preset:=street``.

Each camera namespace ``C`` is subscribed as ``C/image`` (+ ``C/camera_info``) relative to
the node's namespace, and its outputs are ``refinenet_segmentation/C/{labels,color,...}``.
Mirrors ``segmentation_node --ros-args --params-file F -p cameras:=[front,left,right]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription
from refinenet_ros.ros.process import SHM_ONLY

# Launch arguments that override the preset's parameter of the same name when not empty,
# so `build-engine` and the launch line can name the same model, weights and size.
OVERRIDES: dict[str, type] = {
    "model": str, "weights": str, "labels": str, "backend": str, "precision": str,
    "network_height": int, "network_width": int, "engine_dir": str,
}  # fmt: skip


def _overrides(arg: Callable[[str], str]) -> dict[str, object]:
    return {name: cast(arg(name)) for name, cast in OVERRIDES.items() if arg(name) != ""}


def _transport_env(arg: Callable[[str], str]) -> dict[str, str]:
    """Shared-memory-only Fast DDS only when asked (shm_only:=true): forced, it hides the
    outputs from rviz on another computer and from drivers in other containers."""
    if arg("shm_only").lower() not in ("true", "1", "yes"):
        return {}
    return {"FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", SHM_ONLY)}


def _override_arguments() -> list[DeclareLaunchArgument]:
    return [
        DeclareLaunchArgument(name, default_value="", description=f"overrides the preset's {name}")
        for name in OVERRIDES
    ] + [
        DeclareLaunchArgument(
            "shm_only", default_value="false",
            description="Fast DDS over shared memory only (one machine; rviz elsewhere sees nothing)",
        )
    ]  # fmt: skip


def _node(context: LaunchContext) -> list[Node]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    config = os.path.join(get_package_share_directory("refinenet_ros"), "config")
    params_file = arg("params_file") or os.path.join(config, f"{arg('preset')}.yaml")
    cameras = [c.strip() for c in arg("cameras").split(",") if c.strip()]
    return [
        Node(
            package="refinenet_ros",
            executable="segmentation_node",
            name="refinenet_segmentation",
            namespace=arg("namespace"),
            parameters=[
                params_file,
                {"cameras": cameras, "batch_timeout_ms": float(arg("batch_timeout_ms")), **_overrides(arg)},
            ],
            additional_env=_transport_env(arg),
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "cameras", default_value="front,left,right", description="camera namespaces"
            ),
            DeclareLaunchArgument("preset", default_value="street", description="street | indoor"),
            DeclareLaunchArgument(
                "params_file", default_value="", description="parameters YAML (overrides preset)"
            ),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
            DeclareLaunchArgument(
                "batch_timeout_ms", default_value="15.0", description="wait for other cameras"
            ),
            *_override_arguments(),
            OpaqueFunction(function=_node),
        ]
    )
