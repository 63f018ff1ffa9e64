"""Build (or refresh) the TensorRT engine for this GPU offline, into the engine cache.

Run once per robot after installing or upgrading JetPack/TensorRT: the node then
starts in seconds instead of building on first start. The engine lands in
``--engine-dir`` as ``<stem>.engine`` + ``<stem>.json`` (the key it is valid for); an
engine that is already current is reused, a stale one is rebuilt with the reason
printed. ``--validate`` runs the engine against ONNX Runtime on images and refuses it
(exit 1, engine kept as ``.bad``) when the labels agree on too few pixels.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from refinenet_ros.backends.engine_cache import default_cache_dir
from refinenet_ros.cli import (
    ENGINE_DIR_HELP,
    CliError,
    add_calibration_arguments,
    add_model_arguments,
    add_network_size_argument,
    calibration_from_args,
    model_config_from_args,
    network_size_from_args,
)

if TYPE_CHECKING:
    from refinenet_ros.backends.base import Backend, BackendOptions
    from refinenet_ros.config import ModelConfig

log = logging.getLogger("refinenet_ros")

# Minimum label agreement with ONNX Runtime FP32 for --validate, per precision: FP16 and
# INT8 legitimately flip pixels on class boundaries, FP32 should not.
DEFAULT_MIN_AGREEMENT = {"fp32": 0.995, "fp16": 0.98, "int8": 0.90}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("source (an exported graph, or a model to export)")
    src.add_argument("--onnx", default=None, help="exported graph (refinenet-ros export); else --model ...")
    add_model_arguments(parser)
    add_network_size_argument(src)
    g = parser.add_argument_group("engine")
    g.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"),
                   help="engine precision (int8: calibrated on the data below)")  # fmt: skip
    g.add_argument("--batch", type=int, default=1, help="max batch (one per camera for multi-camera nodes)")
    g.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace pool limit (MiB)")
    g.add_argument("--engine-dir", default=None, help=ENGINE_DIR_HELP)
    g.add_argument("--device", default="cuda:0", help="CUDA device the engine is built for")
    add_calibration_arguments(parser)
    v = parser.add_argument_group("validation")
    v.add_argument(
        "--validate",
        default=None,
        metavar="IMAGES",
        help="folder of images (or 'samples') to compare the engine's labels with ONNX Runtime on",
    )
    v.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="refuse the engine below this label agreement (default fp32 0.995, fp16 0.98, int8 0.90)",
    )


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.backends.factory import onnx_for, tensorrt_unavailable_reason

    # Every cheap check first: a typo must not cost a model export or an engine build.
    options, model_cfg = _checked_options(args)
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        # One line, exit 2: the user needs a GPU machine, not a traceback.
        raise CliError(f"building TensorRT engines needs TensorRT 10 and a CUDA GPU: {reason}")
    onnx_path = onnx_for(model_cfg, options)

    from refinenet_ros.backends.tensorrt import TensorRTBackend

    backend, record = TensorRTBackend.load_or_build(onnx_path, options)
    action = f"built in {record.build_seconds:.1f} s ({record.reason})" if record.built else "already current"
    print(f"{record.engine_path}  [{options.precision}, batch {backend.max_batch}, {action}]")
    if args.validate:
        threshold = args.min_agreement or DEFAULT_MIN_AGREEMENT[options.precision]
        agreement = validate(backend, onnx_path, args.validate)
        print(f"labels agree with ONNX Runtime on {agreement:.3%} of pixels (threshold {threshold:.1%})")
        if agreement < threshold:
            from refinenet_ros.backends.engine_cache import EngineCache

            EngineCache(options.engine_dir).mark_bad(record.engine_path.stem, "failed --validate")
            print("engine refused: check the calibration data (int8) or build with --precision fp16/fp32")
            return 1
    return 0


def _checked_options(args: argparse.Namespace) -> tuple[BackendOptions, ModelConfig]:
    """The engine's options and model, from user input only (no export, no TensorRT):
    sizes, batch, the graph and image folders and the calibration data must all exist."""
    from refinenet_ros.backends.base import BackendOptions

    if args.batch < 1:
        raise CliError(f"--batch {args.batch}: must be >= 1")
    if args.workspace_mb < 1:
        raise CliError(f"--workspace-mb {args.workspace_mb}: must be >= 1")
    if args.min_agreement is not None and not 0.0 < args.min_agreement <= 1.0:
        raise CliError(f"--min-agreement {args.min_agreement}: must be within (0, 1]")
    if args.onnx is not None and not Path(args.onnx).is_file():
        raise CliError(f"--onnx {args.onnx}: no such file")
    if args.validate not in (None, "samples") and not Path(args.validate).is_dir():
        raise CliError(f"--validate {args.validate}: no such folder (give a folder of images or 'samples')")
    if args.calib_images is not None and not Path(args.calib_images).is_dir():
        raise CliError(f"--calib-images {args.calib_images}: no such folder")
    if args.calib_bag is not None and not Path(args.calib_bag).exists():
        raise CliError(f"--calib-bag {args.calib_bag}: no such bag")
    model_cfg = model_config_from_args(args)
    size = network_size_from_args(args) or (model_cfg.network_size if args.onnx is None else None)
    if args.onnx is None and size is None:
        raise CliError("give --onnx FILE, or a model with --network-size H W (random weights record none)")
    options = BackendOptions(
        kind="tensorrt",
        device=args.device,
        precision=args.precision,
        input_size=size,
        max_batch=args.batch,
        engine_dir=args.engine_dir or default_cache_dir(),
        onnx=args.onnx,
        calibration=calibration_from_args(args),
        workspace_mb=args.workspace_mb,
    )
    return options, model_cfg


def validate(backend: Backend, onnx_path: Path, images: str) -> float:
    """Pixel agreement of the engine's labels with ONNX Runtime (CPU, FP32) on ``images``."""
    from refinenet_ros.backends.calibration import FolderSource, SampleSource, preprocess
    from refinenet_ros.backends.onnxruntime_backend import OnnxRuntimeBackend

    reference = OnnxRuntimeBackend(onnx_path, device="cpu")
    size = backend.input_size or reference.input_size
    if size is None:
        raise CliError("cannot validate: neither the engine nor the graph has a fixed input size")
    source = SampleSource(8) if images == "samples" else FolderSource(Path(images), 32)
    agree = total = 0
    for image in source.images():
        batch = preprocess(image, size)[None]
        labels = backend.infer(batch)[0]
        ref = reference.infer(batch)[0]
        agree += int((labels == ref).sum())
        total += ref.size
    if total == 0:
        raise CliError(f"--validate {images}: no images")
    return agree / total
