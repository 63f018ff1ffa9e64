"""Fine-tune a RefineNet model on a labelled data set (the robot's own scenes).

The recipe of the RefineNet / Light-Weight RefineNet papers: random scale, crop and
mirror; SGD with momentum and a poly learning-rate decay; a separate learning rate for
the pretrained encoder and the decoder (x10 for Light-Weight RefineNet, whose decoder
starts from scratch); optionally frozen BatchNorm (small batches make its statistics
noisy); pixels labelled with the ignore index do not contribute to the loss.
Validation mIoU is measured every ``--val-every`` steps with the same code as
``evaluate``. Checkpoints (``last.pt``, ``best.pt``) are written atomically with
``save_checkpoint`` so ``segment``/``bag``/the node load them with ``--weights``;
``--resume OUT/last.pt`` continues a run (weights, optimiser momentum, step, history).

Beyond the papers' recipe, for short CPU schedules on small sets such as CamVid:
photometric jitter (``--jitter``), AdamW (``--optimizer adamw``), class weights against
the long tail of thin classes (``--class-weighting enet``), bf16 autocast where the
hardware runs it natively (``--amp auto``), and ImageNet initialisation of the
MobileNetV2 encoder from TensorFlow's TFLite model (``--backbone-init FILE.tflite``).
Coarse or partial labels train the fine model too: a ``--label-map`` (or, for a second
set mixed into every epoch, ``--mix FORMAT ROOT SPLIT`` with ``--mix-label-map``) whose
classes list several of the model's is learnt through the summed probability of each such
union (IDD-Lite's level-1 "vehicle" = car + bicyclist for CamVid), beside the fine labels.
A YAML recipe (``--config``) holds any of these options; flags on the command line win.
The bundled CamVid model is trained this way: see docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from refinenet_ros.cli import (
    DEVICE_HELP,
    NO_PROGRESS_HELP,
    THREADS_HELP,
    CliError,
    add_model_arguments,
    model_config_from_args,
)
from refinenet_ros.cli.evaluate import add_dataset_arguments, dataset_from_args
from refinenet_ros.training.train import AMP_MODES, CLASS_WEIGHTINGS, OPTIMIZERS, Triple

if TYPE_CHECKING:
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.training.datasets import SegmentationDataset

log = logging.getLogger("refinenet_ros")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="YAML",
                        help="a training recipe: YAML mapping of these options (e.g. crop: [320, 320]); "
                             "flags given on the command line override it")  # fmt: skip
    parser.set_defaults(_parser=parser)
    add_dataset_arguments(parser)
    parser.add_argument("--val-split", default=None,
                        help="validation split of the same data set (default: val / validation, for "
                             "folders ROOT/images/val when present; 'none' to skip validation)")  # fmt: skip
    parser.add_argument("--val-images", default=None,
                        help="generic layout: validation images folder (with --val-labels-dir)")  # fmt: skip
    parser.add_argument("--val-labels-dir", default=None,
                        help="generic layout: folder of validation label images matched by name")  # fmt: skip
    parser.add_argument("--val-limit", type=int, default=0, help="validate on the first N images (0: all)")
    parser.add_argument("--mix", nargs=3, default=None, metavar=("FORMAT", "ROOT", "SPLIT"),
                        help="a second labelled set mixed into every epoch, e.g. idd_lite "
                             "../shared/data/idd_lite train_fit (coarse labels train through the "
                             "unions of --mix-label-map)")  # fmt: skip
    parser.add_argument("--mix-label-map", default=None, metavar="MAPPING",
                        help="the --mix set's classes -> the model's (bundled name or YAML; a "
                             "class listing several is a coarse union; idd_lite: "
                             "idd_level1_to_camvid)")  # fmt: skip
    parser.add_argument("--mix-ratio", type=float, default=0.5,
                        help="share of training images drawn from the --mix set (0..1, "
                             "exclusive)")  # fmt: skip
    parser.add_argument("--out", default="train_out", help="folder for last.pt / best.pt")
    parser.add_argument("--resume", default=None, metavar="CKPT", help="continue from OUT/last.pt")
    parser.add_argument("--force", action="store_true",
                        help="start a new run in an --out that holds an earlier run's last.pt/best.pt, "
                             "replacing them (without it such a folder is refused)")  # fmt: skip
    parser.add_argument("--reset-classifier", action="store_true",
                        help="--weights from another label set: load all but the classifier")  # fmt: skip
    g = parser.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="training iterations")
    g.add_argument("--batch-size", type=int, default=8, help="images per training step")
    g.add_argument("--crop", type=int, nargs=2, default=(320, 320), metavar=("H", "W"),
                   help="random crop H W of each rescaled training image")  # fmt: skip
    g.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                   help="random rescaling factor range before the crop")  # fmt: skip
    g.add_argument("--no-flip", action="store_true", help="no random horizontal mirroring")
    g.add_argument("--lr", type=float, default=5e-4, help="encoder learning rate (SGD)")
    g.add_argument("--decoder-lr-mult", type=float, default=None,
                   help="decoder LR = lr x this (default 10 for lw_* models, 1 otherwise)")  # fmt: skip
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=1e-5, help="L2 weight decay (AdamW: decoupled)")
    g.add_argument("--poly-power", type=float, default=0.9, help="poly decay: lr x (1 - step/steps)^power")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (0: none)")
    g.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics and affine fixed")
    g.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="sgd (with --momentum) or adamw")
    g.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="photometric jitter: brightness/contrast/saturation x [1-J, 1+J] (0: off)",
    )
    g.add_argument(
        "--class-weighting",
        default="none",
        choices=CLASS_WEIGHTINGS,
        help="enet: loss weights 1/ln(1.02 + class frequency) from the training labels",
    )
    g.add_argument(
        "--amp",
        default="auto",
        choices=AMP_MODES,
        help="bf16 autocast; auto: where bf16 is native (CUDA, AMX/AVX-512 BF16 CPUs)",
    )
    g.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    g.add_argument("--backbone-init", default=None, metavar="TFLITE",
                   help="ImageNet MobileNetV2 TFLite file for the encoder of lw_refinenet_mobilenetv2 "
                        "(needs pip install .[imagenet]); the recipe's normalisation follows it")  # fmt: skip
    g.add_argument("--val-every", type=int, default=500, help="validate every N steps (0: only at the end)")
    g.add_argument("--checkpoint-every", type=int, default=500, help="write OUT/last.pt every N steps")
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_model_arguments(parser, weights_help=TRAIN_WEIGHTS_HELP)


TRAIN_WEIGHTS_HELP = (
    "initial weights: a bundled name (camvid, indoor; see `refinenet-ros weights`) or a checkpoint file "
    "(default: random initialisation, or the --backbone-init encoder)"
)


def _folders_split(args: argparse.Namespace, name: str) -> str | None:
    """ROOT/images/NAME when it exists (folders layout), else None."""
    return name if args.root and (Path(args.root) / "images" / name).is_dir() else None


def _train_set(args: argparse.Namespace) -> SegmentationDataset:
    split = args.split
    if split is None and args.images is None:
        defaults = {"cityscapes": "train", "voc": "train", "ade20k": "training"}
        split = defaults.get(args.dataset) or _folders_split(args, "train") or ""
    return dataset_from_args(args, split=split)


def _val_set(args: argparse.Namespace) -> SegmentationDataset | None:
    from refinenet_ros.training.datasets import DatasetError, open_dataset

    if args.val_split == "none":
        return None
    try:
        if args.val_images is not None or args.images is not None:  # validation folders given separately
            if args.val_images is None and args.val_labels_dir is None:
                return None
            if args.val_images is None or args.val_labels_dir is None:
                raise CliError("--val-images and --val-labels-dir go together: give both folders")
            ds = open_dataset("folders", images=args.val_images, labels=args.val_labels_dir,
                              label_offset=args.label_offset)  # fmt: skip
        else:
            split = args.val_split
            if split is None:
                defaults = {"cityscapes": "val", "voc": "val", "ade20k": "validation"}
                split = defaults.get(args.dataset) or _folders_split(args, "val")
            if split is None:
                return None
            ds = open_dataset(args.dataset, args.root, split, label_offset=args.label_offset)
    except DatasetError as exc:
        raise CliError(f"validation set: {exc}") from None
    from refinenet_ros.cli.evaluate import _mapped
    from refinenet_ros.training.datasets import IDD_LITE_MAPPING

    idd = args.dataset == "idd_lite" and args.images is None
    label_map = args.label_map or (IDD_LITE_MAPPING if idd else None)
    if label_map:  # the same classes as the training labels
        ds = _mapped(ds, label_map)
    return ds.subset(args.val_limit) if args.val_limit > 0 else ds


def _mix_set(args: argparse.Namespace) -> SegmentationDataset | None:
    """The --mix set, its labels through --mix-label-map (idd_lite: the bundled unions)."""
    from refinenet_ros.cli.evaluate import _mapped
    from refinenet_ros.training.datasets import IDD_LITE_MAPPING, DatasetError, open_dataset

    if args.mix is None:
        if args.mix_label_map is not None:
            raise CliError("--mix-label-map goes with --mix FORMAT ROOT SPLIT")
        return None
    fmt, root, split = args.mix
    try:
        ds = open_dataset(fmt, root, split)
    except DatasetError as exc:
        raise CliError(f"--mix: {exc}") from None
    label_map = args.mix_label_map or (IDD_LITE_MAPPING if fmt == "idd_lite" else None)
    return _mapped(ds, label_map) if label_map else ds


def apply_config_file(args: argparse.Namespace) -> None:
    """Fill options from ``--config`` YAML where the command line left them at their defaults."""
    import yaml

    path = Path(args.config)
    try:
        recipe = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CliError(f"--config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(recipe, dict):
        raise CliError(f"--config {path}: expected a mapping of option: value")
    parser: argparse.ArgumentParser = args._parser
    actions = {a.dest: a for a in parser._actions}
    for key, value in recipe.items():
        dest = str(key).replace("-", "_")
        if dest.startswith("_") or dest == "config" or not hasattr(args, dest) or dest not in actions:
            raise CliError(f"--config {path}: unknown option {key!r} (see refinenet-ros train --help)")
        if getattr(args, dest) == parser.get_default(dest):
            setattr(args, dest, _recipe_value(path, str(key), value, actions[dest]))


def _recipe_value(path: Path, key: str, value: object, action: argparse.Action) -> object:
    """A recipe value converted and checked as the command line would (``steps: "ten"`` is
    refused here in one line, not in the middle of training)."""
    where = f"--config {path}: {key}: {value!r}"
    if action.nargs == 0:  # a flag: true or false
        if not isinstance(value, bool):
            raise CliError(f"{where} must be true or false")
        return value
    if value is None:
        return None
    count = action.nargs if isinstance(action.nargs, int) else None
    items = value if isinstance(value, list) else [value]
    if count is not None and len(items) != count:
        raise CliError(f"{where} needs {count} values, as a list (e.g. [320, 320])")
    if count is None and isinstance(value, list):
        raise CliError(f"{where} takes one value, not a list")
    convert = action.type if callable(action.type) else str
    try:
        converted = [convert(item if isinstance(item, str) else str(item)) for item in items]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise CliError(f"{where} is not valid ({exc})") from None
    if action.choices is not None and any(c not in action.choices for c in converted):
        raise CliError(f"{where}: choose from {', '.join(map(str, action.choices))}")
    return tuple(converted) if count is not None else converted[0]


def _normalisation(args: argparse.Namespace, cfg: ModelConfig) -> tuple[Triple, Triple]:
    """Mean/std the run trains with: the resumed checkpoint's, else the fine-tuned weights',
    else the TFLite backbone's (x / 127.5 - 1), else the architecture's (ImageNet)."""
    from refinenet_ros.config import checkpoint_metadata
    from refinenet_ros.models.tflite_import import TFLITE_MEAN, TFLITE_STD

    if args.resume is not None:
        meta = checkpoint_metadata(args.resume)
        if meta.get("mean") and meta.get("std"):
            m, s = meta["mean"], meta["std"]
            return (float(m[0]), float(m[1]), float(m[2])), (float(s[0]), float(s[1]), float(s[2]))
    if cfg.weights is None and args.backbone_init:
        return TFLITE_MEAN, TFLITE_STD
    assert cfg.mean is not None and cfg.std is not None
    return cfg.mean, cfg.std


def run(args: argparse.Namespace) -> int:
    import torch

    from refinenet_ros.models import CheckpointError, build_model, load_checkpoint
    from refinenet_ros.training.train import TrainConfig, resolve_amp, train

    if args.config is not None:
        apply_config_file(args)
    from refinenet_ros.cli import MAX_NETWORK_SIDE
    from refinenet_ros.machine import bounded_threads

    if args.threads < 0:
        raise CliError(f"--threads {args.threads}: must be >= 0")
    if args.threads:
        torch.set_num_threads(bounded_threads(args.threads, "--threads"))
    if args.jitter < 0 or args.jitter >= 1:
        raise CliError(f"--jitter {args.jitter}: must be within [0, 1)")
    if args.lr <= 0:
        raise CliError(f"--lr {args.lr}: must be > 0")
    if args.steps < 1 or args.batch_size < 1:
        raise CliError("--steps and --batch-size must be >= 1")
    if min(args.crop) < 32 or max(args.crop) > MAX_NETWORK_SIDE:
        raise CliError(
            f"--crop {args.crop[0]} {args.crop[1]}: each side must be within 32..{MAX_NETWORK_SIDE} pixels"
        )
    if args.batch_size == 1 and min(args.crop) < 64 and not args.freeze_bn:
        raise CliError(
            f"--batch-size 1 with --crop {args.crop[0]} {args.crop[1]}: BatchNorm then sees one value per "
            "channel in the deepest layer; use --crop 64 64 or more, --batch-size 2 or more, or --freeze-bn"
        )
    if not 0.0 <= args.momentum < 1.0:
        raise CliError(f"--momentum {args.momentum}: must be within [0, 1)")
    if not args.weight_decay >= 0.0:
        raise CliError(f"--weight-decay {args.weight_decay}: must be >= 0")
    if args.decoder_lr_mult is not None and not args.decoder_lr_mult > 0:
        raise CliError(f"--decoder-lr-mult {args.decoder_lr_mult}: must be > 0")
    if args.warmup_steps < 0 or args.val_every < 0 or args.checkpoint_every < 0:
        raise CliError("--warmup-steps, --val-every and --checkpoint-every must be >= 0")
    if not 0 < args.scale_range[0] <= args.scale_range[1]:
        raise CliError(f"--scale-range {args.scale_range}: need 0 < MIN <= MAX")
    if args.resume is not None and not Path(args.resume).is_file():
        raise CliError(f"--resume {args.resume}: no such file")
    if (args.val_images is None) != (args.val_labels_dir is None):
        raise CliError("--val-images and --val-labels-dir go together: give both folders")
    if not 0.0 < args.mix_ratio < 1.0:
        raise CliError(f"--mix-ratio {args.mix_ratio}: must be between 0 and 1 (exclusive)")
    _refuse_overwrite(args)
    train_set = _train_set(args)
    val_set = _val_set(args)
    mix_set = _mix_set(args)
    cfg = model_config_from_args(args, default_weights=False, check_labels=not args.reset_classifier)
    assert cfg.model is not None
    label_set = cfg.label_set
    from refinenet_ros.cli.evaluate import check_mapped_labels
    from refinenet_ros.training.datasets import DatasetError, MixedDataset
    from refinenet_ros.training.losses import union_targets

    for ds, flag in ((train_set, "--label-map"), (mix_set, "--mix-label-map"), (val_set, "--label-map")):
        if ds is not None and ds.mapped_to is not None and ds.mapped_to != label_set.name:
            raise CliError(
                f"{flag} maps to {ds.mapped_to} but the model predicts {label_set.name}; give --labels "
                f"{ds.mapped_to}, or a mapping to {label_set.name}"
            )
    check_mapped_labels(train_set, label_set.name)
    try:
        unions = union_targets([d for d in (train_set, mix_set) if d is not None], label_set.num_classes)
    except DatasetError as exc:
        raise CliError(str(exc)) from None
    if mix_set is not None:
        train_set = MixedDataset(train_set, mix_set, args.mix_ratio)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    mean, std = _normalisation(args, cfg)
    model = build_model(cfg.model, label_set.num_classes, seed=cfg.seed)
    if args.backbone_init is not None and args.resume is None:
        from refinenet_ros.models.tflite_import import TFLiteImportError, load_mobilenetv2_tflite

        try:
            load_mobilenetv2_tflite(model, args.backbone_init)
        except TFLiteImportError as exc:
            raise CliError(f"--backbone-init: {exc}") from None
        log.info("encoder initialised from ImageNet MobileNetV2 %s", args.backbone_init)
    if cfg.weights is not None and args.resume is None:
        try:
            report = load_checkpoint(model, cfg.weights, strict=False, skip_classifier=args.reset_classifier)
        except CheckpointError as exc:
            hint = "" if args.reset_classifier else " (another label set? pass --reset-classifier)"
            raise CliError(f"--weights: {exc}{hint}") from None
        log.info("initial weights: %s", report.summary())
    elif cfg.weights is None and args.resume is None and args.backbone_init is None:
        log.warning("no --weights: training %s from random initialisation (seed %d)", cfg.model, cfg.seed)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, crop_size=(args.crop[0], args.crop[1]),
        scale_range=(args.scale_range[0], args.scale_range[1]), flip=not args.no_flip, lr=args.lr,
        decoder_lr_mult=args.decoder_lr_mult, momentum=args.momentum, weight_decay=args.weight_decay,
        poly_power=args.poly_power, warmup_steps=args.warmup_steps, freeze_bn=args.freeze_bn,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, seed=cfg.seed, device=device, optimizer=args.optimizer,
        jitter=args.jitter, class_weighting=args.class_weighting, amp=resolve_amp(args.amp, device),
        mean=mean, std=std,
    )  # fmt: skip
    log.info("training %s [%s] on %s (%d images), validation: %s; %s on %s", cfg.model, label_set.name,
             train_set.description, len(train_set),
             f"{val_set.description} ({len(val_set)} images)" if val_set else "none",
             "bf16 autocast" if config.amp == "bf16" else "fp32", device)  # fmt: skip
    try:
        result = train(model, cfg.model, label_set, train_set, val_set, config, out_dir=args.out,
                       resume=args.resume, progress=not args.no_progress, unions=unions)  # fmt: skip
    except FloatingPointError as exc:
        raise CliError(f"{exc} (last good checkpoint: {args.out}/last.pt if written)") from None
    for step, miou in result.history:
        print(f"step {step:>6d}: validation mIoU {100 * miou:.2f} %")
    ran = config.steps - result.start_step
    span = f" (steps {result.start_step}..{config.steps})" if result.start_step else ""
    best_file = Path(args.out) / "best.pt"
    if result.history and best_file.is_file():
        best = f"best mIoU {100 * result.best_miou:.2f} % at step {result.best_step} ({best_file})"
    elif result.history:
        best = f"no validation mIoU above NaN: the result is {args.out}/last.pt"
    else:
        best = f"no validation (--val-split none): the result is {args.out}/last.pt"
    print(f"trained {ran} steps{span} in {result.seconds:.1f} s; {best}; checkpoints in {args.out}/")
    return 0


def _refuse_overwrite(args: argparse.Namespace) -> None:
    """A new run never replaces an earlier run's checkpoints unless asked (``--force``):
    ``--resume`` continues that run, another ``--out`` keeps both."""
    out = Path(args.out)
    if args.force or (args.resume is not None and Path(args.resume).resolve().parent == out.resolve()):
        return
    earlier = [name for name in ("last.pt", "best.pt") if (out / name).exists()]
    if earlier:
        raise CliError(
            f"--out {out} holds an earlier run ({' and '.join(earlier)}); continue it with --resume "
            f"{out / 'last.pt'}, choose another --out, or pass --force to replace it"
        )
