"""``refinenet-ros``: one command line for every job, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, onnx, rclpy) inside ``run`` so ``--help`` stays fast.
Options shared by many subcommands (model, backend) are defined once here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from refinenet_ros import __version__
from refinenet_ros.backends.base import BACKEND_KINDS, PRECISIONS
from refinenet_ros.errors import one_line
from refinenet_ros.errors import user_error_text as library_error_text

if TYPE_CHECKING:
    from refinenet_ros.backends.factory import BackendOptions
    from refinenet_ros.config import ModelConfig

# name -> (module, one-line help). Modules are imported only when building the parser.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("refinenet_ros.cli.segment", "segment image files (or the bundled samples)"),
    "bag": ("refinenet_ros.cli.bag", "segment camera topics of a rosbag2 into new label/colour topics"),
    "evaluate": ("refinenet_ros.cli.evaluate", "mIoU and accuracies on a labelled data set"),
    "train": ("refinenet_ros.cli.train", "fine-tune a model on a labelled data set"),
    "bench": ("refinenet_ros.bench", "benchmarks: model (GFLOP/s vs peak), node (latency, overhead), bag"),
    "node": ("refinenet_ros.cli.node", "run the ROS 2 segmentation node (ROS args after --ros-args)"),
    "export": ("refinenet_ros.cli.export", "export the model + pre/post-processing to ONNX"),
    "build-engine": ("refinenet_ros.cli.build_engine", "build/refresh this GPU's TensorRT engine"),
    "demo": ("refinenet_ros.cli.demo", "node end to end: play samples, record outputs, report latency"),
    "weights": ("refinenet_ros.cli.weights", "list the bundled trained weights (name, model, labels, mIoU)"),
    "fleet": ("refinenet_ros.fleet.cli", "segment many bags exactly once on Ray, resumable"),
}

MAX_NETWORK_SIDE = 8192
"""Largest network side accepted (the node's network_height/width bound): beyond it a
typo like 100000 would try to allocate tens of GB before failing."""

MODEL_CHOICES_HELP = "refinenet_resnet50|101|152, lw_refinenet_resnet50|101|152, lw_refinenet_mobilenetv2"


class CliError(Exception):
    """A user error: printed as one line without a traceback, exit status 2."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help=f"network ({MODEL_CHOICES_HELP}); default: from the weights, else lw_refinenet_mobilenetv2",
    )
    g.add_argument(
        "--labels",
        default=None,
        help="label set (camvid, cityscapes, voc, nyud40, sunrgbd, "
        "ade20k, pascal_context, person_part); default: from the weights",
    )
    g.add_argument(
        "--weights",
        default=None,
        help="bundled weights name (camvid; see `refinenet-ros weights`) or a checkpoint file "
        "(default: the bundled camvid street model; 'random' = seeded random weights, meaningless labels)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the random init without --weights")


def model_config_from_args(args: argparse.Namespace, *, default_weights: bool = True) -> ModelConfig:
    """The model the user asked for, resolved once (weights name/path, labels, preprocessing).

    ``default_weights`` False (train): no bundled weights unless ``--weights`` names them.
    """
    from refinenet_ros.config import RANDOM_WEIGHTS, ConfigError, ModelConfig
    from refinenet_ros.labels import get_label_set
    from refinenet_ros.models import MODEL_NAMES
    from refinenet_ros.weights import WEIGHTS, WeightsError

    if args.model is not None and args.model not in MODEL_NAMES:
        raise CliError(f"unknown --model {args.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if args.labels is not None:
        try:
            get_label_set(args.labels)
        except ValueError as exc:
            raise CliError(f"--labels: {exc}") from None
    if args.weights is not None and args.weights != RANDOM_WEIGHTS and args.weights not in WEIGHTS:
        from pathlib import Path

        if not Path(args.weights).is_file():
            raise CliError(
                f"--weights {args.weights}: no such file and no bundled weights of that name "
                f"(bundled: {', '.join(WEIGHTS)}; 'random' for random init)"
            )
    cfg = ModelConfig(
        model=args.model, labels=args.labels, weights=args.weights, seed=args.seed,
        default_weights=default_weights,
    )  # fmt: skip
    try:
        return cfg.resolved()
    except (ConfigError, WeightsError) as exc:
        raise CliError(f"--weights: {exc}") from None


def add_backend_arguments(parser: argparse.ArgumentParser, *, batch: bool = True) -> None:
    g = parser.add_argument_group("backend")
    g.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_KINDS,
        help="inference backend (auto: TensorRT with CUDA, else ONNX Runtime, else torch)",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: best available)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp16: CUDA; bf16: OpenVINO on AMX/AVX-512-BF16 CPUs; int8: calibrated")  # fmt: skip
    g.add_argument(
        "--network-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="resize inputs to this network size (default: the size the weights record, 360x480 "
        "for camvid; random weights: each image's own size)",
    )
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0: library default)")
    g.add_argument(
        "--engine-dir",
        default=None,
        help="cache of ONNX graphs, INT8 graphs and TensorRT engines (default: $REFINENET_ROS_CACHE, "
        "else $ROS_HOME/refinenet_ros, else ~/.ros/refinenet_ros)",
    )
    if batch:
        g.add_argument("--batch", type=int, default=1, help="images per backend call")
    add_calibration_arguments(parser)


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """INT8 calibration data: the robot's own frames (folder or bag topic); one definition for
    every command that can build an INT8 graph or engine."""
    c = parser.add_argument_group("INT8 calibration (with --precision int8)")
    c.add_argument("--calib-images", default=None, help="folder of the robot's camera images")
    c.add_argument("--calib-bag", default=None, help="rosbag2 (sqlite3 or mcap) with camera frames")
    c.add_argument("--calib-topic", default=None, help="Image or CompressedImage topic in --calib-bag")
    c.add_argument("--calib-count", type=int, default=64, help="images to calibrate on (spread over the set)")


def backend_options_from_args(args: argparse.Namespace) -> BackendOptions:
    from pathlib import Path

    from refinenet_ros.backends.engine_cache import default_cache_dir
    from refinenet_ros.backends.factory import BackendOptions

    size = tuple(args.network_size) if args.network_size else None
    if size is not None and not (min(size) >= 32 and max(size) <= MAX_NETWORK_SIDE):
        raise CliError(
            f"--network-size {size[0]} {size[1]}: each side must be within 32..{MAX_NETWORK_SIDE} pixels"
        )
    if getattr(args, "batch", 1) < 1:
        raise CliError(f"--batch {args.batch}: must be >= 1")
    if args.threads < 0:
        raise CliError(f"--threads {args.threads}: must be >= 0 (0: the library's default)")
    engine_dir = args.engine_dir or default_cache_dir()
    blocker = next((p for p in (Path(engine_dir), *Path(engine_dir).parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CliError(f"--engine-dir {engine_dir}: {blocker} is a file, not a folder; give a folder")
    return BackendOptions(
        kind=args.backend,
        device=args.device,
        precision=args.precision,
        input_size=size,
        max_batch=max(1, getattr(args, "batch", 1)),
        threads=args.threads,
        engine_dir=engine_dir,
        calib_images=getattr(args, "calib_images", None),
        calib_bag=getattr(args, "calib_bag", None),
        calib_topic=getattr(args, "calib_topic", None),
        calib_count=getattr(args, "calib_count", 64),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refinenet-ros",
        description="RefineNet semantic segmentation for ROS 2: node, offline tools, engines.",
    )
    parser.add_argument("--version", action="version", version=f"refinenet_ros {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception: every ``finally`` and ``with`` cleanup (the bag tool's stage
    folder, atomic writes) runs exactly as for Ctrl-C instead of the process vanishing."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def user_error_text(exc: BaseException) -> str | None:
    """One line for a user or environment error (a :class:`CliError` too), else None."""
    if isinstance(exc, CliError):
        return one_line(str(exc))
    return library_error_text(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. User and environment errors end as one ``error:`` line and exit 2,
    Ctrl-C as ``interrupted`` (130), SIGTERM as ``terminated`` (143), both after cleanup;
    only bugs in this package show a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[%(levelname)s] %(message)s",
    )
    prog = f"refinenet-ros {args.command}"
    # The node keeps rclpy's own signal handling (it shuts the context down, the node exits cleanly).
    previous = None
    if args.command != "node" and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args._run(args) or 0)
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        text = user_error_text(exc)
        if text is None:
            raise
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
