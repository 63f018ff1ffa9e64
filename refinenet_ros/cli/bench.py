"""``refinenet-ros bench``: where the milliseconds go (``model``, ``node``, ``bag``, ``fleet``).

- ``model``: backend-only latency p50/p95, throughput and achieved GFLOP/s against this
  machine's FP32 peak, per backend, precision, resolution and batch.
- ``node``: a publisher -> the ``segmentation_node`` executable -> a subscriber over
  shared-memory DDS; input->labels latency p50/p95/p99, throughput, drops, the node's own
  per-stage times from /diagnostics and node overhead = end-to-end - backend time.
- ``bag``: the bag tool's frames/s against backend-only frames/s on the same frames.
- ``fleet``: ``refinenet-ros fleet`` on Ray with 1 and 2 workers against the plain bag job
  in series on the same generated bags (Ray's cost, worker scaling, against the fleet's goals).

Each prints a table and, with ``--json PATH``, writes machine info (CPU, FP32 peak and
how it was derived), versions, settings and every figure (atomically).

This module only turns options into the settings of :mod:`refinenet_ros.bench` and prints;
the benchmarks themselves never see an argparse namespace.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from refinenet_ros.backends.base import BACKEND_KINDS, PRECISIONS
from refinenet_ros.cli import (
    CliError,
    add_backend_arguments,
    add_calibration_arguments,
    add_image_size_argument,
    add_image_topic_argument,
    add_model_arguments,
    add_network_size_argument,
    add_outputs_argument,
    backend_options_from_args,
    calibration_from_args,
    model_config_from_args,
)
from refinenet_ros.cli.fleet import add_ray_arguments

if TYPE_CHECKING:
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.machine import CpuInfo

log = logging.getLogger("refinenet_ros")

DEFAULT_BENCH_SIZE = (480, 640)
"""(H, W) bench model measures weights that record no size at (VGA)."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("report")
    g.add_argument("--json", metavar="PATH", default=None, help="also write every figure as JSON")
    g.add_argument("--fma-units", type=_positive, default=None,
                   help="FP32 FMA pipes per core for the peak (default: assumed from the CPU)")  # fmt: skip
    g.add_argument("--clock-ghz", type=float, default=None,
                   help="core clock for the peak (default: measured all-core, else listed)")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)

    m = sub.add_parser("model", help="backend-only latency, throughput, GFLOP/s vs FP32 peak",
                       description="Backend-only latency p50/p95, throughput and achieved GFLOP/s "
                       "(torch FlopCounterMode) against this machine's FP32 peak.")  # fmt: skip
    add_model_arguments(m)
    g = m.add_argument_group("configurations (every combination is measured)")
    g.add_argument("--backend", nargs="+", default=["auto"], choices=BACKEND_KINDS,
                   help="default: auto, what the node runs")  # fmt: skip
    g.add_argument("--precision", nargs="+", default=["auto"], choices=PRECISIONS,
                   help="default: auto, what the node runs; bf16: openvino on AVX512-BF16/AMX CPUs "
                   "(elsewhere refused, with why)")  # fmt: skip
    add_network_size_argument(g, multiple=True)
    g.add_argument("--batch", nargs="+", type=_positive, default=[1], help="images per call (default: 1)")
    g.add_argument("--iterations", type=_positive, default=10, help="timed calls per configuration")
    g.add_argument("--warmup", type=int, default=2, help="untimed calls first (allocator, kernel choice)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0: library default)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: best available)")
    g.add_argument("--engine-dir", default=None,
                   help="ONNX/engine cache (default: $ROS_HOME/refinenet_ros)")  # fmt: skip
    add_calibration_arguments(m)
    _add_common(m)

    n = sub.add_parser("node", help="publisher -> segmentation_node -> subscriber latency and overhead",
                       description="End-to-end latency through the real node executable over "
                       "shared-memory DDS, its per-stage times from /diagnostics, and node overhead "
                       "= end-to-end - backend time.")  # fmt: skip
    add_model_arguments(n)
    add_backend_arguments(n, batch=False)
    g = n.add_argument_group("stream")
    add_image_size_argument(g)
    g.add_argument("--frames", type=_positive, default=60, help="frames published (default: 60)")
    g.add_argument("--rate", type=float, default=0.0,
                   help="publish rate in Hz (default 0: closed loop, next frame when the last one's "
                   "labels arrive: latency without queueing)")  # fmt: skip
    add_outputs_argument(g)  # subscribed; an unsubscribed output costs the node nothing
    g.add_argument("--encoding", default="rgb8", choices=("rgb8", "bgr8"), help="published encoding")
    g.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID (default: a private one derived from the PID, 100..199)")  # fmt: skip
    g.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node")
    g.add_argument("--node-arg", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter (repeatable)")  # fmt: skip
    _add_common(n)

    b = sub.add_parser("bag", help="bag tool frames/s vs backend-only frames/s",
                       description="Throughput of `refinenet-ros bag` against backend-only "
                       "throughput on the same frames (a generated bag unless one is given).")  # fmt: skip
    add_model_arguments(b)
    add_backend_arguments(b, batch=True)
    g = b.add_argument_group("input")
    g.add_argument("bag", nargs="?", default=None, help="input bag (default: generate one)")
    add_image_topic_argument(g, multiple=False, required=False)
    add_image_size_argument(g)
    g.add_argument("--frames", type=_positive, default=30, help="frames in the generated bag")
    g.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="generated bag storage")
    g.add_argument("--keep", metavar="DIR", default=None, help="keep the generated/output bags in DIR")
    _add_common(b)

    f = sub.add_parser("fleet", help="fleet on Ray (1 and 2 workers) vs the plain bag job, same bags",
                       description="Frames/s of `refinenet-ros fleet` with 1 and 2 one-thread workers "
                       "against the bag job in series on the same generated bags, with and without "
                       "Ray's start-up and the model loads, and the fleet's goals: 1 worker >= 0.9x "
                       "bag, 2 workers >= 1.7x 1 worker.")  # fmt: skip
    add_model_arguments(f)
    add_backend_arguments(f, batch=True)
    # ONNX Runtime FP32, not auto: auto's one-off measuring of every CPU candidate would
    # be charged to the first path; batch 4 as `refinenet-ros fleet` defaults to.
    f.set_defaults(backend="onnxruntime", batch=4)
    g = f.add_argument_group("bags and workers")
    g.add_argument("--bags", type=_positive, default=4, help="bags generated")
    g.add_argument("--frames", type=_positive, default=30, help="frames per generated bag")
    add_image_size_argument(g)
    g.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="generated bag storage")
    g.add_argument("--workers", nargs="+", type=_positive, default=[1, 2], metavar="N",
                   help="fleet widths measured (the goals need 1 and 2)")  # fmt: skip
    add_ray_arguments(f)  # --threads-per-worker also sets the compared bag job's threads
    g.add_argument("--keep", metavar="DIR", default=None, help="keep the generated/output bags in DIR")
    _add_common(f)


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.bench import BenchError
    from refinenet_ros.machine import cpu_info, units_line

    # The measured clock: the listed one is nominal, and sgemm ran at 122-125 % of a peak
    # derived from it on AVX-512 VMs (all-core turbo above the 2.6 GHz they list).
    cpu = cpu_info(fma_units=args.fma_units, clock_ghz=args.clock_ghz, measure_clock=True)
    print(f"CPU: {cpu.model}; FP32 peak: {cpu.derivation()}")
    print(f"CPU units: {units_line(cpu.units)}")
    runners = {"model": _run_model, "node": _run_node, "bag": _run_bag, "fleet": _run_fleet}
    try:
        return runners[args.bench_command](args, cpu)
    except BenchError as exc:
        raise CliError(str(exc)) from None


def _write(args: argparse.Namespace, benchmark: str, cpu: CpuInfo, settings: dict, figures: dict) -> None:
    """The JSON file, when asked for: every bench writes the same envelope."""
    from refinenet_ros.bench.report import Report

    if args.json:
        Report(benchmark, cpu, settings, figures).write(args.json)
        print(f"wrote {args.json}")


def _network_sizes(args: argparse.Namespace, model_cfg: ModelConfig) -> tuple[tuple[int, int], ...]:
    """The asked sizes, else the one the node would run: the weights' (VGA without one)."""
    if args.network_size:
        return tuple(dict.fromkeys((int(h), int(w)) for h, w in args.network_size))
    return (model_cfg.resolved().network_size or DEFAULT_BENCH_SIZE,)


def _run_model(args: argparse.Namespace, cpu: CpuInfo) -> int:
    from refinenet_ros.backends.engine_cache import default_cache_dir
    from refinenet_ros.bench.model import ModelBenchSettings, results_table, run_model_bench

    model_cfg = model_config_from_args(args)
    settings = ModelBenchSettings(
        model_cfg=model_cfg,
        backends=tuple(dict.fromkeys(args.backend)),
        precisions=tuple(dict.fromkeys(args.precision)),
        network_sizes=_network_sizes(args, model_cfg),
        batches=tuple(dict.fromkeys(args.batch)),
        iterations=args.iterations,
        warmup=max(0, args.warmup),
        threads=args.threads,
        device=args.device,
        engine_dir=args.engine_dir or default_cache_dir(),
        calibration=calibration_from_args(args),
    )
    figures = run_model_bench(settings, cpu)
    print()
    print(f"{figures['model']}: backend-only, {settings.iterations} timed calls each; "
          f"torch sgemm ceiling {figures['gemm_gflops_best']:.1f} GFLOP/s "
          f"({100 * (figures['gemm_peak_fraction'] or 0):.0f} % of the derived peak)")  # fmt: skip
    print(results_table(figures["results"]))
    _write(args, "model", cpu, settings.to_json(), figures)
    if all("error" in r for r in figures["results"]):
        raise CliError("no configuration could run (see the errors above)")
    return 0


def _run_node(args: argparse.Namespace, cpu: CpuInfo) -> int:
    import sys

    from refinenet_ros.backends.engine_cache import default_cache_dir
    from refinenet_ros.bench.node import NodeBenchSettings, node_table, run_node_bench

    settings = NodeBenchSettings(
        model_cfg=model_config_from_args(args),
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        engine_dir=args.engine_dir or default_cache_dir(),
        threads=args.threads,
        network_size=tuple(args.network_size) if args.network_size else None,
        image_size=tuple(args.image_size),
        frames=args.frames,
        rate=args.rate,
        outputs=tuple(args.outputs),
        encoding=args.encoding,
        domain_id=args.domain_id,
        startup_timeout=args.startup_timeout,
        node_args=tuple(args.node_arg),
    )
    settings.check()
    figures = run_node_bench(settings)
    print()
    print(node_table(figures))
    if not figures["node"]["diagnostics_received"]:
        print("warning: no /diagnostics from the node; backend time and overhead unknown", file=sys.stderr)
    _write(args, "node", cpu, settings.to_json(), figures)
    if figures["node"]["frames_received"] == 0:
        raise CliError("no frame came back from the node")
    return 0


def _run_bag(args: argparse.Namespace, cpu: CpuInfo) -> int:
    from refinenet_ros.bench.bag import BagBenchSettings, bag_table, run_bag_bench

    settings = BagBenchSettings(
        model_cfg=model_config_from_args(args),
        backend=backend_options_from_args(args),
        bag=args.bag,
        topic=args.image_topic,
        image_size=tuple(args.image_size),
        frames=args.frames,
        storage=args.storage,
        keep=args.keep,
    )
    figures = run_bag_bench(settings)
    print()
    print(bag_table(figures))
    _write(args, "bag", cpu, settings.to_json(), figures)
    return 0


def _run_fleet(args: argparse.Namespace, cpu: CpuInfo) -> int:
    from refinenet_ros.bench.fleet import FleetBenchSettings, fleet_table, run_fleet_bench

    if args.threads:
        raise CliError("--threads: use --threads-per-worker (the bag job runs with as many)")
    if args.threads_per_worker < 1:
        raise CliError(f"--threads-per-worker {args.threads_per_worker}: must be at least 1")
    settings = FleetBenchSettings(
        model_cfg=model_config_from_args(args),
        backend=backend_options_from_args(args),
        bags=args.bags,
        frames=args.frames,
        image_size=tuple(args.image_size),
        storage=args.storage,
        workers=tuple(dict.fromkeys(args.workers)),
        threads=args.threads_per_worker,
        keep=args.keep,
        ray_address=args.address,
    )
    figures = run_fleet_bench(settings)
    print()
    print(fleet_table(figures, settings))
    _write(args, "fleet", cpu, settings.to_json(), figures)
    return 0
