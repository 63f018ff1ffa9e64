"""Export the model with its pre/post-processing to ONNX (uint8 RGB in, labels out).

The graph takes ``image`` uint8 [N,H,W,3] and returns ``labels`` int32 [N,H,W] and
``confidence`` float32 [N,H,W]. It is checked with the ONNX checker, against the
TensorRT 10 operator list, and against PyTorch (labels must agree on >= 99.9 % of
pixels) before it is written. Static shapes by default; ``--dynamic`` for a TensorRT
optimisation profile over N, H and W.
"""

from __future__ import annotations

import argparse

from refinenet_ros.cli import (
    CliError,
    add_model_arguments,
    add_network_size_argument,
    model_config_from_args,
    network_size_from_args,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    g = parser.add_argument_group("graph")
    add_network_size_argument(g)
    g.add_argument("--batch", type=int, default=1, help="static batch size (with --dynamic: the traced one)")
    g.add_argument("--dynamic", action="store_true",
                   help="dynamic N, H and W (--network-size and --batch only shape the tracing "
                        "example)")  # fmt: skip
    g.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; TensorRT 10 reads 9..20)")
    g.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--out", required=True, help="output .onnx file (written atomically)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from refinenet_ros.backends.base import BackendError
    from refinenet_ros.backends.onnx_export import DEFAULT_OPSET, ExportSpec, export_onnx

    size = network_size_from_args(args)
    if args.batch < 1:
        raise CliError(f"--batch {args.batch}: must be >= 1")
    if Path(args.out).is_dir():
        raise CliError(f"--out {args.out} is a folder; give the .onnx file to write ({args.out}/model.onnx)")
    cfg = model_config_from_args(args)
    size = size or cfg.network_size
    if size is None:
        raise CliError(
            "random weights record no network size: give the graph's input size, --network-size H W"
        )
    try:
        spec = ExportSpec(
            size[0], size[1], batch=args.batch, dynamic=args.dynamic, opset=args.opset or DEFAULT_OPSET
        )
        result = export_onnx(cfg, spec, args.out, verify=not args.no_verify)
    except BackendError as exc:
        raise CliError(str(exc)) from None
    agreement = "" if result.agreement is None else f", labels agree with PyTorch on {result.agreement:.3%}"
    print(f"{result.path}  ({spec.describe()}, opset {spec.opset}, sha256 {result.sha256[:16]}{agreement})")
    return 0
