"""``refinenet-ros fleet INPUTS... --out DIR``: every camera bag of a fleet, segmented once, on Ray.

INPUTS are rosbag2 folders, ``.mcap`` / ``.db3`` files, folders searched recursively, or
text files listing them. Each bag becomes DIR/<its relative path>, written by the same job
as ``refinenet-ros bag`` (same bytes). ``DIR/fleet-manifest.jsonl`` makes a rerun skip
every bag that is done for the same input and model and redo the rest;
``DIR/fleet-summary.json`` reports the run. Exit status: 0 when every bag is done, 1 when
some failed (each named with its error), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import replace
from pathlib import Path

from refinenet_ros.cli import (
    NO_PROGRESS_HELP,
    CliError,
    add_backend_arguments,
    add_image_topic_argument,
    add_model_arguments,
    backend_options_from_args,
    model_config_from_args,
)
from refinenet_ros.cli.bag import add_bag_output_arguments

log = logging.getLogger("refinenet_ros")

EXIT_SOME_FAILED = 1


def add_ray_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The Ray options ``fleet`` and ``bench fleet`` share (one definition): the cluster and
    the threads of each worker. Returns the group, for the command's own options."""
    g = parser.add_argument_group("Ray")
    g.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: 'auto' (this machine's `ray start`) or HOST:PORT / ray://HOST:10001 "
        "(default: an embedded local Ray, no set-up)",
    )
    g.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        metavar="T",
        help="CPU threads (and Ray CPUs) per worker",
    )
    return g


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="bag folder, .mcap/.db3 file, folder to search, or a text file listing them",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (manifest and summary inside)"
    )
    g = add_ray_arguments(parser)
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="worker actors, each loading the model once (0: as many as the CPUs/GPUs fit)",
    )
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per worker; a fraction such as 0.25 puts four workers on one GPU (0: CPU only)",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of a bag whose worker died (OOM, lost node)",
    )
    b = parser.add_argument_group("bag (as `refinenet-ros bag`)")
    add_image_topic_argument(b)
    add_bag_output_arguments(b)
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_model_arguments(parser)
    add_backend_arguments(parser)
    parser.set_defaults(batch=4)


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.bag import BagOptions
    from refinenet_ros.fleet.cluster import import_ray
    from refinenet_ros.fleet.inputs import FleetError, discover

    try:
        import_ray()
    except ImportError:
        raise CliError("fleet needs Ray: pip install 'refinenet_ros[fleet]' (or ray==2.60.0)") from None
    if args.workers < 0:
        raise CliError(f"--workers {args.workers}: must be 0 (as many as fit) or more")
    if args.threads_per_worker < 1:
        raise CliError(f"--threads-per-worker {args.threads_per_worker}: must be at least 1")
    if not (math.isfinite(args.gpus_per_worker) and args.gpus_per_worker >= 0):
        raise CliError(f"--gpus-per-worker {args.gpus_per_worker}: must be 0 or more (fractions share a GPU)")
    if args.gpus_per_worker > 1 and not args.gpus_per_worker.is_integer():
        raise CliError(f"--gpus-per-worker {args.gpus_per_worker:g}: above 1 it must be a whole number (Ray)")
    if args.retries < 0:
        raise CliError(f"--retries {args.retries}: must be 0 or more")
    if args.threads:
        raise CliError("--threads: use --threads-per-worker for fleet workers")
    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha {args.alpha}: must be within 0..1")
    if args.max_image_pixels < 1:
        raise CliError(f"--max-image-pixels {args.max_image_pixels}: must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: it is a file, not a folder")
    try:
        bags = discover(args.inputs, out)
    except FleetError as exc:
        raise CliError(str(exc)) from None

    from refinenet_ros.fleet.runner import FleetSettings, run_fleet
    from refinenet_ros.fleet.worker import FleetJob

    model = model_config_from_args(args)
    backend = replace(backend_options_from_args(args), threads=args.threads_per_worker)
    if backend.device == "auto":  # a worker without a GPU of its own must not find the node's GPU
        backend = replace(backend, device="cuda" if args.gpus_per_worker > 0 else "cpu")
    bag_options = BagOptions(
        image_topics=tuple(args.image_topic),
        outputs=tuple(args.outputs),
        copy=not args.no_copy,
        storage=args.storage,
        batch=max(1, args.batch),
        alpha=args.alpha,
        progress=False,
        max_pixels=args.max_image_pixels,
    )
    settings = FleetSettings(
        address=args.address,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        retries=args.retries,
        progress=not args.no_progress,
    )
    log.info("%d bags -> %s; model %s, backend %s", len(bags), out, model.describe(), backend.kind)
    try:
        summary = run_fleet(bags, out, FleetJob(model, backend, bag_options, args.overlap), settings)
    except FleetError as exc:
        raise CliError(str(exc)) from None
    print(summary.describe())
    return 0 if summary.ok else EXIT_SOME_FAILED
