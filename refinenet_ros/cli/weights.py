"""``refinenet-ros weights``: list the bundled weights, or pack a trained checkpoint for bundling.

Listing shows each entry's model, label set, network size, val mIoU, recipe, data set and
backbone source. ``--pack CKPT --out FILE`` writes the fp16 copy of a ``train``
checkpoint that the package ships (half the size; loaded back into fp32), recording the
network size it is meant to run at and the validation figures given with ``--metrics``.
With ``--calib-images`` (the training frames) it also records the INT8 activation ranges,
and with a labelled val set (``--images/--labels-dir`` or ``--dataset/--root``) the val
mIoU of every backend and precision ``auto`` may choose: what lets ``auto`` run INT8 on a
robot without calibration frames and without guessing at its accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from refinenet_ros.cli import NO_PROGRESS_HELP, CliError, add_calibration_arguments, add_network_size_argument

log = logging.getLogger("refinenet_ros")

ACCURACY_PATHS = (
    "onnxruntime fp32",
    "openvino fp32",
    "torch fp32",
    "openvino bf16",
    "onnxruntime int8",
    "openvino int8",
)
"""The paths ``--pack`` measures for the accuracy record: every CPU candidate of ``auto``."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from refinenet_ros.cli.evaluate import add_dataset_arguments

    parser.add_argument("--json", action="store_true", help="print the registry as JSON")
    g = parser.add_argument_group("packing a checkpoint for bundling (maintainers)")
    g.add_argument("--pack", default=None, metavar="CKPT", help="a checkpoint written by `train`")
    g.add_argument("--out", default=None, help="the fp16 file to write (with --pack)")
    add_network_size_argument(g)  # with --pack: the size recorded for the node and every command
    g.add_argument("--metrics", default=None, metavar="JSON",
                   help="an `evaluate` report whose metrics are recorded (with --pack)")  # fmt: skip
    g.add_argument("--paths", nargs="+", default=list(ACCURACY_PATHS), metavar="'BACKEND PRECISION'",
                   help="the paths whose val mIoU is recorded with a labelled val set (every CPU "
                   "candidate of auto)")  # fmt: skip
    g.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="confidence temperature to record (fitted by `evaluate --fit-temperature` on "
                        "the val set); every backend's confidence becomes softmax(logits / T)")  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    # with --pack: the training frames the INT8 ranges are calibrated on, once
    add_calibration_arguments(parser)
    add_dataset_arguments(parser)  # with --pack: the labelled val set of the accuracy record


def pack(
    checkpoint: Path,
    out: Path,
    network_size: tuple[int, int] | None,
    metrics: dict | None,
    extra_records: dict[str, Any] | None = None,
) -> None:
    """Rewrite ``checkpoint`` as fp16 tensors + its metadata (and the given size/metrics and
    records); packing a packed file again keeps its tensors bit for bit."""
    from refinenet_ros.config import ModelConfig, load_model
    from refinenet_ros.models import read_checkpoint_metadata, save_checkpoint

    meta = read_checkpoint_metadata(checkpoint) or {}
    if not meta.get("model_name"):
        raise CliError(f"--pack {checkpoint}: not a refinenet_ros checkpoint (no metadata)")
    cfg = ModelConfig(weights=str(checkpoint)).resolved()
    assert cfg.model is not None and cfg.mean is not None and cfg.std is not None
    model = load_model(cfg).half()
    extra = dict(meta.get("extra") or {})
    extra.pop("train_config", None)  # the recipe lives in config/, by name
    if metrics is not None:
        extra["metrics"] = metrics
    extra.update(extra_records or {})  # a packed input's own records stay unless measured again
    save_checkpoint(
        out, model, model_name=cfg.model, label_set=cfg.label_set.name, num_classes=cfg.label_set.num_classes,
        mean=cfg.mean, std=cfg.std, network_size=network_size or cfg.network_size, extra=extra,
    )  # fmt: skip


def int8_ranges_record(weights: Path, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """INT8 activation ranges of ``weights``' FP32 graph at its network size, calibrated on
    the ``--calib-*`` frames (what every robot's INT8 graph is then built from)."""
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.backends.calibration import CalibrationError, make_source
    from refinenet_ros.backends.factory import onnx_for, with_weights_size
    from refinenet_ros.backends.ort_quantize import calibrate_ranges
    from refinenet_ros.config import ModelConfig

    cfg = ModelConfig(weights=str(weights)).resolved()
    options = with_weights_size(cfg, BackendOptions(kind="onnxruntime", precision="fp32", max_batch=1,
                                                    engine_dir=str(cache)))  # fmt: skip
    if options.input_size is None:
        raise CliError("--calib-images: the weights record no network size; give --network-size H W")
    try:
        source = make_source(args.calib_images, args.calib_bag, args.calib_topic, args.calib_count)
    except CalibrationError as exc:
        raise CliError(str(exc)) from None
    t0 = time.perf_counter()
    record = calibrate_ranges(onnx_for(cfg, options), source, max_images=args.calib_count)
    where = Path(args.calib_images or args.calib_bag).name  # no machine paths in a shipped file
    record["source"] = f"{where}: {record['frames']} frames"
    print(f"INT8 ranges: {len(record['ranges'])} tensors from {record['frames']} frames "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return record


def accuracy_record(weights: Path, args: argparse.Namespace, paths: list[str], cache: Path) -> dict[str, Any]:
    """Val mIoU (%) of each ``paths`` entry for ``weights``, measured as ``evaluate`` does
    (single scale, the weights' network size, the weights' INT8 ranges)."""
    from refinenet_ros.backends.base import BackendError, BackendOptions
    from refinenet_ros.cli.evaluate import dataset_from_args
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.segmenter import build_segmenter
    from refinenet_ros.training.evaluate import evaluate, segmenter_predictor

    dataset = dataset_from_args(args)
    cfg = ModelConfig(weights=str(weights)).resolved()
    miou: dict[str, float] = {}
    size: tuple[int, int] | None = None
    for path in paths:
        kind, _, precision = path.partition(" ")
        options = BackendOptions(
            kind=kind, device="cpu", precision=precision, max_batch=1, engine_dir=str(cache)
        )
        try:
            segmenter = build_segmenter(cfg, options)
        except (BackendError, ImportError) as exc:
            print(f"  {path}: not recorded ({exc})")
            continue
        size = segmenter.network_size
        result = evaluate(
            segmenter_predictor(segmenter), dataset, cfg.label_set, progress=not args.no_progress
        )
        miou[path] = round(100 * result.metrics.miou, 3)
        print(f"  {path}: val mIoU {miou[path]:.2f} % ({result.images} frames, {result.seconds:.0f} s)")
    if not any(k.endswith(" fp32") for k in miou):
        raise CliError(
            "--paths: the accuracy record needs an fp32 path (the reference); add 'onnxruntime fp32'"
        )
    return {
        "miou": miou,
        "dataset": _dataset_name(args, dataset.description),
        "frames": len(dataset),
        "network_size": list(size) if size else None,
    }


def _dataset_name(args: argparse.Namespace, description: str) -> str:
    """The val set's name as the shipped record says it: no machine paths in it."""
    if args.images is not None:
        return f"{Path(args.images).name} (labels {Path(args.labels_dir).name})"
    return description.split(" (")[0]


def run_pack(args: argparse.Namespace) -> int:
    """--pack: fp16 copy, then (optionally) INT8 ranges, then (optionally) the accuracy record;
    the output is rewritten atomically after each step, so a failed step leaves a usable file."""
    from refinenet_ros.backends.engine_cache import sha256_file
    from refinenet_ros.weights.records import ACCURACY_KEY, RANGES_KEY, weights_int8_ranges

    if args.out is None:
        raise CliError("--pack needs --out FILE")
    if not Path(args.pack).is_file():
        raise CliError(f"--pack {args.pack}: no such file")
    metrics = None
    if args.metrics is not None:
        try:
            metrics = json.loads(Path(args.metrics).read_text())["metrics"]
        except (OSError, ValueError, KeyError) as exc:
            raise CliError(f"--metrics {args.metrics}: not an evaluate report ({exc})") from None
    bad = [p for p in args.paths if p not in ACCURACY_PATHS]
    if bad:
        raise CliError(f"--paths {bad[0]!r}: not a CPU path of auto; choose from {', '.join(ACCURACY_PATHS)}")
    validate = args.images is not None or args.root is not None
    size = (args.network_size[0], args.network_size[1]) if args.network_size else None
    out = Path(args.out)
    records: dict[str, Any] = {}
    if args.temperature is not None and not 0 < args.temperature < float("inf"):
        raise CliError(f"--temperature {args.temperature}: must be a number above 0")
    temperature = {"temperature": args.temperature} if args.temperature is not None else None
    pack(Path(args.pack), out, size, metrics, temperature)
    with tempfile.TemporaryDirectory(prefix="refinenet_pack_") as tmp:
        if args.calib_images is not None or args.calib_bag is not None:
            records[RANGES_KEY] = int8_ranges_record(out, args, Path(tmp) / "ranges")
            pack(out, out, None, None, records)
        elif validate and any(p.endswith(" int8") for p in args.paths) and weights_int8_ranges(out) is None:
            log.warning("no --calib-images: the int8 figures are for the bundled samples' calibration, "
                        "which the packed file does not ship")  # fmt: skip
        if validate:
            print(f"accuracy record on the val set ({len(args.paths)} paths):")
            records[ACCURACY_KEY] = accuracy_record(out, args, list(args.paths), Path(tmp) / "accuracy")
            pack(out, out, None, None, records)
    print(f"packed {args.pack} -> {args.out} ({out.stat().st_size / 1e6:.1f} MB, fp16"
          f"{', INT8 ranges' if RANGES_KEY in records else ''}"
          f"{', accuracy per backend and precision' if ACCURACY_KEY in records else ''})")  # fmt: skip
    print(f"sha256 {sha256_file(out)} (the registry entry's sha256= when it ships)")
    return 0


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.config import checkpoint_metadata, recorded_temperature
    from refinenet_ros.weights import WEIGHTS
    from refinenet_ros.weights.records import weights_accuracy, weights_int8_ranges

    if args.pack is not None:
        return run_pack(args)
    if args.json:
        rows = {
            name: {
                "model": w.model, "labels": w.labels, "network_size": list(w.network_size),
                "mean": list(w.mean), "std": list(w.std), "description": w.description, "recipe": w.recipe,
                "command": w.command, "dataset": w.dataset, "backbone": w.backbone, "metrics": w.metrics,
                "teacher": w.teacher or None,
            }
            for name, w in WEIGHTS.items()
        }  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    for w in WEIGHTS.values():
        print(w.summary())
        print(f"  {w.description}")
        print(f"  trained with: {w.command}  (recipe {w.recipe})")
        print(f"  data: {w.dataset}")
        print(f"  backbone: {w.backbone}")
        if w.teacher:
            print(f"  labels learnt from a teacher, not from people: {w.teacher}")
        h, w_ = w.network_size
        print(f"  preprocessing: RGB, mean {list(w.mean)}, std {list(w.std)}, network {h}x{w_}")
        try:
            path = w.path
        except Exception:  # a missing file is the registry's to report when it is used
            continue
        record = weights_accuracy(path)
        if record is not None:
            figures = ", ".join(f"{k} {v:.1f}" for k, v in record.miou.items())
            print(f"  val mIoU per path ({record.dataset}): {figures}")
        ranges = weights_int8_ranges(path)
        if ranges is not None:
            print(
                f"  INT8: activation ranges of {len(ranges['ranges'])} tensors ({ranges.get('source', '')})"
            )
        temperature = recorded_temperature(checkpoint_metadata(path))
        if temperature is not None:
            print(f"  confidence: calibrated, softmax at temperature {temperature:g} (fitted on val)")
    return 0
