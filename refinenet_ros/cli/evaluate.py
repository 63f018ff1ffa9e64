"""Measure a model on a labelled data set: mIoU, per-class IoU, pixel / mean class accuracy, fwIoU.

Data sets: ``--dataset cityscapes|voc|ade20k|idd_lite|folders --root DIR [--split S]`` or any
``--images DIR --labels-dir DIR`` pair (``--label-offset 1`` for exports where 0 = unlabelled;
``--labels`` names the label set, as everywhere).
Single-scale evaluation runs through the Segmenter, so it measures exactly what the node
and the bag tool produce with the chosen backend. ``--scales``/``--flip`` average softmax
maps over scales and mirror images (the paper's test-time protocol) and need the torch
backend. Predictions are scored at each label image's full resolution.

Coarse ground truth (IDD-Lite's level-1 classes, or a user's own through a ``--label-map``
whose classes list several of the model's) is scored on the coarse classes, each fine
prediction counted through the unions. ``--fit-temperature`` fits the confidence
temperature on the set and reports the expected calibration error before and after.

Writes a JSON report (atomically), prints a per-class table, and with
``--save-predictions DIR`` writes each prediction as a colour PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from refinenet_ros.cli import (
    NO_PROGRESS_HELP,
    CliError,
    add_backend_arguments,
    add_model_arguments,
    backend_options_from_args,
    model_config_from_args,
)
from refinenet_ros.weights.records import MIN_RECORD_FRAMES

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.training.datasets import SegmentationDataset

log = logging.getLogger("refinenet_ros")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset/--root/--split or --images/--labels-dir; shared with ``train``."""
    from refinenet_ros.training.datasets import DATASET_FORMATS

    g = parser.add_argument_group("data set")
    g.add_argument("--dataset", default="folders", choices=DATASET_FORMATS,
                   help="layout under --root (folders: ROOT/images + ROOT/labels)")  # fmt: skip
    g.add_argument("--root", default=None, help="data set root folder")
    g.add_argument("--split", default=None,
                   help="split: cityscapes train|val, voc train|val|FILE, ade20k training|validation, "
                        "folders: ROOT/images/SPLIT (default: the train split for train, val for "
                        "evaluate, when present)")  # fmt: skip
    g.add_argument("--images", default=None, help="generic layout: folder of images (with --labels-dir)")
    g.add_argument("--labels-dir", default=None,
                   help="generic layout: folder of label images matched to --images by name (--labels "
                        "names the label set)")  # fmt: skip
    g.add_argument("--label-offset", type=int, default=None,
                   help="subtract from label values; values below it become ignore (1 for exports "
                        "where 0 = unlabelled: ADE20K, NYUDv2-40, SUN-RGBD)")  # fmt: skip
    g.add_argument("--label-map", default=None, metavar="MAPPING",
                   help="ground-truth classes -> the model's label set: a bundled mapping (e.g. "
                        "nyud40_to_indoor, with --label-offset 1 for NYU exports) or a YAML "
                        "file; a coarse class listing several model classes is scored (evaluate) "
                        "and trained (train) through their union; idd_lite defaults to "
                        "idd_level1_to_camvid")  # fmt: skip
    g.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")


def dataset_from_args(args: argparse.Namespace, split: str | None = None) -> SegmentationDataset:
    from refinenet_ros.training.datasets import DatasetError, open_dataset

    split = split if split is not None else args.split
    root = Path(args.root) if args.root else None
    # The CLI names its flags; the library's messages name the concepts.
    if (args.images is None) != (args.labels_dir is None):
        raise CliError("--images and --labels-dir go together: give both folders")
    if args.images is None and root is None:
        raise CliError("give a data set: --dataset FORMAT --root DIR, or --images DIR --labels-dir DIR")
    if split is None and args.dataset == "folders" and root and (root / "images" / "val").is_dir():
        split = "val"  # a folders data set with train/val subfolders: evaluate on val
    try:
        ds = open_dataset(
            args.dataset,
            args.root,
            split,
            images=args.images,
            labels=args.labels_dir,
            label_offset=args.label_offset,
        )
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    label_map = getattr(args, "label_map", None)
    if label_map is None and args.dataset == "idd_lite" and args.images is None:
        from refinenet_ros.training.datasets import IDD_LITE_MAPPING

        label_map = IDD_LITE_MAPPING  # level-1 ids mean nothing to a model without a mapping
    if label_map:
        ds = _mapped(ds, label_map)
    return ds.subset(args.limit) if args.limit > 0 else ds


def _mapped(ds: SegmentationDataset, spec: str) -> SegmentationDataset:
    """The data set with its labels (after any offset or id table) sent through a mapping."""
    import numpy as np

    from refinenet_ros.labels import IGNORE_INDEX, MappingError, load_mapping

    try:
        mapping = load_mapping(spec)
    except MappingError as exc:
        raise CliError(f"--label-map: {exc}") from None
    if mapping.is_union:  # coarse labels stay source ids; train/evaluate go through the unions
        ds.unions = mapping
        ds.mapped_to = mapping.target.name
        ds.description += f" through {mapping.name} (unions)"
        return ds
    table = mapping.lut()
    table[IGNORE_INDEX] = IGNORE_INDEX  # an offset table's ignore stays ignore
    base = ds.lut if ds.lut is not None else np.arange(65536, dtype=np.uint16)
    ds.lut = table[base]
    ds.mapped_to = mapping.target.name
    ds.description += f" through {mapping.name}"
    return ds


def check_mapped_labels(ds: SegmentationDataset, labels: str) -> None:
    """A --label-map must land in the label set the model predicts."""
    target = ds.mapped_to
    if target is not None and target != labels:
        raise CliError(
            f"--label-map maps to {target} but the model predicts {labels}; give weights/--labels "
            f"for {target}, or a mapping to {labels}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0],
                        help="test-time scales, e.g. 0.4 0.6 0.8 1.0 1.2 (torch backend)")  # fmt: skip
    parser.add_argument("--flip", action="store_true", help="also average mirrored images (torch backend)")
    parser.add_argument("--report", default="evaluation.json", help="JSON report path")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="write each prediction as a colour PNG into DIR")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    parser.add_argument("--fit-temperature", action="store_true",
                        help="also fit the confidence temperature on this (validation) set and report "
                             "the expected calibration error before/after; store it with "
                             "`refinenet-ros weights --pack CKPT --out FILE --temperature T`")  # fmt: skip
    parser.add_argument(
        "--record", action="store_true",
        help="record this backend + precision's mIoU for `auto` on this machine (your labelled data, at "
        f"least {MIN_RECORD_FRAMES} frames; evaluate fp32 too, as the reference). Without it, "
        "evaluate changes nothing",
    )  # fmt: skip
    add_model_arguments(parser)
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.io import atomic_write_text
    from refinenet_ros.training.evaluate import _safe, evaluate, segmenter_predictor, torch_predictor

    multiscale = list(args.scales) != [1.0] or args.flip
    if any(s <= 0 for s in args.scales):
        raise CliError(f"--scales {args.scales}: every scale must be > 0")
    if multiscale and args.backend not in ("auto", "torch"):
        raise CliError(
            f"--scales/--flip average softmax maps inside PyTorch; use --backend torch, not {args.backend}"
        )
    from refinenet_ros.backends.factory import with_weights_size

    dataset = dataset_from_args(args)
    model_cfg = model_config_from_args(args)
    label_set = model_cfg.label_set
    check_mapped_labels(dataset, label_set.name)
    unions = dataset.unions
    scored_set = unions.source_set() if unions is not None else label_set
    if unions is not None and args.record:
        raise CliError("--record: coarse classes are not the model's; record on labels of its own classes")
    if unions is not None and args.fit_temperature:
        raise CliError("--fit-temperature needs labels of the model's own classes, not coarse ones")
    options = with_weights_size(model_cfg, backend_options_from_args(args))
    if args.record:
        _check_record(args, multiscale, len(dataset))
    if multiscale:
        from refinenet_ros.config import load_model, warn_if_random_weights

        device = "cpu" if args.device == "auto" else args.device
        warn_if_random_weights(model_cfg)
        model = load_model(model_cfg).to(device)
        predict = torch_predictor(
            model, scales=args.scales, flip=args.flip, device=device, network_size=options.input_size,
            mean=model_cfg.mean, std=model_cfg.std,
        )  # fmt: skip
        backend_name = f"torch (multi-scale {args.scales}{', flip' if args.flip else ''})"
        precision = "fp32"
    else:
        from refinenet_ros.segmenter import build_segmenter

        segmenter = build_segmenter(model_cfg, options)
        predict = segmenter_predictor(segmenter)
        backend_name = segmenter.backend.name
        precision = str(getattr(segmenter.backend, "precision", options.precision))
    log.info("evaluating %s on %s (%d images), backend %s", model_cfg.describe(), dataset.description,
             len(dataset), backend_name)  # fmt: skip
    result = evaluate(
        predict,
        dataset,
        label_set,
        batch=1 if multiscale else options.max_batch,
        progress=not args.no_progress,
        save_dir=args.save_predictions,
        score_through=unions,
    )
    resolved = model_cfg
    report = {
        "model": resolved.model,
        "labels": label_set.name,
        "weights": resolved.weights,
        "dataset": dataset.description,
        "images": result.images,
        "backend": backend_name,
        "precision": precision,
        "network_size": list(options.input_size) if options.input_size else None,
        "scales": list(args.scales),
        "flip": bool(args.flip),
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 3),
        "metrics": result.metrics.to_dict(scored_set.classes),
    }
    if unions is not None:
        report["scored_on"] = f"{unions.name} coarse classes (each the union of the model's classes)"
    # The metrics are printed first: a report or record that cannot be written (read-only
    # folder, full disk) must not lose an evaluation that took minutes.
    if unions is not None:
        print(f"scored on the {len(unions.source)} coarse classes of {unions.name} (fine predictions "
              "counted through their unions)")  # fmt: skip
    print(result.metrics.table(scored_set.classes))
    m = result.metrics
    print(
        f"{result.images} images, {result.seconds:.1f} s ({result.images_per_second:.2f} img/s): "
        f"mIoU {100 * _safe(m.miou):.2f} %, pixel acc {100 * _safe(m.pixel_accuracy):.2f} %"
    )
    if args.fit_temperature:
        report["calibration"] = _fit_temperature(args, model_cfg, options, dataset)
    miou = result.metrics.miou
    if args.record and miou == miou:  # not NaN
        try:
            _record_for_auto(model_cfg, options, backend_name, precision, 100 * miou, dataset.description,
                             result.images)  # fmt: skip
        except OSError as exc:
            raise CliError(
                f"--record: the mIoU could not be written beside the cached graph ({exc.strerror or exc}); "
                "give a writable --engine-dir"
            ) from None
    try:
        atomic_write_text(args.report, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise CliError(
            f"--report {args.report}: cannot be written ({exc.strerror or exc}); the metrics are printed "
            "above; give a writable --report path"
        ) from None
    print(f"report -> {args.report}")
    return 0


def _fit_temperature(
    args: argparse.Namespace, model_cfg: ModelConfig, options: BackendOptions, dataset: SegmentationDataset
) -> dict[str, float | int]:
    """Fit the confidence temperature on the data set's labelled pixels (the PyTorch model's
    logits at the network size) and print ECE before/after and the command that stores it."""
    from refinenet_ros.config import load_model
    from refinenet_ros.training.temperature import calibrate, sample_logits

    if model_cfg.weights is None:
        raise CliError("--fit-temperature: random weights have nothing to calibrate; give --weights")
    device = "cpu" if args.device == "auto" else args.device
    assert model_cfg.mean is not None and model_cfg.std is not None
    logits, labels = sample_logits(
        load_model(model_cfg).to(device), dataset, mean=model_cfg.mean, std=model_cfg.std,
        network_size=options.input_size, device=device,
    )  # fmt: skip
    fit = calibrate(logits, labels, model_cfg.temperature or 1.0)
    current = "" if fit.current_temperature == 1.0 else (
        f", {100 * fit.ece_current:.2f} % with the weights' temperature {fit.current_temperature:g}"
    )  # fmt: skip
    print(f"confidence temperature fitted on {fit.pixels} pixels: T = {fit.temperature:.3f}; expected "
          f"calibration error {100 * fit.ece_before:.2f} % uncalibrated{current}, "
          f"{100 * fit.ece_after:.2f} % at T = {fit.temperature:.3f}")  # fmt: skip
    print(f"store it: refinenet-ros weights --pack {model_cfg.weights} --out FILE "
          f"--temperature {fit.temperature:.3f}")  # fmt: skip
    return fit.to_dict()


RECORDED_BACKENDS = ("onnxruntime", "openvino", "torch")
"""The backends ``auto`` chooses among on a CPU: the ones a record can speak for."""


def _check_record(args: argparse.Namespace, multiscale: bool, frames: int) -> None:
    """--record refuses what ``auto`` could not use, before minutes of evaluation."""
    if multiscale:
        raise CliError("--record: --scales/--flip evaluate a path the node never runs; drop them to record")
    if frames < MIN_RECORD_FRAMES:
        raise CliError(
            f"--record: {frames} labelled frames are too few to decide on (at least {MIN_RECORD_FRAMES}: "
            "fewer move mIoU by more than the 0.5 points auto judges by); give a larger data set"
        )
    if args.backend not in ("auto", *RECORDED_BACKENDS):
        raise CliError(
            f"--record: auto never chooses {args.backend} on a CPU; record onnxruntime or openvino"
        )


def _record_for_auto(
    model_cfg: ModelConfig,
    options: BackendOptions,
    kind: str,
    precision: str,
    miou: float,
    dataset: str,
    frames: int,
) -> None:
    """Leave this path's mIoU beside the FP32 graph, where ``auto`` reads it before the
    weights' own record: a path within 0.5 mIoU of FP32 may then be chosen on this machine,
    one that loses more never is."""
    from dataclasses import replace

    from refinenet_ros.backends.admission import record_accuracy
    from refinenet_ros.backends.factory import onnx_for

    if kind not in RECORDED_BACKENDS:
        raise CliError(f"--record: the backend ran {kind}, which auto never chooses on a CPU")
    graph = onnx_for(model_cfg, replace(options, precision="fp32"))
    size = options.input_size
    path = record_accuracy(graph, kind, precision, miou, dataset, frames=frames, network_size=size)
    print(f"recorded {kind} {precision} mIoU {miou:.2f} % on {dataset} ({frames} frames) for auto -> {path}")
