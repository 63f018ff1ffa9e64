"""One camera: ``ros2 launch refinenet_ros segmentation.launch.py preset:=street image:=/camera/image_raw``.

Arguments: ``preset`` (street|indoor: config/<preset>.yaml), ``params_file`` (your YAML,
used instead of the preset), ``namespace``, ``image`` (the camera's image topic; its
``camera_info`` sibling is used), ``compressed`` (true: subscribe ``<image>/compressed``;
false: raw; not given: as the params file says). Overrides of the params file, sent only
when given: ``model weights labels backend precision network_height network_width
engine_dir``; ``shm_only:=true`` for shared-memory-only Fast DDS (one machine).
Mirrors ``segmentation_node --ros-args --params-file F -p input_transport:=... -r image:=...``.
Outputs: ``<namespace>/refinenet_segmentation/{labels,labels/camera_info,color,overlay,confidence}``.
A node that exits with an error (a failed configure) makes the launch exit non-zero.
"""

from __future__ import annotations

from typing import Any

from launch.actions import OpaqueFunction

from launch import LaunchContext, LaunchDescription
from refinenet_ros.ros.launching import (
    COMMON_ARGUMENTS,
    declare_arguments,
    is_true,
    launch_argument,
    segmentation_node,
)

ARGUMENTS = [
    *COMMON_ARGUMENTS,
    ("image", "/camera/image_raw", "input image topic"),
    ("compressed", "", "true: subscribe <image>/compressed; false: raw (default: the params file's)"),
]


def _node(context: LaunchContext) -> list[Any]:
    arg = launch_argument(context)
    image = arg("image").rstrip("/")
    camera_info = image.rsplit("/", 1)[0] + "/camera_info" if "/" in image else "camera_info"
    remappings = [("image", image), ("image/compressed", f"{image}/compressed"), ("camera_info", camera_info)]
    given = {"input_transport": "compressed" if is_true(arg("compressed")) else "raw"}
    return segmentation_node(arg, parameters=given if arg("compressed") else {}, remappings=remappings)


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*declare_arguments(ARGUMENTS), OpaqueFunction(function=_node)])
