"""Several cameras, one node, one batched backend call per round:
``ros2 launch refinenet_ros multi_camera.launch.py cameras:=front,left,right preset:=street``.

Each camera namespace ``C`` is subscribed as ``C/image`` (+ ``C/camera_info``) relative to
the node's namespace, and its outputs are ``refinenet_segmentation/C/{labels,color,...}``.
``cameras`` and ``batch_timeout_ms`` override the params file only when given (cameras
default to front,left,right when the file names none); the other arguments are those of
segmentation.launch.py. Mirrors ``segmentation_node --ros-args --params-file F -p cameras:=[...]``.
"""

from __future__ import annotations

from typing import Any

from launch.actions import OpaqueFunction

from launch import LaunchContext, LaunchDescription
from refinenet_ros.ros.launching import (
    COMMON_ARGUMENTS,
    declare_arguments,
    file_parameters,
    launch_argument,
    params_file,
    segmentation_node,
    typed,
)

DEFAULT_CAMERAS = ["front", "left", "right"]
ARGUMENTS = [
    *COMMON_ARGUMENTS,
    ("cameras", "", "camera namespaces, comma-separated (default: the params file's, else front,left,right)"),
    ("batch_timeout_ms", "", "how long to wait for the other cameras (default: the params file's)"),
]


def _node(context: LaunchContext) -> list[Any]:
    arg = launch_argument(context)
    given: dict[str, object] = {}
    if arg("cameras"):
        given["cameras"] = [c.strip() for c in arg("cameras").split(",") if c.strip()]
    else:
        from ament_index_python.packages import get_package_share_directory

        config = f"{get_package_share_directory('refinenet_ros')}/config"
        if not file_parameters(params_file(arg, config)).get("cameras"):
            given["cameras"] = DEFAULT_CAMERAS
    if arg("batch_timeout_ms"):
        given["batch_timeout_ms"] = typed("batch_timeout_ms", arg("batch_timeout_ms"), float)
    return segmentation_node(arg, parameters=given)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*declare_arguments(ARGUMENTS), OpaqueFunction(function=_node)])
