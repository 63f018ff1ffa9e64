"""``refinenet-ros``: one command line for every job, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and
keeps heavy imports (torch, onnx, rclpy) inside ``run`` so ``--help`` stays fast.

One vocabulary: every concept that several commands share (model, backend, network
size, image size, image topic, outputs, INT8 calibration) is one option defined once
here -- same name, same format, same help, default shown -- and every command uses
these helpers instead of its own spelling. Cheap values (sizes, output names) are
checked while parsing, so a typo never waits for a model to load.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from refinenet_ros import __version__
from refinenet_ros.backends.base import BACKEND_KINDS, MAX_NETWORK_SIDE, MIN_NETWORK_SIDE, PRECISIONS
from refinenet_ros.config import DEFAULT_MODEL
from refinenet_ros.errors import RefineNetRosError, cli_words, one_line, use_option_words, user_error_text
from refinenet_ros.labels import LABEL_SET_NAMES
from refinenet_ros.model_specs import MODEL_NAMES
from refinenet_ros.segmenter import OUTPUT_KINDS

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions, CalibrationSpec
    from refinenet_ros.config import ModelConfig

# name -> (module, one-line help). Modules are imported only when building the parser.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("refinenet_ros.cli.segment", "segment image files (or the bundled samples)"),
    "bag": ("refinenet_ros.cli.bag", "segment camera topics of a rosbag2 into new label/colour topics"),
    "evaluate": ("refinenet_ros.cli.evaluate", "mIoU and accuracies on a labelled data set"),
    "train": ("refinenet_ros.cli.train", "fine-tune a model on a labelled data set"),
    "bench": (
        "refinenet_ros.cli.bench",
        "benchmarks: model (GFLOP/s vs peak), node (latency, overhead), bag, fleet (Ray vs bag)",
    ),
    "node": ("refinenet_ros.cli.node", "run the ROS 2 segmentation node (ROS args after --ros-args)"),
    "export": ("refinenet_ros.cli.export", "export the model + pre/post-processing to ONNX"),
    "build-engine": ("refinenet_ros.cli.build_engine", "build/refresh this GPU's TensorRT engine"),
    "demo": ("refinenet_ros.cli.demo", "node end to end: play samples, record outputs, report latency"),
    "weights": ("refinenet_ros.cli.weights", "list the bundled trained weights (name, model, labels, mIoU)"),
    "fleet": ("refinenet_ros.cli.fleet", "segment many bags exactly once on Ray, resumable"),
    "label": (
        "refinenet_ros.cli.label",
        "a teacher model labels images or a bag topic for training (resumable)",
    ),
}


MODEL_CHOICES_HELP = ", ".join(MODEL_NAMES)


class CliError(RefineNetRosError):
    """A user error: printed as one line without a traceback, exit status 2."""


PROG = "refinenet-ros"


# --- parser and help formatting -------------------------------------------------------------

_HAND_WRITTEN_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)


def format_default(value: object) -> str:
    """A default as a user would type it: ``320 320`` for a pair, ``labels color`` for a list,
    ``480 640, 360 480`` for several sizes (not Python's ``(320, 320)``)."""
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            return ", ".join(format_default(v) for v in value)
        return " ".join(format_default(v) for v in value)
    return str(value)


def shows_default(action: argparse.Action) -> bool:
    """Whether ``--help`` must show ``action``'s default: an option that takes a value and
    has one (flags, ``None`` and empty lists say nothing a user could type)."""
    default = action.default
    return bool(
        action.option_strings
        and action.help is not argparse.SUPPRESS
        and action.nargs != 0
        and default is not None
        and default is not argparse.SUPPRESS
        and default not in ([], ())
    )


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (``(default: 1000)``), formatted as typed.

    Like :class:`argparse.ArgumentDefaultsHelpFormatter`, but silent for flags and
    ``None`` defaults (whose help says in words what happens) and for help texts that
    already explain their default, so no option says it twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not shows_default(action) or "%(default)" in text or _HAND_WRITTEN_DEFAULT.search(text):
            return text
        return f"{text} (default: {format_default(action.default).replace('%', '%%')})"


class CliParser(argparse.ArgumentParser):
    """The parser of every command and subcommand (subparsers inherit the class): defaults
    shown in ``--help``, and a usage error is one line and exit 2 like every other user error."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# --- shared options -------------------------------------------------------------------------


def network_side(text: str) -> int:
    """One side of a network size, checked before anything allocates: a typo like 100000
    would otherwise try to allocate tens of GB before failing."""
    try:
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if not MIN_NETWORK_SIDE <= side <= MAX_NETWORK_SIDE:
        raise argparse.ArgumentTypeError(
            f"each side must be within {MIN_NETWORK_SIDE}..{MAX_NETWORK_SIDE} pixels, got {side}"
        )
    return side


def network_size_from_args(args: argparse.Namespace) -> tuple[int, int] | None:
    """The (H, W) asked for, or None; a side out of range (from a recipe file or a caller's
    own namespace: ``--network-size`` itself is checked while parsing) is a user error."""
    size = args.network_size
    if size is None:
        return None
    try:
        return network_side(str(size[0])), network_side(str(size[1]))
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"--network-size {size[0]} {size[1]}: {exc}") from None


class _Repeatable(argparse.Action):
    """A repeatable option whose default is replaced (not extended) by the first use:
    ``--network-size 480 640 --network-size 360 480`` means exactly those two sizes."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        given: set[str] = namespace.__dict__.setdefault("_repeatable_given", set())
        current = list(getattr(namespace, self.dest) or []) if self.dest in given else []
        given.add(self.dest)
        item = tuple(values)
        setattr(namespace, self.dest, current if item in current else [*current, item])


NETWORK_SIZE_HELP = (
    "network input size H W, each side 32..{max}; images are resized to it and labels back to "
    "each image's own size"
)


def add_network_size_argument(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    *,
    multiple: bool = False,
    required: bool = False,
    default: Any = None,
) -> None:
    """``--network-size H W``: the one spelling of the network input size (never WxH).

    ``multiple``: repeatable, a list of ``(H, W)`` (bench model measures several). A
    ``None`` default means the size the weights record; other defaults show in ``--help``.
    Each side is checked (32..MAX_NETWORK_SIDE) while parsing.
    """
    text = NETWORK_SIZE_HELP.format(max=MAX_NETWORK_SIDE)
    if multiple:
        text += "; repeat the option to measure several sizes"
    if default is None and not required:
        text += (
            " (default: the size the weights record, 360 480 for camvid; random weights: each image's own)"
        )
    parser.add_argument(
        "--network-size", type=network_side, nargs=2, metavar=("H", "W"), required=required,
        default=default, action=_Repeatable if multiple else "store", help=text,
    )  # fmt: skip


def add_image_size_argument(
    parser: argparse.ArgumentParser | argparse._ActionsContainer, *, default: tuple[int, int] = (480, 640)
) -> None:
    """``--image-size H W``: size of the camera frames a command generates itself (demo, bench
    node/bag); the same H W order as ``--network-size``."""
    parser.add_argument(
        "--image-size", type=network_side, nargs=2, metavar=("H", "W"), default=default,
        help="size H W of the camera frames this command generates",
    )  # fmt: skip


IMAGE_TOPIC_HELP = "Image or CompressedImage topic to segment (for .../compressed give the base topic)"


def add_image_topic_argument(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    *,
    multiple: bool = True,
    required: bool = True,
) -> None:
    """``--image-topic TOPIC``: the camera topic in a bag (bag, fleet, bench bag).

    ``multiple``: repeatable, one per camera (a list); else one topic (a string)."""
    parser.add_argument(
        "--image-topic", metavar="TOPIC", required=required,
        action="append" if multiple else "store", default=[] if multiple else None,
        help=IMAGE_TOPIC_HELP + ("; repeat the option per camera" if multiple else ""),
    )  # fmt: skip


class _Outputs(argparse.Action):
    """Output kinds as ``labels,color`` or ``labels color`` (or both), checked while parsing."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        try:
            setattr(namespace, self.dest, parse_outputs(values))
        except ValueError as exc:
            parser.error(f"argument {option}: {exc}")


def parse_outputs(values: str | Sequence[str]) -> tuple[str, ...]:
    """Output kinds from comma and/or space separated words, in the order given, once each;
    ValueError naming the valid values for anything else."""
    words = [values] if isinstance(values, str) else list(values)
    kinds = [w.strip() for word in words for w in word.split(",") if w.strip()]
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown or not kinds:
        got = ", ".join(repr(k) for k in unknown) if unknown else "nothing"
        raise ValueError(
            f"{got} is not an output; choose from {', '.join(OUTPUT_KINDS)} (comma or space separated; "
            "put positional paths before --outputs)"
        )
    return tuple(dict.fromkeys(kinds))


def add_outputs_argument(
    parser: argparse.ArgumentParser | argparse._ActionsContainer,
    *,
    default: Sequence[str] = OUTPUT_KINDS,
) -> None:
    """``--outputs KIND [KIND ...]`` (``labels,color`` works too): which of
    :data:`~refinenet_ros.segmenter.OUTPUT_KINDS` to produce; a tuple, validated while parsing."""
    parser.add_argument(
        "--outputs", nargs="+", action=_Outputs, default=tuple(default), metavar="KIND",
        help=f"outputs to produce: {', '.join(OUTPUT_KINDS)} (comma or space separated)",
    )  # fmt: skip


BACKEND_HELP = "inference backend (auto: TensorRT with CUDA, else ONNX Runtime, else torch)"
DEVICE_HELP = "cpu, cuda, cuda:N, or auto (the best available)"
THREADS_HELP = "CPU threads (0: the library's default; above the cores present: capped to them)"
ENGINE_DIR_HELP = (
    "cache of ONNX graphs, INT8 graphs and TensorRT engines (default: $REFINENET_ROS_CACHE, "
    "else $ROS_HOME/refinenet_ros, else ~/.ros/refinenet_ros)"
)
NO_PROGRESS_HELP = "no progress bar (logs, CI)"
PRECISION_HELP = (
    "auto (default): the fastest precision whose accuracy is known to hold (the weights' record, "
    "your `evaluate --record`, else pixel agreement with fp32); fp16: CUDA; bf16: OpenVINO on "
    "AMX/AVX-512-BF16 CPUs; int8: the weights' INT8 ranges, or your --calib-* frames"
)


WEIGHTS_HELP = (
    "bundled weights name (camvid, indoor; see `refinenet-ros weights`) or a checkpoint file "
    "(default: the bundled camvid street model; 'random' = seeded random weights, meaningless labels)"
)


def add_model_arguments(
    parser: argparse.ArgumentParser, *, seed: bool = True, weights_help: str = WEIGHTS_HELP
) -> None:
    """--model, --labels, --weights (and --seed of the random init, where a command can use it);
    ``weights_help`` for a command whose default is not the bundled model (train)."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help=f"network ({MODEL_CHOICES_HELP}); default: from the weights, else {DEFAULT_MODEL}",
    )
    g.add_argument(
        "--labels",
        default=None,
        help=f"label set ({', '.join(LABEL_SET_NAMES)}); default: from the weights",
    )
    g.add_argument(
        "--weights",
        default=None,
        help=weights_help,
    )
    if seed:
        g.add_argument("--seed", type=int, default=0, help="seed of the random init without --weights")


def model_config_from_args(
    args: argparse.Namespace, *, default_weights: bool = True, check_labels: bool = True
) -> ModelConfig:
    """The model the user asked for, resolved once (weights name/path, labels, preprocessing).

    ``default_weights`` False (train): no bundled weights unless ``--weights`` names them.
    ``check_labels``: a ``--labels`` whose class count differs from the weights' is refused
    here, from the checkpoint's metadata, instead of after a model export (train turns it
    off with ``--reset-classifier``, which exists for exactly that).
    """
    from refinenet_ros.config import RANDOM_WEIGHTS, ConfigError, ModelConfig
    from refinenet_ros.labels import get_label_set
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
        resolved = cfg.resolved()
    except (ConfigError, WeightsError) as exc:
        raise CliError(f"--weights: {exc}") from None
    if check_labels and args.labels is not None and resolved.weights is not None:
        from refinenet_ros.config import checkpoint_metadata

        meta = checkpoint_metadata(resolved.weights)
        recorded, classes = meta.get("label_set"), meta.get("num_classes")
        wanted = resolved.label_set
        if isinstance(classes, int) and classes != wanted.num_classes:
            raise CliError(
                f"--labels {args.labels} has {wanted.num_classes} classes but the weights "
                f"{resolved.weights_name or resolved.weights} were trained for {classes}"
                f"{f' ({recorded})' if recorded else ''}; drop --labels or give weights for {args.labels}"
            )
    return resolved


def add_backend_arguments(parser: argparse.ArgumentParser, *, batch: bool = True) -> None:
    g = parser.add_argument_group("backend")
    g.add_argument("--backend", default="auto", choices=BACKEND_KINDS, help=BACKEND_HELP)
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    add_network_size_argument(g)
    g.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    g.add_argument("--engine-dir", default=None, help=ENGINE_DIR_HELP)
    if batch:
        g.add_argument("--batch", type=int, default=1, help="images per backend call")
    add_calibration_arguments(parser)


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """INT8 calibration data: the robot's own frames (folder or bag topic); one definition for
    every command that can build an INT8 graph or engine."""
    c = parser.add_argument_group(
        "INT8 calibration (default: the ranges the weights ship; these calibrate on your frames instead)"
    )
    c.add_argument("--calib-images", default=None, help="folder of the robot's camera images")
    c.add_argument("--calib-bag", default=None, help="rosbag2 (sqlite3 or mcap) with camera frames")
    c.add_argument("--calib-topic", default=None, help="Image or CompressedImage topic in --calib-bag")
    c.add_argument("--calib-count", type=int, default=64, help="images to calibrate on (spread over the set)")


def backend_options_from_args(args: argparse.Namespace) -> BackendOptions:
    from pathlib import Path

    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.backends.engine_cache import default_cache_dir

    size = network_size_from_args(args)
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
        calibration=calibration_from_args(args),
    )


def calibration_from_args(args: argparse.Namespace) -> CalibrationSpec:
    """The ``--calib-*`` options (absent ones: the bundled samples, 64 frames)."""
    from refinenet_ros.backends.base import CalibrationSpec

    return CalibrationSpec(
        images=getattr(args, "calib_images", None),
        bag=getattr(args, "calib_bag", None),
        topic=getattr(args, "calib_topic", None),
        count=getattr(args, "calib_count", 64),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog=PROG,
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


_TERMINATED = threading.Event()


def _raise_terminated(signum: int, frame: object) -> None:
    # Remembered as well as raised: a C extension waiting in a call (Ray's ray.get) may turn
    # the exception a signal handler raised into a plain KeyboardInterrupt.
    _TERMINATED.set()
    raise Terminated


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
    words_before = use_option_words(cli_words)
    _TERMINATED.clear()
    if args.command != "node" and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated) or _TERMINATED.is_set():
            print(f"{prog}: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        text = user_error_text(exc)
        if text is None:
            raise
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2
    finally:
        use_option_words(words_before)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
