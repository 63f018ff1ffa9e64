"""``refinenet-ros label``: a teacher model labels images (a folder or a bag topic) for training.

Folder in, label PNGs out, same relative paths (train with ``--images IN --labels-dir OUT``);
a bag topic in, ``OUT/images`` + ``OUT/labels`` out (train with ``--root OUT``). The teacher
is a ``.tflite`` or ``.onnx`` file, or this package's own weights; ``--mapping`` brings its
classes to the label set the student learns (a bundled table or a YAML file). Resumable:
rerun the same command and finished labels are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from refinenet_ros.cli import NO_PROGRESS_HELP, THREADS_HELP, CliError, add_image_topic_argument

log = logging.getLogger("refinenet_ros")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from refinenet_ros.labels import BUNDLED_MAPPINGS, LABEL_SET_NAMES
    from refinenet_ros.training.teacher import SCALINGS

    parser.add_argument(
        "source", help="folder of images (searched recursively) or a rosbag2 (with --image-topic)"
    )
    parser.add_argument("--out", required=True, help="folder for the labels (created; resumable)")
    t = parser.add_argument_group("teacher")
    t.add_argument("--teacher", required=True,
                   help="a .tflite or .onnx model giving per-class scores, or our weights "
                        "(a bundled name such as camvid, or a checkpoint)")  # fmt: skip
    t.add_argument("--mapping", default=None,
                   help=f"teacher classes -> label set: {', '.join(BUNDLED_MAPPINGS)} or a YAML "
                        "file (default: none, the teacher's own classes; needs --labels for file "
                        "teachers)")  # fmt: skip
    t.add_argument(
        "--labels",
        default=None,
        help=f"label set of the written labels without --mapping ({', '.join(LABEL_SET_NAMES)})",
    )
    t.add_argument("--input-scaling", default=None, choices=SCALINGS,
                   help="file teachers: pixel scaling (default: raw for uint8 inputs, minus1to1 "
                        "= x/127.5-1 for float ones, TensorFlow's convention)")  # fmt: skip
    t.add_argument(
        "--input-fit",
        default="pad",
        choices=("pad", "stretch"),
        help="file teachers with a fixed input size: pad (keep aspect) or stretch",
    )
    t.add_argument(
        "--teacher-output",
        default="logits",
        choices=("logits", "probabilities"),
        help="what the file teacher's output holds",
    )
    q = parser.add_argument_group("label quality")
    q.add_argument("--min-confidence", type=float, default=0.0,
                   help="pixels whose label probability is below this become ignore (255)")  # fmt: skip
    q.add_argument("--flip", action="store_true", help="average the teacher over the mirror image")
    q.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="average the teacher over these image scales (our weights, dynamic-size ONNX)",
    )
    s = parser.add_argument_group("selection")
    add_image_topic_argument(s, multiple=False, required=False)
    s.add_argument("--every", type=int, default=1, help="label every N-th image or frame")
    s.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    parser.add_argument("--summary", default=None, help="also write the run's summary as JSON here")
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.labels import MappingError, get_label_set, load_mapping
    from refinenet_ros.training.labelling import (
        LabellingError,
        LabelOptions,
        check_scales,
        label_bag,
        label_folder,
    )
    from refinenet_ros.training.teacher import InputConvention, TeacherError, open_teacher

    source, out = Path(args.source), Path(args.out)
    if not source.exists():
        raise CliError(f"{source}: no such folder or bag")
    is_bag = not source.is_dir() or (source / "metadata.yaml").is_file()
    if is_bag and not args.image_topic:
        raise CliError(f"{source} is a bag: name the topic to label with --image-topic")
    if args.every < 1 or args.limit < 0:
        raise CliError("--every must be >= 1 and --limit >= 0")
    if not 0.0 <= args.min_confidence < 1.0:
        raise CliError(f"--min-confidence {args.min_confidence}: must be in [0, 1)")
    if args.threads < 0:
        raise CliError(f"--threads {args.threads}: must be >= 0 (0: every usable core)")
    try:
        scales = check_scales(args.scales)
        mapping = load_mapping(args.mapping) if args.mapping else None
        label_set = mapping.target if mapping else (get_label_set(args.labels) if args.labels else None)
    except (MappingError, LabellingError) as exc:
        raise CliError(f"--mapping: {exc}" if isinstance(exc, MappingError) else str(exc)) from None
    except ValueError as exc:
        raise CliError(f"--labels: {exc}") from None
    from refinenet_ros.machine import bounded_threads, usable_cores

    threads = bounded_threads(args.threads, "--threads") or usable_cores()
    convention = InputConvention(scaling=args.input_scaling, fit=args.input_fit, output=args.teacher_output)
    try:
        teacher = open_teacher(args.teacher, convention, threads=threads)
    except TeacherError as exc:
        raise CliError(f"--teacher: {exc}") from None
    if label_set is None:
        own = getattr(teacher, "labels", None)
        if own is None:
            raise CliError(
                "a file teacher's classes need a name: give --mapping (or --labels of its classes)"
            )
        label_set = get_label_set(own)
    topic = args.image_topic if is_bag else None
    options = LabelOptions(min_confidence=args.min_confidence, flip=args.flip, scales=scales,
                           topic=topic, every=args.every, limit=args.limit)  # fmt: skip
    job = label_bag if is_bag else label_folder
    summary = job(teacher, source, out, options, mapping=mapping, label_set=label_set,
                  progress=not args.no_progress)  # fmt: skip
    rate = f", {summary.seconds / summary.labelled:.2f} s an image" if summary.labelled else ""
    print(f"labelled {summary.labelled} images into {out} ({summary.skipped} already done){rate}; "
          f"{summary.ignored_fraction:.1%} of pixels below --min-confidence (255)")  # fmt: skip
    if args.summary:
        from refinenet_ros.io import atomic_write_text

        atomic_write_text(args.summary, json.dumps(summary.as_dict(), indent=2) + "\n")
    return 0
