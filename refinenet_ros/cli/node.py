"""Run the segmentation node (same as ``segmentation_node``); everything after ``--ros-args``
goes to ROS unchanged, e.g. ``refinenet-ros node --ros-args -p model:=lw_refinenet_resnet50
--params-file config/street.yaml -r image:=/camera/image_raw``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ros-args",
        dest="ros_args",
        nargs=argparse.REMAINDER,
        default=None,
        help="ROS arguments (-p name:=value, --params-file FILE, -r from:=to, --log-level ...)",
    )


def ros_argv(args: argparse.Namespace) -> list[str]:
    """The argv rclpy sees: program name, then ``--ros-args ...`` when given."""
    argv = ["refinenet-ros-node"]
    if args.ros_args is not None:
        argv += ["--ros-args", *args.ros_args]
    return argv


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.ros.main import main

    return main(ros_argv(args))
