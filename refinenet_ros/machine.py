"""What this machine is and can do: CPU, SIMD/AMX units, measured clock, FP32 peak, versions.

A library module, not part of ``bench``: the backends (OpenVINO's bf16 check, ``auto``'s
measured choice) and ``train`` ask it what the CPU can do, and the benchmarks record it
beside every figure so two runs can be compared.

A GFLOP/s figure means little without the ceiling, so ``bench`` derives the FP32 peak
from what the kernel reports and prints the derivation, not just the number:

    peak = physical cores x FMA units per core x FP32 SIMD lanes x 2 FLOP per FMA x clock

The FMA unit count is not visible in ``/proc/cpuinfo``; it is assumed from the vendor,
family and SIMD flags (see :func:`fma_units_per_core`) and can be overridden
(``--fma-units``, ``--clock-ghz``) when the assumption is wrong for a given part.

The clock is *measured* where it can be (:func:`measure_clock_ghz`): the listed clocks
(cpufreq base, a VM's 'cpu MHz', the model name) are the nominal clock, and the cores run
at all-core turbo above it. On the AVX-512 Xeons we benchmark on (VMs listing 2.6 GHz)
that put a measured sgemm at 122-125 % of the derived "peak": the FLOP count per cycle was
right, the cycles per second were not.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# Distributions whose versions change the figures; missing ones are reported as absent.
VERSIONED_DISTRIBUTIONS: tuple[str, ...] = (
    "refinenet_ros",
    "torch",
    "onnxruntime",
    "openvino",
    "onnx",
    "numpy",
    "opencv-python-headless",
    "rosbags",
    "ray",
    "ros-rclpy",
    "ros-rmw-fastrtps-cpp",
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU facts the FP32 peak is derived from, with where each one came from."""

    model: str
    vendor: str
    family: int | None
    physical_cores: int
    logical_cpus: int
    simd: str
    fp32_lanes: int
    fma: bool
    fma_units: int
    fma_units_source: str
    clock_ghz: float
    clock_source: str
    units: tuple[str, ...] = ()
    """SIMD / matrix units found (:func:`cpu_units`): what bf16 and int8 paths can use."""

    @property
    def peak_gflops(self) -> float:
        """FP32 FLOP/s the cores can issue at ``clock_ghz``, in GFLOP/s."""
        return self.physical_cores * self.fma_units * self.fp32_lanes * 2 * self.clock_ghz

    def derivation(self) -> str:
        """The peak as a formula a reader can check against the CPU's datasheet."""
        op = "FLOP/FMA" if self.fma else "FLOP/cycle (mul + add)"
        return (
            f"{self.physical_cores} cores x {self.fma_units} FMA units x {self.fp32_lanes} FP32 lanes "
            f"({self.simd}) x 2 {op} x {self.clock_ghz:.3f} GHz = {self.peak_gflops:.1f} GFLOP/s "
            f"[clock: {self.clock_source}; FMA units: {self.fma_units_source}]"
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_gflops"] = round(self.peak_gflops, 2)
        d["peak_derivation"] = self.derivation()
        return d


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for raw in text.strip().split("\n\n"):
        block: dict[str, str] = {}
        for line in raw.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def simd_lanes(flags: set[str]) -> tuple[str, int]:
    """Widest FP32 vector extension and its lane count."""
    if "avx512f" in flags:
        return "avx512f", 16
    if "avx2" in flags or "avx" in flags:
        return ("avx2" if "avx2" in flags else "avx"), 8
    if "sse" in flags or "sse2" in flags:
        return "sse", 4
    return "scalar", 1


def fma_units_per_core(vendor: str, family: int | None, simd: str, fma: bool) -> tuple[int, str]:
    """Assumed FP32 FMA pipes per core at the ``simd`` width, and why.

    - AMD Zen 4 (family 0x19 with AVX-512) runs 512-bit ops on its two 256-bit pipes, so it
      retires one 16-lane FMA per cycle: counted as 1 unit of 16 lanes.
    - Every other FMA-capable x86 core since Haswell / Zen 1 (Zen 1 at 128-bit lanes is
      not distinguished) has two FMA pipes at its widest width; some Xeon Silver/Bronze
      parts have one 512-bit unit, which this assumption overestimates by 2x.
    - Without FMA (Sandy/Ivy Bridge, old Atoms) one multiply and one add pipe: counted as
      1 unit doing 2 FLOP per lane per cycle.
    """
    if not fma:
        return 1, "no FMA flag: one multiply + one add pipe assumed"
    if vendor == "AuthenticAMD" and family == 0x19 and simd == "avx512f":
        return 1, "AMD Zen 4: AVX-512 double-pumped on 2x256-bit pipes, counted as 1 x 16 lanes"
    return 2, "assumed 2 FMA pipes per core (Intel Haswell+ / AMD Zen 2+); override with --fma-units"


def _clock_ghz(blocks: list[dict[str, str]], model: str) -> tuple[float, str]:
    """Sustained clock: cpufreq base frequency, else the kernel's 'cpu MHz', else the model name."""
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq/base_frequency")
    try:
        return int(base.read_text().strip()) / 1e6, f"{base} (kHz)"
    except (OSError, ValueError):
        pass
    mhz = [float(b["cpu MHz"]) for b in blocks if "cpu MHz" in b]
    if mhz:
        return max(mhz) / 1e3, "max 'cpu MHz' in /proc/cpuinfo (current clock, no cpufreq here)"
    m = re.search(r"@\s*([0-9.]+)\s*GHz", model)
    if m:
        return float(m.group(1)), "nominal clock in the CPU model name"
    return 0.0, "unknown (pass --clock-ghz)"


CPU_UNITS: tuple[tuple[str, str], ...] = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
    ("amx_fp16", "AMX-FP16"),
)
"""(cpuinfo flag, name) of the units that decide which precisions run natively."""


def cpu_units(flags: frozenset[str] | set[str]) -> tuple[str, ...]:
    """Names of the vector/matrix units in ``flags``, in :data:`CPU_UNITS` order."""
    return tuple(name for flag, name in CPU_UNITS if flag in flags)


def units_line(units: tuple[str, ...]) -> str:
    """'AVX2 AVX-512 AVX512-VNNI; not found: AMX-BF16 AMX-INT8 ...' for the bench header."""
    missing = [name for _, name in CPU_UNITS if name not in units]
    return f"{' '.join(units) or 'none'}" + (f"; not found: {' '.join(missing)}" if missing else "")


# x86-64 System V: uint64 f(uint64 n) { n times: 10 dependent `add rax, 1` }. Each add waits
# for the previous one (1 cycle latency on every x86-64 core), so n*10 cycles take exactly
# n*10 / clock seconds; dec/jnz run beside the chain. lmbench's `mhz` works the same way.
_ADD_CHAIN = bytes.fromhex("31c0" + "4883c001" * 10 + "48ffcf" + "75d3" + "c3")


def _add_chain() -> Any | None:
    """The add-chain loop as a callable, or None off x86-64 Linux / where W+X maps are refused."""
    if platform.machine() not in ("x86_64", "AMD64") or not hasattr(mmap, "PROT_EXEC"):
        return None
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    buf.write(_ADD_CHAIN)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    func = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64)(address)
    func._buffer = buf  # type: ignore[attr-defined]  # keep the page mapped while func lives
    return func


def measure_clock_ghz(
    threads: int | None = None, iterations: int = 100_000, repeats: int = 50
) -> float | None:
    """Sustained core clock in GHz with every usable CPU busy (all-core turbo), or None.

    Runs the add chain on ``threads`` threads at once (ctypes drops the GIL during the
    call) and keeps each thread's fastest repeat: preemption only ever adds time, so the
    fastest run is the clock. Repeats are short (0.3 ms at 3 GHz) and many, so some run
    unpreempted even on a busy machine (a few long repeats would all be preempted there,
    and read a fraction of the clock). The median
    over threads is returned. A scalar chain may run one AVX-512 frequency licence above
    heavy FMA code on older Xeons (Skylake-SP), so the peak is then a little generous,
    never short: "% of peak" stays conservative.
    """
    func = _add_chain()
    if func is None:
        return None
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            threads = os.cpu_count() or 1
    func(1000)  # page in, warm the branch predictor
    best: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        fastest = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            func(iterations)
            fastest = min(fastest, time.perf_counter() - t)
        with lock:
            best.append(fastest)

    pool = [threading.Thread(target=worker) for _ in range(max(1, threads))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = sorted(best)[len(best) // 2]
    return iterations * 10 / seconds / 1e9 if seconds > 0 else None


def cpu_flags(cpuinfo_text: str | None = None) -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = CPUINFO.read_text()
        except OSError:
            return frozenset()
    blocks = [b for b in _cpuinfo_blocks(cpuinfo_text) if "flags" in b]
    return frozenset(blocks[0]["flags"].split()) if blocks else frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX-512 BF16 or AMX-BF16: bf16 matmuls run natively (elsewhere bf16 is emulated, slower)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_info(
    cpuinfo_text: str | None = None,
    *,
    fma_units: int | None = None,
    clock_ghz: float | None = None,
    measure_clock: bool = False,
) -> CpuInfo:
    """Read /proc/cpuinfo (or ``cpuinfo_text``) for the CPUs this process may run on.

    ``measure_clock``: take the clock from :func:`measure_clock_ghz` (what ``bench`` does;
    about 0.1 s) instead of the listed nominal clock, unless ``clock_ghz`` is given.
    """
    if cpuinfo_text is None:
        try:
            cpuinfo_text = CPUINFO.read_text()
        except OSError:
            cpuinfo_text = ""
    blocks = [b for b in _cpuinfo_blocks(cpuinfo_text) if "processor" in b]
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    mine = [b for b in blocks if int(b["processor"]) in allowed] or blocks
    first = mine[0] if mine else {}
    model = first.get("model name", platform.processor() or "unknown")
    vendor = first.get("vendor_id", "unknown")
    family = int(first["cpu family"]) if first.get("cpu family", "").isdigit() else None
    flags = set(first.get("flags", "").split())
    cores = {(b.get("physical id", "0"), b.get("core id", b["processor"])) for b in mine}
    physical = len(cores) if mine else (os.cpu_count() or 1)
    simd, lanes = simd_lanes(flags)
    fma = "fma" in flags
    units, units_source = fma_units_per_core(vendor, family, simd, fma)
    if fma_units is not None:
        units, units_source = fma_units, "given with --fma-units"
    clock, clock_source = _clock_ghz(mine, model)
    if clock_ghz is not None:
        clock, clock_source = clock_ghz, "given with --clock-ghz"
    elif measure_clock:
        measured = measure_clock_ghz()
        if measured is not None:
            clock, clock_source = (
                measured,
                (
                    f"measured: dependent-add chain on every usable CPU at once (all-core turbo); "
                    f"listed {clock:.3f} GHz from {clock_source}"
                ),
            )
    return CpuInfo(
        model=model,
        vendor=vendor,
        family=family,
        physical_cores=physical,
        logical_cpus=len(mine) or (os.cpu_count() or 1),
        simd=simd,
        fp32_lanes=lanes,
        fma=fma,
        fma_units=units,
        fma_units_source=units_source,
        clock_ghz=clock,
        clock_source=clock_source,
        units=cpu_units(flags),
    )


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (``/proc/stat``),
    or None where there is no such file. Two readings give how many cores were busy in
    between, whoever used them: on a shared machine, the figure that says whether a
    benchmark had the cores it assumed."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (total - idle) / hz, total / hz


def busy_cores(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Average busy cores between two :func:`cpu_times` readings (None when unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    cpus = os.cpu_count() or 1
    return round(cpus * (after[0] - before[0]) / (after[1] - before[1]), 2)


def installed_versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """``{distribution: version}``, None where it is not installed."""
    found: dict[str, str | None] = {}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def versions() -> dict[str, str | None]:
    """Installed versions of everything that moves the figures (None: not installed)."""
    return {"python": platform.python_version(), **installed_versions(VERSIONED_DISTRIBUTIONS)}


def machine_info(cpu: CpuInfo) -> dict[str, Any]:
    """Everything about the host a reader needs to compare two benchmark files."""
    mem_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "memory_gib": mem_gib,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu": cpu.to_json(),
    }


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_THREAD_WARNINGS: set[tuple[str, int]] = set()


def bounded_threads(threads: int, setting: str = "--threads") -> int:
    """A requested thread count capped to the cores present, with one warning naming ``setting``.

    More threads than cores never run faster, and absurd counts crash or hang the runtimes
    (a million threads: a segfault in torch, an ONNX Runtime that ignores SIGTERM). 0 (the
    library's default) and counts within the cores pass unchanged; negative counts are the
    caller's to refuse.
    """
    cores = usable_cores()
    if threads <= cores:
        return threads
    if (setting, threads) not in _THREAD_WARNINGS:
        _THREAD_WARNINGS.add((setting, threads))
        import logging

        logging.getLogger("refinenet_ros").warning(
            "%s %d: this process runs on %d cores; using %d threads", setting, threads, cores, cores
        )
    return cores
