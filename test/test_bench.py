"""``refinenet-ros bench``: tiny configurations end-to-end, checking the documented JSON keys.

No timing is asserted (the machine is shared); only that every figure is present, finite
where it must be, and consistent with the others.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from refinenet_ros.bench_machine import cpu_info, fma_units_per_core, simd_lanes
from refinenet_ros.cli import main

INTEL_AVX512 = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model name	: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id	: 0
core id		: 0
flags		: fpu sse sse2 avx fma avx2 avx512f

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model name	: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id	: 0
core id		: 0
flags		: fpu sse sse2 avx fma avx2 avx512f
"""


def test_peak_derivation_from_cpuinfo_text() -> None:
    # Two hyperthreads of one core count once; the clock comes from the model name when
    # neither cpufreq nor 'cpu MHz' says otherwise (overridden here to stay host-independent).
    cpu = cpu_info(INTEL_AVX512, clock_ghz=2.5)
    if cpu.logical_cpus == 2:  # this process may run on CPUs 0 and 1
        assert cpu.physical_cores == 1
    assert (cpu.simd, cpu.fp32_lanes, cpu.fma, cpu.fma_units) == ("avx512f", 16, True, 2)
    assert cpu.peak_gflops == pytest.approx(cpu.physical_cores * 2 * 16 * 2 * 2.5)
    text = cpu.derivation()
    assert "FMA units" in text and "16 FP32 lanes" in text and "GFLOP/s" in text
    assert cpu_info(INTEL_AVX512, fma_units=1, clock_ghz=2.5).peak_gflops == pytest.approx(
        cpu.peak_gflops / 2
    )


def test_simd_and_fma_assumptions() -> None:
    assert simd_lanes({"sse", "sse2", "avx", "avx2", "fma"}) == ("avx2", 8)
    assert simd_lanes({"sse", "sse2"}) == ("sse", 4)
    assert fma_units_per_core("AuthenticAMD", 0x19, "avx512f", True)[0] == 1  # Zen 4
    assert fma_units_per_core("AuthenticAMD", 0x19, "avx2", True)[0] == 2  # Zen 3
    assert fma_units_per_core("GenuineIntel", 6, "avx", False)[0] == 1


def test_this_machine_has_a_peak() -> None:
    cpu = cpu_info()
    assert cpu.physical_cores >= 1 and cpu.fp32_lanes >= 1
    assert cpu.peak_gflops > 0, cpu.derivation()


def test_bench_model_writes_documented_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "model.json"
    rc = main([
        "bench", "model", "--model", "lw_refinenet_mobilenetv2", "--labels", "voc",
        "--resolution", "96x64", "--batch", "1", "2", "--iterations", "2", "--warmup", "1",
        "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "FP32 peak" in stdout and "GFLOP/s" in stdout and "96x64" in stdout
    doc = json.loads(out.read_text())
    assert not list(out.parent.glob(".*.tmp")), "atomic write left a temp file"
    assert doc["benchmark"] == "model"
    cpu = doc["machine"]["cpu"]
    assert cpu["peak_gflops"] > 0 and "GFLOP/s" in cpu["peak_derivation"]
    assert doc["versions"]["torch"] and doc["versions"]["python"]
    assert doc["settings"]["model"] == "lw_refinenet_mobilenetv2"
    assert doc["settings"]["resolutions"] == ["96x64"]
    rows = doc["results"]
    assert [(r["batch"], r["width"], r["height"]) for r in rows] == [(1, 96, 64), (2, 96, 64)]
    flops = {r["gflop_per_image"] for r in rows}
    assert len(flops) == 1 and 0.05 < flops.pop() < 5  # same network, same size
    for r in rows:
        assert "error" not in r
        assert r["backend"] == "torch" and r["precision"] == "fp32" and r["iterations"] == 2
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"]
        assert r["throughput_fps"] > 0
        assert r["gflops"] > 0 and r["peak_fraction"] > 0
        # achieved GFLOP/s is the FLOP count over the median call time
        expected = r["gflop_per_image"] * r["batch"] / (lat["p50"] / 1e3)
        assert math.isclose(r["gflops"], expected, rel_tol=0.02, abs_tol=0.1)


def test_bench_rejects_bad_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "model", "--resolution", "640by480"])
    assert exc.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
