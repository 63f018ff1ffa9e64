"""The node end to end on this machine: start ``segmentation_node``, play the bundled sample
sequence into it at a fixed rate, record what comes out, and report frames in/out, drops
and latency.

Three actors, as on a robot: the node (a separate process, CPU backend, the bundled CamVid
street model unless ``--weights``), a player (publishes real street photographs panned like
a camera, see :mod:`refinenet_ros.samples`, as ``image`` +
``camera_info`` stamped at send time) and a recorder (subscribes to every output). DDS
stays on this machine: shared-memory transport only and a ROS domain of our own.

Writes into ``--out``: ``labels.png`` (palette PNG), ``color.png``, ``overlay.png``,
``confidence.png`` of the last output, ``outputs_bag/`` (rosbag2 mcap: labels and
labels/camera_info raw, colour/overlay/confidence as CompressedImage to stay small) and
``summary.json``. Latency = receive time at the recorder - the input's header stamp.
"""

from __future__ import annotations

import argparse

from refinenet_ros.backends.base import BACKEND_KINDS
from refinenet_ros.cli import (
    BACKEND_HELP,
    CliError,
    add_image_size_argument,
    add_model_arguments,
    add_network_size_argument,
    model_config_from_args,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=150, help="frames to play")
    parser.add_argument("--rate", type=float, default=5.0, help="player rate in Hz")
    add_image_size_argument(parser)
    parser.add_argument("--out", default="demo_out", help="output folder (created if missing)")
    add_model_arguments(parser, seed=False)
    g = parser.add_argument_group("node")
    add_network_size_argument(g)
    g.add_argument("--backend", default="auto", choices=BACKEND_KINDS, help=BACKEND_HELP)
    parser.add_argument("--no-bag", action="store_true", help="do not record the mcap bag")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.rate <= 0:
        raise CliError("--frames must be >= 1 and --rate > 0")
    # Model, labels and weights are resolved here, the way every command does, so a typo or a
    # label set the weights were not trained for fails in a line before the node starts.
    args.seed = 0
    model_config_from_args(args)
    from refinenet_ros.ros.demo import DemoConfig, run_demo

    size = (args.network_size[0], args.network_size[1]) if args.network_size else None
    config = DemoConfig(
        frames=args.frames, rate=args.rate, size=(args.image_size[0], args.image_size[1]), out=args.out,
        model=args.model or "", weights=args.weights or "", labels=args.labels or "", network_size=size,
        backend=args.backend, no_bag=args.no_bag,
    )  # fmt: skip
    return run_demo(config)
