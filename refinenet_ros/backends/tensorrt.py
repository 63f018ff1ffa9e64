"""TensorRT 10 backend: build engines from the exported ONNX graph, cache them, run them.

Deliberately thin: everything that can be decided without a GPU (cache keys, staleness,
atomic writes, calibration images) lives in :mod:`engine_cache` and :mod:`calibration`
and is tested everywhere; this module only talks to TensorRT. It uses the TensorRT 10+
Python API exclusively — ``OnnxParser``, ``BuilderConfig.set_memory_pool_limit``,
optimisation profiles, ``build_serialized_network``, named I/O tensors with
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` — and is
type-checked with pyright against ``tensorrt-stubs`` on machines without TensorRT.

CUDA memory and streams come from **torch.cuda** (always installed; no cuda-python
dependency): device buffers are torch CUDA tensors, host buffers are pinned torch CPU
tensors viewed as numpy, and every copy and the engine run go on one ``torch.cuda.Stream``.

Import this module only after :func:`refinenet_ros.backends.factory.tensorrt_unavailable_reason`
returned None: it needs a real TensorRT at import time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import tensorrt as trt
import torch

from refinenet_ros.backends.base import BackendError, check_batch
from refinenet_ros.backends.calibration import ImageSource, calibration_batches
from refinenet_ros.backends.engine_cache import BuildRecord, EngineCache, EngineKey, ShapeTriple, default_stem
from refinenet_ros.backends.onnx_export import INPUT_NAME, OUTPUT_NAMES, read_metadata
from refinenet_ros.backends.prepare import require_build
from refinenet_ros.errors import option
from refinenet_ros.io import atomic_write_bytes

if TYPE_CHECKING:
    from refinenet_ros.backends.base import BackendOptions

log = logging.getLogger("refinenet_ros")

_TORCH_DTYPES: dict[trt.DataType, torch.dtype] = {
    trt.DataType.FLOAT: torch.float32,
    trt.DataType.HALF: torch.float16,
    trt.DataType.INT32: torch.int32,
    trt.DataType.INT64: torch.int64,
    trt.DataType.INT8: torch.int8,
    trt.DataType.UINT8: torch.uint8,
    trt.DataType.BOOL: torch.bool,
}


class _Logger(trt.ILogger):
    """Routes TensorRT's messages into the package logger (INFO/VERBOSE become debug)."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        severity = trt.ILogger.Severity
        self._levels = {
            severity.INTERNAL_ERROR: logging.CRITICAL,
            severity.ERROR: logging.ERROR,
            severity.WARNING: logging.WARNING,
            severity.INFO: logging.DEBUG,
            severity.VERBOSE: logging.DEBUG,
        }

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        log.log(self._levels.get(severity, logging.INFO), "TensorRT: %s", msg)


# One logger for the life of the process: TensorRT requires it to outlive every
# builder, runtime and engine created with it.
_LOGGER = _Logger()


class _ProgressLogger(trt.IProgressMonitor):
    """Build progress in the log: a 5-minute build must never look like a hang.

    TensorRT calls it from several builder threads, hence the lock.
    """

    def __init__(self, every_s: float = 5.0) -> None:
        trt.IProgressMonitor.__init__(self)
        self._every = every_s
        self._t0 = time.monotonic()
        self._last = 0.0
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()

    def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
        with self._lock:
            self._steps[phase_name] = num_steps
        if not parent_phase:  # top-level phases only: nested ones would flood the log
            log.info("TensorRT build: %s (%d steps, %.0f s elapsed)", phase_name, num_steps, self._elapsed())

    def step_complete(self, phase_name: str, step: int) -> bool:
        now = time.monotonic()
        with self._lock:
            due = now - self._last >= self._every
            if due:
                self._last = now
            total = self._steps.get(phase_name, 0)
        if due:
            log.info(
                "TensorRT build: %s %d/%d (%.0f s elapsed)", phase_name, step + 1, total, self._elapsed()
            )
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            self._steps.pop(phase_name, None)

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0


@contextlib.contextmanager
def _heartbeat(what: str, every_s: float = 10.0) -> Iterator[None]:
    """Elapsed-time lines for builds where no progress monitor is available."""
    done = threading.Event()
    t0 = time.monotonic()

    def beat() -> None:
        while not done.wait(every_s):
            log.info("%s: still working (%.0f s elapsed)", what, time.monotonic() - t0)

    thread = threading.Thread(target=beat, name="trt-build-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# TensorRT's calibrator contract returns None for "no more batches" / "no cached table";
# the stubs type those methods without None, so the value is typed Any.
_NO_DATA: Any = None


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """INT8 entropy calibration fed with uint8 NHWC batches at network size.

    The batches come from :func:`calibration.calibration_batches` (an image folder, a
    rosbag2 topic or the samples) and go through the same graph — normalisation included
    — as inference does. The calibration table is cached next to the engine so a rebuild
    for a new TensorRT version does not need the images again.
    """

    def __init__(
        self, source: ImageSource, size: tuple[int, int], batch: int, cache_path: Path | None, device: str
    ) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        self._batches = calibration_batches(source, size, batch)
        self._batch = batch
        self._device_buf = torch.empty((batch, size[0], size[1], 3), dtype=torch.uint8, device=device)
        self._cache_path = cache_path
        self._count = 0

    def get_batch_size(self) -> int:
        return self._batch

    def get_batch(self, names: list[str]) -> list[int]:
        batch = next(self._batches, None)
        if batch is None or batch.shape[0] != self._batch:
            log.info("INT8 calibration: %d batches of %d images", self._count, self._batch)
            return _NO_DATA
        self._device_buf.copy_(torch.from_numpy(batch))
        torch.cuda.synchronize(self._device_buf.device)
        self._count += 1
        return [int(self._device_buf.data_ptr()) for _ in names]

    def read_calibration_cache(self) -> bytes:
        if self._cache_path is not None and self._cache_path.is_file():
            log.info("INT8 calibration: reusing table %s", self._cache_path)
            return self._cache_path.read_bytes()
        return _NO_DATA

    def write_calibration_cache(self, cache: Any) -> None:
        if self._cache_path is not None:
            atomic_write_bytes(self._cache_path, bytes(memoryview(cache)))


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str
    index: int

    @classmethod
    def current(cls, device: str) -> GpuInfo:
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return cls(torch.cuda.get_device_name(index), f"{major}.{minor}", index)


def _onnx_input_dims(onnx_path: Path) -> list[int | None]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    (inp,) = [i for i in model.graph.input if i.name == INPUT_NAME] or [None]
    if inp is None:
        raise BackendError(f"{onnx_path} has no input {INPUT_NAME!r}; export it with `refinenet-ros export`")
    return [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]


def profile_shapes(
    onnx_path: Path, input_size: tuple[int, int] | None, max_batch: int
) -> dict[str, ShapeTriple]:
    """(min, opt, max) of ``image``: static dims kept, dynamic N = 1..max_batch (opt max),
    dynamic H/W pinned to ``input_size`` (engines are fastest at one shape)."""
    n, h, w, _ = _onnx_input_dims(onnx_path)
    if h is None or w is None:
        if input_size is None:
            raise BackendError(
                f"{onnx_path.name} has dynamic H/W: give the network size the engine is built for "
                f"({option('network_size')})"
            )
        h, w = input_size
    elif input_size is not None and (h, w) != tuple(input_size):
        raise BackendError(f"{onnx_path.name} is exported for {h}x{w}, not {input_size[0]}x{input_size[1]}")
    if n is None:
        lo, hi = (1, h, w, 3), (max_batch, h, w, 3)
        return {INPUT_NAME: (lo, hi, hi)}
    static = (n, h, w, 3)
    return {INPUT_NAME: (static, static, static)}


def build_engine(
    onnx_path: Path,
    shapes: dict[str, ShapeTriple],
    *,
    precision: str,
    workspace_mb: int,
    timing_cache: Path | None,
    calibrator: EntropyCalibrator | None = None,
    explicit: bool = False,
) -> bytes:
    """Parse ``onnx_path`` and build a serialised engine (bytes).

    ``explicit``: ``onnx_path`` is a QDQ graph (INT8 scales from the weights' activation
    ranges): TensorRT takes its Q/DQ pairs as they are, no calibrator runs.
    """
    builder = trt.Builder(_LOGGER)
    strongly_typed = explicit and not hasattr(trt.BuilderFlag, "INT8")
    # TensorRT 10: explicit batch is the only mode; TensorRT 11 builds QDQ graphs strongly typed.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors[:5]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    missing_flag = not hasattr(trt.BuilderFlag, precision.upper())
    if precision in ("fp16", "int8") and not strongly_typed and missing_flag:
        # TensorRT 11 removed the weakly-typed precision flags and implicit INT8 calibration.
        raise BackendError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()}: this package "
            f"builds {precision} engines with the TensorRT 10 API; use TensorRT 10.x, or fp32, or "
            f"the ONNX Runtime backend with {option('precision', 'int8')} (an explicitly quantised QDQ graph)"
        )
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16: the fp16 engine may be no faster than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8" and explicit:
        if not strongly_typed:  # Q/DQ layers run INT8; FP16 for the layers between them
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        if calibrator is None:
            raise BackendError("int8 needs calibration data (--calib-images or --calib-bag/--calib-topic)")
        if not getattr(builder, "platform_has_fast_int8", True):
            log.warning("this GPU has no fast INT8: the int8 engine may be no faster than fp16")
        # FP16 too, so layers TensorRT keeps out of INT8 do not fall back to FP32.
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
        config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(profile)
    if precision == "int8" and not explicit:
        config.set_calibration_profile(profile)
    cache_data = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    elif cache_data:
        log.info("reusing timing cache %s (%.1f kB)", timing_cache, len(cache_data) / 1e3)
    monitor = _ProgressLogger() if hasattr(trt, "IProgressMonitor") else None
    if monitor is not None:
        config.progress_monitor = monitor
    log.info(
        "TensorRT %s: building %s engine for %s (can take minutes)",
        trt.__version__,
        precision,
        onnx_path.name,
    )
    with contextlib.nullcontext() if monitor is not None else _heartbeat("TensorRT build"):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see the TensorRT errors above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    data = bytes(memoryview(serialized))
    # TensorRT objects go first: the progress monitor and calibrator must outlive them.
    del serialized, config, parser, network, builder
    return data


def deserialize(data: bytes) -> trt.ICudaEngine | None:
    """The engine, or None when TensorRT rejects the bytes (version/GPU mismatch, corruption)."""
    global _RUNTIME
    if _RUNTIME is None:
        # One runtime for the process, never released: it must outlive its engines.
        _RUNTIME = trt.Runtime(_LOGGER)
    return _RUNTIME.deserialize_cuda_engine(data)


_RUNTIME: trt.Runtime | None = None


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


class TensorRTBackend:
    """Runs a TensorRT engine: one execution context, pinned host buffers, one CUDA stream."""

    name = "tensorrt"

    def __init__(self, engine: trt.ICudaEngine, *, num_classes: int, device: str = "cuda:0") -> None:
        self._engine = engine
        self.device = device
        self.num_classes = num_classes
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(names):
            raise BackendError(
                f"engine tensors {names}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}"
            )
        lo, _, hi = (_dims(d) for d in engine.get_tensor_profile_shape(INPUT_NAME, 0))
        self.max_batch = int(hi[0])
        self._min_batch = int(lo[0])
        self.input_size: tuple[int, int] | None = (int(hi[1]), int(hi[2]))
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=device)
        self._device_buffers: dict[str, torch.Tensor] = {}
        self._host_buffers: dict[str, torch.Tensor] = {}
        for name in names:
            dtype = _TORCH_DTYPES.get(engine.get_tensor_dtype(name))
            if dtype is None:
                raise BackendError(
                    f"engine tensor {name} has unsupported type {engine.get_tensor_dtype(name)}"
                )
            shape = (self.max_batch, *self.input_size) + ((3,) if name == INPUT_NAME else ())
            self._device_buffers[name] = torch.empty(shape, dtype=dtype, device=device)
            self._host_buffers[name] = torch.empty(shape, dtype=dtype).pin_memory()
            self._context.set_tensor_address(name, int(self._device_buffers[name].data_ptr()))

    @classmethod
    def from_onnx(cls, onnx_path: Path, options: BackendOptions) -> TensorRTBackend:
        """Load the cached engine for ``onnx_path`` + options, or build (and cache) it."""
        backend, _ = cls.load_or_build(onnx_path, options)
        return backend

    @classmethod
    def load_or_build(cls, onnx_path: Path, options: BackendOptions) -> tuple[TensorRTBackend, BuildRecord]:
        device = "cuda:0" if options.device in ("auto", "cuda") else options.device
        gpu = GpuInfo.current(device)
        torch.cuda.set_device(gpu.index)
        meta = read_metadata(onnx_path)
        if "num_classes" not in meta:
            raise BackendError(
                f"{onnx_path} has no num_classes metadata; re-export it with refinenet-ros export"
            )
        shapes = profile_shapes(onnx_path, options.input_size, options.max_batch)
        explicit = "quantization" in meta  # a QDQ graph: its scales are in it
        source = None
        if options.precision == "int8" and not explicit:
            source = options.calibration.source()
        from refinenet_ros.backends.engine_cache import sha256_file

        key = EngineKey(
            onnx_sha256=sha256_file(onnx_path),
            tensorrt_version=trt.__version__,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=options.precision,
            input_shapes=shapes,
            max_batch=shapes[INPUT_NAME][2][0],
            calibration=source.fingerprint() if source is not None else "",
        )
        cache = EngineCache(options.engine_dir)
        stem = default_stem(meta.get("model_name", onnx_path.stem), key)

        def build() -> bytes:
            require_build(f"TensorRT {options.precision} engine build for {onnx_path.name}")
            calibrator = None
            if source is not None:
                _, _, hi = shapes[INPUT_NAME]
                table = cache.directory / f"{stem}_{key.calibration[:12]}.calib"
                calibrator = EntropyCalibrator(source, (hi[1], hi[2]), 1, table, device)
                log.info("INT8 calibration on %s", source.describe())
            return build_engine(
                onnx_path,
                shapes,
                precision=options.precision,
                workspace_mb=options.workspace_mb,
                timing_cache=cache.timing_cache_path(key),
                calibrator=calibrator,
                explicit=explicit,
            )

        extra = {
            "onnx": str(onnx_path),
            "model_name": meta.get("model_name", ""),
            "label_set": meta.get("label_set", ""),
        }
        engine, record = cache.load_or_build(stem, key, build, deserialize, extra=extra)
        return cls(engine, num_classes=int(meta["num_classes"]), device=device), record

    def infer(self, images: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        check_batch(images, self)
        n = images.shape[0]
        run_n = max(n, self._min_batch)  # static-batch engines: pad the short batch
        host_in = self._host_buffers[INPUT_NAME]
        host_in.numpy()[:n] = images
        if run_n > n:
            host_in.numpy()[n:run_n] = 0
        if not self._context.set_input_shape(INPUT_NAME, (run_n, *images.shape[1:])):
            raise BackendError(
                f"tensorrt: input shape {(run_n, *images.shape[1:])} outside the engine's profile"
            )
        with torch.cuda.stream(self._stream):
            self._device_buffers[INPUT_NAME][:run_n].copy_(host_in[:run_n], non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT errors above)")
            for name in OUTPUT_NAMES:
                self._host_buffers[name][:run_n].copy_(self._device_buffers[name][:run_n], non_blocking=True)
        self._stream.synchronize()
        # Copies: the pinned buffers are reused by the next call.
        labels = self._host_buffers["labels"][:n].numpy().copy()
        confidence = self._host_buffers["confidence"][:n].float().numpy().copy()
        return labels, confidence
