"""Segment the camera topics of a recorded rosbag2 and write them back as new topics.

``refinenet-ros bag INPUT OUTPUT --image-topic T`` reads INPUT (sqlite3 or mcap, detected
by ``rosbags``), runs every Image / CompressedImage message of T through the Segmenter in
batches, and writes OUTPUT with the original topics (unless ``--no-copy``) plus
``<T>/labels`` (mono8, mono16 above 255 classes), ``<T>/color`` and ``<T>/overlay`` (rgb8),
``<T>/confidence`` (mono8 = max softmax x 255) and ``<T>/labels/camera_info`` when the
camera's ``camera_info`` topic is in the bag. For a ``.../compressed`` topic, T is the
base topic without ``/compressed`` (image_transport naming). Labels are at the input
image's resolution. Each output message carries its input's header and log time, so
``ros2 bag play OUTPUT`` shows them in sync with the camera in rviz.

OUTPUT is written into a hidden temporary folder beside it and renamed at the end: an
interrupted run never leaves something that looks like a finished bag, and a refused
run (OUTPUT exists, no ``--force``) changes nothing. Messages that cannot be decoded are
reported with their topic and index, skipped, and counted in the summary.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from refinenet_ros.bag import (
    DEFAULT_MAX_PIXELS,
    STORAGES,
    BagError,
    BagOptions,
    check_input,
    overlap_helps,
    run_bag,
)
from refinenet_ros.cli import (
    NO_PROGRESS_HELP,
    CliError,
    add_backend_arguments,
    add_image_topic_argument,
    add_model_arguments,
    add_outputs_argument,
    backend_options_from_args,
    model_config_from_args,
)

log = logging.getLogger("refinenet_ros")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="input rosbag2 folder (sqlite3 or mcap)")
    parser.add_argument("output", help="output rosbag2 folder (must not exist unless --force)")
    add_image_topic_argument(parser)
    add_bag_output_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_model_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(batch=4)


def add_bag_output_arguments(parser: argparse.ArgumentParser | argparse._ActionsContainer) -> None:
    """What a segmented bag holds and how it is written: one definition for ``bag`` and ``fleet``."""
    add_outputs_argument(parser)
    parser.add_argument("--no-copy", action="store_true", help="write only the new topics, not the originals")
    parser.add_argument("--storage", default="mcap", choices=STORAGES, help="output storage")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="skip frames above N pixels (twice 8K by default) as malformed, before "
                        "decoding")  # fmt: skip
    parser.add_argument("--overlap", choices=("auto", "on", "off"), default="auto",
                        help="read + segment on threads while writing (same output); auto: on unless "
                        "a CPU backend already uses every core")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.segmenter import build_segmenter

    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha {args.alpha}: must be within 0..1")
    options = BagOptions(
        image_topics=tuple(args.image_topic),
        outputs=tuple(args.outputs),
        copy=not args.no_copy,
        storage=args.storage,
        force=args.force,
        batch=max(1, args.batch),
        alpha=args.alpha,
        progress=not args.no_progress,
        max_pixels=args.max_image_pixels,
    )
    # Refuse before loading a model: a refused run costs nothing and changes nothing.
    try:
        check_input(args.input, args.output, options)
    except BagError as exc:
        raise CliError(str(exc)) from None
    model_cfg = model_config_from_args(args)
    segmenter = build_segmenter(model_cfg, backend_options_from_args(args))
    backend = segmenter.backend
    overlap = args.overlap == "on" or (args.overlap == "auto" and overlap_helps(backend.device, args.threads))
    options = replace(options, overlap=overlap)
    log.info("model %s, backend %s on %s, batch %d, I/O %s inference", model_cfg.describe(), backend.name,
             backend.device, options.batch, "overlapped with" if overlap else "in series with")  # fmt: skip
    try:
        summary = run_bag(args.input, args.output, segmenter, options)
    except BagError as exc:
        raise CliError(str(exc)) from None
    print(summary.describe())
    return 0
