"""Segment image files (or the bundled samples) and write labels, colour and overlay PNGs.

For each input ``NAME`` it writes into ``--out``: ``NAME_labels.png`` (palette-mode PNG:
pixel values are class ids, viewers show the label set's colours), ``NAME_color.png``,
``NAME_overlay.png`` and ``NAME_confidence.png`` (max softmax x 255), each written
atomically, and prints one timing line per image.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from refinenet_ros.cli import (
    CliError,
    add_backend_arguments,
    add_model_arguments,
    backend_options_from_args,
    model_config_from_args,
)
from refinenet_ros.training.datasets import IMAGE_SUFFIXES

log = logging.getLogger("refinenet_ros")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", help="image files or folders of images")
    parser.add_argument("--samples", action="store_true", help="segment the bundled sample images")
    parser.add_argument("--out", default="segment_out", help="output folder (created if missing)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each image N times and report the median time (warm-up excluded)",
    )
    add_model_arguments(parser)
    add_backend_arguments(parser, batch=False)


def collect_inputs(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    """(name, path or None for a bundled sample), failing early on anything unreadable."""
    from refinenet_ros.samples import SAMPLE_NAMES

    items: list[tuple[str, Path | None]] = []
    for raw in args.images:
        path = Path(raw)
        if path.is_dir():
            try:
                files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            except PermissionError:
                raise CliError(f"{path}: folder cannot be read (permission denied)") from None
            if not files:
                raise CliError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            items.extend((p.stem, p) for p in files)
        elif path.is_file():
            items.append((path.stem, path))
        else:
            raise CliError(f"{path}: no such file or folder")
    if args.samples:
        items.extend((name, None) for name in SAMPLE_NAMES)
    if not items:
        raise CliError("nothing to segment: give image files/folders or --samples")
    return _distinct(items)


def _distinct(items: list[tuple[str, Path | None]]) -> list[tuple[str, Path | None]]:
    """Drop repeats of the same file; refuse two inputs that would write the same outputs
    (``d1/x.png d2/x.png`` both write ``x_labels.png``: one result would silently replace the other)."""
    seen: dict[str, str] = {}
    kept: list[tuple[str, Path | None]] = []
    for name, path in items:
        source = str(path.resolve()) if path is not None else f"bundled sample {name}"
        if name in seen:
            if seen[name] == source:
                continue
            raise CliError(
                f"{seen[name]} and {source} would both write {name}_*.png into --out; "
                "segment them into separate --out folders or rename one"
            )
        seen[name] = source
        kept.append((name, path))
    return kept


def run(args: argparse.Namespace) -> int:
    from refinenet_ros.io import read_rgb, write_label_png, write_mono_png, write_rgb_png
    from refinenet_ros.samples import sample_images
    from refinenet_ros.segmenter import build_segmenter

    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha {args.alpha}: must be within 0..1")
    items = collect_inputs(args)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} is a file; give a folder (created if missing)")
    model_cfg = model_config_from_args(args)
    segmenter = build_segmenter(model_cfg, backend_options_from_args(args))
    log.info(
        "model %s, backend %s on %s", model_cfg.describe(), segmenter.backend.name, segmenter.backend.device
    )
    samples = dict(sample_images()) if any(p is None for _, p in items) else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    totals: list[float] = []
    for name, path in items:
        image = samples[name] if path is None else read_rgb(path)
        segmenter(image)  # warm-up: first call pays allocator / kernel selection costs
        times = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            result = segmenter(image)
            times.append((time.perf_counter() - t0) * 1e3)
        total = float(np.median(times))
        totals.append(total)
        color = result.color()
        write_label_png(out_dir / f"{name}_labels.png", result.labels, result.label_set)
        write_rgb_png(out_dir / f"{name}_color.png", color)
        write_rgb_png(out_dir / f"{name}_overlay.png", result.overlay(image, args.alpha, color=color))
        write_mono_png(out_dir / f"{name}_confidence.png", result.confidence_u8())
        t = result.timings_ms
        n_present = len(np.unique(result.labels))
        classes = f"{n_present} class{'es' if n_present != 1 else ''} present"
        print(
            f"{name}: {image.shape[1]}x{image.shape[0]} -> {total:.1f} ms "
            f"(preprocess {t['preprocess']:.1f}, infer {t['infer']:.1f}, postprocess "
            f"{t['postprocess']:.1f}); {classes}, mean confidence "
            f"{float(result.confidence.mean()):.2f}"
        )
    print(f"{len(items)} images -> {out_dir}/ ; median {float(np.median(totals)):.1f} ms/image")
    return 0
