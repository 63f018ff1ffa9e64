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
from pathlib import Path

from refinenet_ros.backends.base import BACKEND_KINDS
from refinenet_ros.cli import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=150, help="frames to play (default 150)")
    parser.add_argument("--rate", type=float, default=5.0, help="player rate in Hz (default 5)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                        help="frame size (default 480 640)")  # fmt: skip
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--model", default="", help="network (default: the package default)")
    parser.add_argument("--weights", default="",
                        help="bundled name or checkpoint (default: camvid; 'random')")  # fmt: skip
    parser.add_argument("--labels", default="", help="label set (default: from the weights)")
    parser.add_argument("--network-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="network input size (default: the weights' size)")  # fmt: skip
    parser.add_argument("--backend", default="auto", choices=BACKEND_KINDS)
    parser.add_argument("--no-bag", action="store_true", help="do not record the mcap bag")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.rate <= 0:
        raise CliError("--frames must be >= 1 and --rate > 0")
    from refinenet_ros.config import RANDOM_WEIGHTS
    from refinenet_ros.weights import WEIGHTS

    if args.weights and args.weights not in (*WEIGHTS, RANDOM_WEIGHTS) and not Path(args.weights).is_file():
        raise CliError(f"--weights {args.weights}: no such file and no bundled weights of that name")
    from refinenet_ros.ros.demo import DemoConfig, run_demo

    size = (args.network_size[0], args.network_size[1]) if args.network_size else None
    config = DemoConfig(
        frames=args.frames, rate=args.rate, size=(args.size[0], args.size[1]), out=args.out,
        model=args.model, weights=args.weights, labels=args.labels, network_size=size,
        backend=args.backend, no_bag=args.no_bag,
    )  # fmt: skip
    return run_demo(config)
