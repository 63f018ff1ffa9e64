"""OpenVINO backend: the exported pipeline graph on Intel CPUs (and iGPU/NPU by name).

Why a second CPU runtime: on Intel parts with AVX-512-BF16 or AMX, OpenVINO's CPU plugin
runs the same graph in bf16 about 3x faster than ONNX Runtime FP32 (LW-RefineNet-50
512x512: 215 -> 70 ms, docs/benchmarks.md). It reads the very ONNX file the other backends
run (uint8 in, labels + confidence out), so nothing about the pipeline changes.

Precisions:

* ``fp32``: ``INFERENCE_PRECISION_HINT=f32`` set explicitly — on AMX machines the CPU
  plugin's *default* is bf16, which would silently make "fp32" a bf16 run.
* ``bf16``: only where the CPU executes it natively (AVX-512-BF16 / AMX-BF16); elsewhere
  OpenVINO would emulate it, slower than fp32, so it is refused with the reason.
* ``fp16``: only on devices that report FP16 (Intel iGPU/NPU, AMX-FP16 CPUs).
* ``int8``: the ONNX Runtime QDQ graph (:mod:`ort_quantize`, calibrated on the same
  images) read by OpenVINO, whose low-precision transformations turn the Q/DQ pairs into
  int8 convolutions (VNNI/AMX-INT8). No NNCF: one calibrated graph serves both runtimes
  at ORT's own INT8 speed (docs/benchmarks.md).

Compiling takes seconds (tens of seconds for the INT8 graph on a small CPU), so the
compiled model is exported beside the ONNX graph (``<graph>.<device>.<precision>.<key>.ovblob``
+ a JSON sidecar), keyed by the graph's sha256, the OpenVINO version, the device, the
precision, the thread count and the CPU flags, written atomically and imported on the
next start; a blob that fails to import is compiled again over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from refinenet_ros.backends.base import BackendError, check_batch, classes_from_metadata, pad_to_batch
from refinenet_ros.backends.engine_cache import (
    cache_decision,
    digest_problem,
    nearest_differences,
    record_digest,
    sha256_bytes,
    sha256_file,
    slug,
)
from refinenet_ros.backends.onnx_export import INPUT_NAME, OUTPUT_NAMES, read_metadata
from refinenet_ros.backends.prepare import require_build
from refinenet_ros.errors import option
from refinenet_ros.io import atomic_write_bytes, atomic_write_text
from refinenet_ros.machine import cpu_flags, cpu_has_native_bf16

log = logging.getLogger("refinenet_ros")

OPENVINO_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
"""INFERENCE_PRECISION_HINT per precision; int8 keeps its non-quantised ops in f32."""
BLOB_FORMAT = 1
"""Part of the blob key: bump when the compile configuration below changes."""
CPU_FLAG_PREFIXES = ("avx", "amx", "fma", "sse4", "f16c")
"""The flags the CPU plugin chooses kernels by; a blob compiled for others is not reused."""
OPENVINO_HOW_TO = "pip install 'refinenet_ros[openvino]' (the openvino runtime from PyPI)"


def openvino_unavailable_reason() -> str | None:
    """None when the OpenVINO runtime imports, else one line saying how to install it."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"OpenVINO is not installed ({exc}); {OPENVINO_HOW_TO}"
    return None


def openvino_version() -> str:
    import openvino as ov

    return str(ov.get_version())


def ov_device(device: str) -> str:
    """This package's ``--device`` spelling -> an OpenVINO device name.

    ``auto``/``cpu`` -> ``CPU``; ``gpu``, ``gpu.1``, ``npu`` -> upper-cased; OpenVINO's
    own meta devices (``AUTO:GPU,CPU``, ``HETERO:...``) pass through. CUDA devices are
    not OpenVINO's: refused with the backends that run them.
    """
    if device in ("auto", "cpu", ""):
        return "CPU"
    if device.startswith("cuda"):
        raise BackendError(
            f"openvino backend runs on Intel CPU/GPU/NPU, not {device!r}; "
            f"use {option('backend', 'onnxruntime')} or torch for CUDA"
        )
    head, sep, tail = device.partition(":")
    return head.upper() + sep + tail.upper() if sep else device.upper()


def relevant_cpu_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The sorted SIMD/matrix flags that change which kernels a compiled blob holds."""
    flags = cpu_flags() if flags is None else flags
    return sorted(f for f in flags if f.startswith(CPU_FLAG_PREFIXES))


def precision_refusal(precision: str, device: str, capabilities: list[str]) -> str | None:
    """Why ``precision`` cannot run natively on ``device`` (None when it can)."""
    if precision not in OPENVINO_PRECISIONS:
        return f"unknown precision {precision!r}; choose one of {', '.join(OPENVINO_PRECISIONS)}"
    if precision == "bf16":
        if device == "CPU" and not cpu_has_native_bf16():
            units = [f for f in relevant_cpu_flags() if f.startswith(("avx512", "amx"))]
            return (
                "bf16 needs AVX-512-BF16 or AMX-BF16 and this CPU has neither "
                f"({' '.join(units) or 'no AVX-512'}): OpenVINO would emulate it, slower than fp32; "
                f"use {option('precision', 'fp32')} or int8"
            )
        if "BF16" not in capabilities:
            listed = " ".join(capabilities)
            return f"{device} does not report BF16 ({listed}); use {option('precision', 'fp32')} or int8"
    if precision == "fp16" and "FP16" not in capabilities:
        return (
            f"{device} does not run fp16 natively (capabilities: {' '.join(capabilities)}); "
            f"use {option('precision', 'fp32')}, bf16 or int8"
        )
    return None


class OpenVinoBackend:
    """Runs an exported ``image -> (labels, confidence)`` graph with one compiled model."""

    name = "openvino"

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        device: str = "auto",
        precision: str = "fp32",
        threads: int = 0,
        max_batch: int = 16,
        num_classes: int | None = None,
        cache: bool = True,
    ) -> None:
        reason = openvino_unavailable_reason()
        if reason is not None:
            raise BackendError(f"openvino backend: {reason}")
        import openvino as ov

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise BackendError(f"openvino backend: {self.path}: no such file")
        core = ov.Core()
        self.ov_device = ov_device(device)
        base = self.ov_device.split(":", 1)[0].split(".", 1)[0]
        if base not in ("AUTO", "HETERO", "MULTI", "BATCH") and self.ov_device not in core.available_devices:
            raise BackendError(
                f"openvino backend: device {self.ov_device!r} not found; this machine has "
                f"{', '.join(core.available_devices)} ({option('device')})"
            )
        try:
            capabilities = [str(c) for c in core.get_property(self.ov_device, "OPTIMIZATION_CAPABILITIES")]
        except Exception:  # meta devices have no capability list of their own
            capabilities = []
        refusal = precision_refusal(precision, base, capabilities)
        if refusal is not None:
            raise BackendError(f"openvino backend: {refusal}")
        if precision == "int8" and read_metadata(self.path).get("precision") != "int8":
            raise BackendError(
                f"openvino backend: {self.path.name} is not a quantised graph; int8 runs the QDQ graph "
                f"create_backend makes ({option('precision', 'int8')} without {option('onnx')}, "
                f"or an int8 {option('onnx')})"
            )
        self.precision = precision
        self.threads = threads
        self.device = "cpu" if base == "CPU" else self.ov_device.lower()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            # One frame at a time from the node's worker: latency, one stream.
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads > 0 and base == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        t0 = time.perf_counter()
        self._compiled, self.cache_state = self._load_or_compile(core, config, cache)
        self.setup_s = time.perf_counter() - t0
        self._request = self._compiled.create_infer_request()
        self._bind_io()
        meta = read_metadata(self.path)
        self.metadata: dict[str, str] = meta
        self.num_classes = classes_from_metadata(meta, num_classes, self.path)
        self.max_batch = self._static_batch if self._static_batch is not None else max(1, max_batch)
        log.info(
            "openvino %s: %s on %s %s (%s), input %s, max batch %d, %s threads, %.1f s",
            openvino_version(), self.path.name, self.ov_device, precision, self.cache_state,
            "x".join(map(str, self.input_size)) if self.input_size else "any size",
            self.max_batch, threads or "default", self.setup_s,
        )  # fmt: skip

    # -- compiled-model cache -------------------------------------------------------------

    def cache_key(self, config: dict[str, Any]) -> dict[str, Any]:
        """Everything a compiled blob depends on; any change compiles anew."""
        return {
            "format": BLOB_FORMAT,
            "graph_sha256": sha256_file(self.path),
            "openvino": openvino_version(),
            "device": self.ov_device,
            "precision": self.precision,
            "config": {k: str(v) for k, v in sorted(config.items())},
            "cpu_flags": relevant_cpu_flags(),
        }

    def blob_path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        name = f"{self.path.stem}.{slug(self.ov_device)}.{self.precision}.{digest}.ovblob"
        return self.path.with_name(name)

    def _load_or_compile(self, core: Any, config: dict[str, Any], cache: bool) -> tuple[Any, str]:
        key = self.cache_key(config) if cache else {}
        blob = self.blob_path(key) if cache else None
        if blob is not None and blob.is_file():
            data = blob.read_bytes()
            problem = digest_problem(blob, sha256_bytes(data))
            if problem is not None:  # bit rot imports fine and runs with other labels
                log.warning("openvino: cached %s is not used: %s; compiling again", blob.name, problem)
            else:
                try:
                    compiled = core.import_model(data, self.ov_device, config)
                    return compiled, f"compiled model from cache {blob.name}"
                except Exception as exc:  # stale or truncated blob: compile over it
                    log.warning("openvino: cached %s does not import (%s); compiling again", blob.name, exc)
        if blob is not None:  # uncached compiles stay here: a child's result could not be reused
            neighbours = blob.parent.glob(f"{self.path.stem}.{slug(self.ov_device)}.{self.precision}.*.json")
            why = nearest_differences(neighbours, key, lambda p: json.loads(p.read_text()))
            log.info("%s", cache_decision("OpenVINO compiled-model", blob, hit=False, differences=why))
            require_build(f"OpenVINO {self.ov_device} compile of {self.path.name}")
        try:
            model = core.read_model(str(self.path))
            compiled = core.compile_model(model, self.ov_device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"openvino could not compile {self.path} for {self.ov_device}: {exc}") from exc
        if blob is None:
            return compiled, "compiled, cache off"
        try:
            exported = compiled.export_model()
            blob_bytes = exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)
            atomic_write_bytes(blob, blob_bytes)
            record_digest(blob, sha256_bytes(blob_bytes))
            atomic_write_text(blob.with_suffix(".json"), json.dumps(key, indent=2, sort_keys=True) + "\n")
        except Exception as exc:  # read-only cache, device without export: run uncached
            log.warning("openvino: compiled model not cached (%s)", exc)
            return compiled, "compiled, not cached"
        return compiled, f"compiled and cached as {blob.name}"

    def _bind_io(self) -> None:
        names = {n for port in self._compiled.inputs for n in port.get_names()}
        outs = {n for port in self._compiled.outputs for n in port.get_names()}
        if INPUT_NAME not in names or not set(OUTPUT_NAMES) <= outs:
            raise BackendError(
                f"{self.path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}, found "
                f"{sorted(names)} -> {sorted(outs)}; export it with `refinenet-ros export`"
            )
        shape = self._compiled.input(INPUT_NAME).get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape]
        self._static_batch: int | None = dims[0]
        h, w = dims[1], dims[2]
        self.input_size: tuple[int, int] | None = (h, w) if h is not None and w is not None else None

    def infer(self, images: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        check_batch(images, self)
        n = images.shape[0]
        batch = pad_to_batch(images, self._static_batch)  # a fixed-batch graph: padding dropped below
        # share_outputs=False (the default): results are copies, safe across calls.
        result = self._request.infer({INPUT_NAME: batch})
        labels = result[self._compiled.output(OUTPUT_NAMES[0])]
        confidence = result[self._compiled.output(OUTPUT_NAMES[1])]
        return labels[:n], confidence[:n].astype(np.float32, copy=False)
