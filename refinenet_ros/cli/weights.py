"""``refinenet-ros weights``: list the bundled weights, or pack a trained checkpoint for bundling.

Listing shows each entry's model, label set, network size, val mIoU, recipe, data set and
backbone source. ``--pack CKPT --out FILE`` writes the fp16 copy of a ``train``
checkpoint that the package ships (half the size; loaded back into fp32), recording the
network size it is meant to run at and the validation figures given with ``--metrics``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refinenet_ros.cli import CliError, add_network_size_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON")
    g = parser.add_argument_group("packing a checkpoint for bundling (maintainers)")
    g.add_argument("--pack", default=None, metavar="CKPT", help="a checkpoint written by `train`")
    g.add_argument("--out", default=None, help="the fp16 file to write (with --pack)")
    add_network_size_argument(g)  # with --pack: the size recorded for the node and every command
    g.add_argument("--metrics", default=None, metavar="JSON",
                   help="an `evaluate` report whose metrics are recorded (with --pack)")  # fmt: skip
    g.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="confidence temperature to record (fitted by `evaluate --fit-temperature` on "
                        "the val set); every backend's confidence becomes softmax(logits / T)")  # fmt: skip


def pack(
    checkpoint: Path,
    out: Path,
    network_size: tuple[int, int] | None,
    metrics: dict | None,
    temperature: float | None = None,
) -> None:
    """Rewrite ``checkpoint`` as fp16 tensors + its metadata (and the given size/metrics/temperature)."""
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
    if temperature is not None:
        extra["temperature"] = float(temperature)
    save_checkpoint(
        out, model, model_name=cfg.model, label_set=cfg.label_set.name, num_classes=cfg.label_set.num_classes,
        mean=cfg.mean, std=cfg.std, network_size=network_size or cfg.network_size, extra=extra,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.weights import WEIGHTS

    if args.pack is not None:
        if args.out is None:
            raise CliError("--pack needs --out FILE")
        metrics = None
        if args.metrics is not None:
            try:
                metrics = json.loads(Path(args.metrics).read_text())["metrics"]
            except (OSError, ValueError, KeyError) as exc:
                raise CliError(f"--metrics {args.metrics}: not an evaluate report ({exc})") from None
        size = (args.network_size[0], args.network_size[1]) if args.network_size else None
        if args.temperature is not None and not 0 < args.temperature < float("inf"):
            raise CliError(f"--temperature {args.temperature}: must be a number above 0")
        pack(Path(args.pack), Path(args.out), size, metrics, args.temperature)
        print(f"packed {args.pack} -> {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, fp16)")
        return 0
    if args.json:
        rows = {
            name: {
                "model": w.model, "labels": w.labels, "network_size": list(w.network_size),
                "mean": list(w.mean), "std": list(w.std), "description": w.description, "recipe": w.recipe,
                "command": w.command, "dataset": w.dataset, "backbone": w.backbone, "metrics": w.metrics,
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
        h, w_ = w.network_size
        print(f"  preprocessing: RGB, mean {list(w.mean)}, std {list(w.std)}, network {h}x{w_}")
    return 0
