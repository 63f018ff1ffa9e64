"""``bench model``: backend-only latency, throughput and achieved GFLOP/s.

Each (backend, precision, network size, batch) gets its own backend (compiled backends are
built for one shape), a warm-up, then timed ``Backend.infer`` calls on real images (the
bundled samples at that size), so the figure is what the node's worker thread pays per
call. The configurations of one size and batch are timed in interleaved rounds, so a
background job slows them alike: compare their ratios, and each row's spread
((p90 - p10) / p50) says how much the machine moved them. By default it measures what the
node runs: ``auto`` backend and precision at the weights' network size. The FLOP count is
torch's ``FlopCounterMode`` over the bare network forward on the
meta device (no compute, exact shapes): convolutions and matmuls only, 2 FLOP per
multiply-add; the pipeline's cast/normalise/upsample/argmax are not counted, so GFLOP/s
is a slight underestimate of the work done. When several configurations share a
network size and batch, the labels of each are compared with the first one's (pixel
agreement), which is how INT8 is checked against FP32.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.base import Backend, CalibrationSpec
from refinenet_ros.backends.engine_cache import default_cache_dir
from refinenet_ros.config import ModelConfig
from refinenet_ros.machine import CpuInfo
from refinenet_ros.stats import format_table, percentiles

log = logging.getLogger("refinenet_ros")


@dataclass(frozen=True)
class ModelBenchSettings:
    """Every combination of backends x precisions x network sizes x batches is measured."""

    model_cfg: ModelConfig
    backends: tuple[str, ...] = ("auto",)
    precisions: tuple[str, ...] = ("auto",)
    network_sizes: tuple[tuple[int, int], ...] = ((360, 480),)  # (H, W), as --network-size
    batches: tuple[int, ...] = (1,)
    iterations: int = 10
    warmup: int = 2
    threads: int = 0
    device: str = "auto"
    engine_dir: str = field(default_factory=default_cache_dir)
    #: INT8 calibration frames: none (the weights' ranges), as the node, unless given
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)

    def to_json(self) -> dict[str, Any]:
        cfg = self.model_cfg.resolved()
        return {
            "model": cfg.model,
            "labels": cfg.labels,
            "weights": cfg.weights,
            "backends": list(self.backends),
            "precisions": list(self.precisions),
            # WxH strings: the key every earlier result file has, so runs stay comparable
            "resolutions": [f"{w}x{h}" for h, w in self.network_sizes],
            "network_sizes": [list(hw) for hw in self.network_sizes],
            "batches": list(self.batches),
            "iterations": self.iterations,
            "warmup": self.warmup,
            "threads": self.threads,
            "device": self.device,
            "calib_images": self.calibration.images,  # the keys earlier result files have
            "calib_bag": self.calibration.bag,
            "calib_topic": self.calibration.topic,
            "calib_count": self.calibration.count,
        }


def count_flops(model_cfg: ModelConfig, height: int, width: int) -> int:
    """FLOPs of one forward pass at H x W (batch 1), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from refinenet_ros.models import build_model

    cfg = model_cfg.resolved()
    assert cfg.model is not None
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.label_set.num_classes, seed=cfg.seed, cascaded=cfg.cascaded)
        x = torch.zeros(1, 3, height, width)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def gemm_ceiling(n: int = 2048, repeats: int = 4) -> float:
    """Best FP32 GFLOP/s of a torch n x n matmul: what this machine really sustains.

    A check on the derived peak: above 100 % means the cores run faster than the clock
    the peak assumed (turbo; a VM's 'cpu MHz' is the nominal clock), far below means the
    FMA-unit assumption is too generous for this part or the machine is busy.
    """
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def input_batch(batch: int, height: int, width: int) -> npt.NDArray[np.uint8]:
    """Real images (the bundled samples panned at this size), so data-dependent paths run."""
    from refinenet_ros.samples import sample_sequence

    return np.ascontiguousarray(np.stack(sample_sequence(batch, (height, width))))


def prepare_one(
    settings: ModelBenchSettings,
    kind: str,
    precision: str,
    width: int,
    height: int,
    batch: int,
    gflop_per_image: float,
) -> tuple[dict[str, Any], Backend | None]:
    """One configuration's backend (or its error in the row), built and ready to time."""
    from refinenet_ros.backends import BackendError, BackendOptions, create_backend

    row: dict[str, Any] = {
        "backend": kind,
        "precision": precision,
        "width": width,
        "height": height,
        "batch": batch,
        "gflop_per_image": round(gflop_per_image, 3),
    }
    options = BackendOptions(
        kind=kind,
        device=settings.device,
        precision=precision,
        input_size=(height, width),
        max_batch=batch,
        threads=settings.threads,
        engine_dir=settings.engine_dir,
        calibration=settings.calibration,
    )
    t0 = time.perf_counter()
    try:
        backend = create_backend(settings.model_cfg, options)
    except BackendError as exc:
        row["error"] = str(exc)
        log.error("bench model: %s %s %dx%d batch %d: %s", kind, precision, width, height, batch, exc)
        return row, None
    row["setup_s"] = round(time.perf_counter() - t0, 2)
    row["asked"] = f"{kind} {precision}"  # auto resolves to a backend and precision of its choice
    row["backend"] = backend.name
    row["device"] = backend.device
    row["precision"] = str(getattr(backend, "precision", precision))
    return row, backend


def finish_one(row: dict[str, Any], times: list[float], gflop_per_image: float, peak_gflops: float) -> None:
    """Fill ``row`` with the figures of its timed calls (ms)."""
    batch = row["batch"]
    lat = percentiles(times, (10, 50, 90, 95), digits=2)
    mean_ms = float(np.mean(times))
    row["iterations"] = len(times)
    row["latency_ms"] = {
        "p50": lat["p50"],
        "p95": lat["p95"],
        "mean": round(mean_ms, 2),
        "min": round(min(times), 2),
    }
    # (p90 - p10) / p50: how much a shared machine moved the calls
    row["spread"] = round((lat["p90"] - lat["p10"]) / lat["p50"], 3) if lat["p50"] > 0 else None
    row["throughput_fps"] = round(batch * 1e3 / mean_ms, 2)
    gflops = gflop_per_image * batch / (lat["p50"] / 1e3)
    row["gflops"] = round(gflops, 1)
    row["peak_fraction"] = round(gflops / peak_gflops, 3) if peak_gflops > 0 else None
    # the fastest call: closest to the uncontended figure when the machine is shared
    best = gflop_per_image * batch / (min(times) / 1e3)
    row["gflops_best"] = round(best, 1)
    row["peak_fraction_best"] = round(best / peak_gflops, 3) if peak_gflops > 0 else None


NO_PATH: dict[tuple[str, str], str] = {
    ("torch", "int8"): "the torch backend has no int8 path",
    ("torch", "bf16"): "the torch backend has no bf16 path (use openvino bf16)",
    ("onnxruntime", "bf16"): "ONNX Runtime's CPU provider has no bf16 path (use openvino bf16)",
    ("openvino", "fp16"): "openvino fp16 is for Intel iGPU/NPU devices (--device gpu|npu)",
}
"""Combinations that do not exist at all (as opposed to ones this machine lacks units for,
which are attempted so the table shows the refusal and its reason)."""


def unsupported(kind: str, precision: str) -> str | None:
    """Why (kind, precision) is not a path of this package, or None."""
    return NO_PATH.get((kind, precision))


def run_model_bench(settings: ModelBenchSettings, cpu: CpuInfo) -> dict[str, Any]:
    """Every configuration in ``settings``; returns the JSON figures (``results`` list)."""
    cfg = settings.model_cfg.resolved()
    settings = replace(settings, model_cfg=cfg)
    gemm = gemm_ceiling()
    log.info("torch sgemm 2048^3: %.1f GFLOP/s (%.0f %% of the derived peak)", gemm,
             100 * gemm / cpu.peak_gflops if cpu.peak_gflops > 0 else float("nan"))  # fmt: skip
    results: list[dict[str, Any]] = []
    for height, width in settings.network_sizes:
        gflop = count_flops(cfg, height, width) / 1e9
        log.info("%s at %dx%d: %.2f GFLOP per image", cfg.model, width, height, gflop)
        for batch in settings.batches:
            group: list[tuple[dict[str, Any], Backend | None]] = []
            for kind in settings.backends:
                for precision in settings.precisions:
                    reason = unsupported(kind, precision)
                    if reason is not None:
                        log.info("bench model: %s %s skipped: %s", kind, precision, reason)
                        continue
                    group.append(prepare_one(settings, kind, precision, width, height, batch, gflop))
            results += time_interleaved(group, settings, gflop, cpu.peak_gflops)
    return {
        "model": cfg.model,
        "gemm_gflops_best": round(gemm, 1),
        "gemm_peak_fraction": round(gemm / cpu.peak_gflops, 3) if cpu.peak_gflops > 0 else None,
        "results": results,
    }


def time_interleaved(
    group: list[tuple[dict[str, Any], Backend | None]],
    settings: ModelBenchSettings,
    gflop_per_image: float,
    peak_gflops: float,
) -> list[dict[str, Any]]:
    """Time the configurations of one size and batch in interleaved rounds (one call each per
    round, the order rotating), so a background job slows them alike and their ratios hold;
    each row also gets its pixel agreement with the first configuration's labels."""
    live = [(row, backend) for row, backend in group if backend is not None]
    height, width, batch = (
        (group[0][0]["height"], group[0][0]["width"], group[0][0]["batch"]) if group else (0, 0, 1)
    )
    images = input_batch(batch, height, width)
    labels: dict[int, npt.NDArray[np.integer]] = {}
    for i, (_, backend) in enumerate(live):
        for _ in range(settings.warmup):
            labels[i], _conf = backend.infer(images)
    times: dict[int, list[float]] = {i: [] for i in range(len(live))}
    for r in range(settings.iterations):
        for k in range(len(live)):
            i = (k + r) % len(live)
            t = time.perf_counter()
            labels[i], _conf = live[i][1].infer(images)
            times[i].append((time.perf_counter() - t) * 1e3)
    for i, (row, _) in enumerate(live):
        finish_one(row, times[i], gflop_per_image, peak_gflops)
        if i > 0:
            row["agreement_with"] = f"{live[0][0]['backend']} {live[0][0]['precision']}"
            row["pixel_agreement"] = round(float(np.mean(labels[i] == labels[0])), 5)
    for row, _ in group:
        print(_row_line(row), flush=True)
    return [row for row, _ in group]


def _row_line(row: dict[str, Any]) -> str:
    where = f"{row['backend']:<12} {row['precision']:<5} {row['width']}x{row['height']} b{row['batch']}"
    if "error" in row:
        return f"{where}: error: {row['error']}"
    lat = row["latency_ms"]
    return (
        f"{where}: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, {row['throughput_fps']:.2f} img/s, "
        f"{row['gflops']:.1f} GFLOP/s"
    )


def results_table(results: list[dict[str, Any]]) -> str:
    headers = ["asked", "backend", "prec", "WxH", "batch", "p50 ms", "spread", "p95 ms", "min ms", "img/s",
               "GFLOP/img", "GFLOP/s", "% peak", "best %", "agree"]  # fmt: skip
    rows = []
    for r in results:
        if "error" in r:
            where = [r["backend"], r["precision"], f"{r['width']}x{r['height']}", r["batch"]]
            blank = [None] * 5
            rows.append([r.get("asked"), *where, *blank, r["gflop_per_image"], None, None, None, "error"])
            continue
        frac, best = r.get("peak_fraction"), r.get("peak_fraction_best")
        agree = r.get("pixel_agreement")
        spread = r.get("spread")
        rows.append([
            r.get("asked"), r["backend"], r["precision"], f"{r['width']}x{r['height']}", r["batch"],
            r["latency_ms"]["p50"], None if spread is None else f"{100 * spread:.0f} %",
            r["latency_ms"]["p95"], r["latency_ms"]["min"], r["throughput_fps"],
            r["gflop_per_image"], r["gflops"], None if frac is None else 100 * frac,
            None if best is None else 100 * best,
            "-" if agree is None else f"{100 * agree:.2f} %",
        ])  # fmt: skip
    return format_table(headers, rows)
