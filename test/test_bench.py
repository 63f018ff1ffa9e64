"""``refinenet-ros bench``: tiny configurations end-to-end, checking the documented JSON keys.

No timing is asserted (the machine is shared); only that every figure is present, finite
where it must be, and consistent with the others.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from refinenet_ros.cli import main
from refinenet_ros.machine import cpu_info, fma_units_per_core, simd_lanes

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


def test_this_machines_clock_is_found_so_bench_can_state_a_peak() -> None:
    """Without a clock the peak is unknown and ``bench model`` cannot say how far from it a
    model runs; on Linux it comes from cpufreq, /proc/cpuinfo or the CPU's model name."""
    cpu = cpu_info()
    assert cpu.clock_ghz > 0 and "unknown" not in cpu.clock_source, cpu.derivation()


@pytest.mark.slow
def test_bench_model_writes_documented_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "model.json"
    rc = main([
        "bench", "model", "--model", "lw_refinenet_mobilenetv2", "--labels", "voc", "--backend", "torch",
        "--network-size", "64", "96", "--batch", "1", "2", "--iterations", "2", "--warmup", "1",
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
    assert doc["gemm_gflops_best"] > 0 and doc["gemm_peak_fraction"] > 0
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
        assert r["gflops_best"] >= r["gflops"] and r["peak_fraction_best"] >= r["peak_fraction"]
        # achieved GFLOP/s is the FLOP count over the median call time
        expected = r["gflop_per_image"] * r["batch"] / (lat["p50"] / 1e3)
        assert math.isclose(r["gflops"], expected, rel_tol=0.02, abs_tol=0.1)


def test_bench_rejects_a_bad_network_size_while_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "model", "--network-size", "640by480", "480"])
    assert exc.value.code == 2
    assert "'640by480' is not a whole number of pixels" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_bag_writes_documented_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bag.json"
    keep = tmp_path / "bags"
    rc = main([
        "bench", "bag", "--model", "lw_refinenet_mobilenetv2", "--backend", "torch",
        "--image-size", "64", "96", "--frames", "4", "--batch", "2", "--keep", str(keep), "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    assert "bag tool" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "bag" and doc["machine"]["cpu"]["peak_gflops"] > 0
    bag = doc["bag"]
    assert bag["frames"] == 4 and bag["malformed"] == 0 and bag["frame_size"] == "96x64"
    assert bag["backend"] == "torch" and bag["batch"] == 2
    for key in ("backend_only_fps", "segmenter_fps", "bag_fps"):
        assert bag[key] > 0, key
    assert bag["bag_vs_backend"] == pytest.approx(bag["bag_fps"] / bag["backend_only_fps"], rel=0.01)
    # the bag tool really ran: its output bag exists beside the generated input
    assert (keep / "input_bag").is_dir() and (keep / "output_bag").is_dir()
    assert bag["written"] == 4 * 5  # labels, color, overlay, confidence, labels/camera_info per frame


@pytest.mark.slow
def test_bench_fleet_writes_documented_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fleet's goals, measured: bag in series, fleet with 1 and 2 workers, on 2 tiny bags."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'refinenet_ros[fleet]')")
    import ray

    if ray.is_initialized():  # another test's Ray: the bench would time no start-up
        pytest.skip("a Ray instance is already running in this process")
    # Ray gives its raylet 30 s to register; a busy machine can take longer (as in test_fleet).
    monkeypatch.setenv("RAY_agent_register_timeout_ms", "120000")
    out = tmp_path / "fleet.json"
    rc = main([
        "bench", "fleet", "--weights", "random", "--backend", "torch", "--network-size", "32", "32",
        "--image-size", "32", "48", "--bags", "2", "--frames", "3", "--json", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    if rc == 2 and "Ray did not start" in captured.err:
        pytest.skip(f"embedded Ray did not start on this busy machine: {captured.err.strip()}")
    assert rc == 0, captured.err[-2000:]
    assert "fleet 1 worker / bag" in captured.out and "goal >= 1.7x" in captured.out
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "fleet" and doc["machine"]["cpu"]["peak_gflops"] > 0
    assert doc["settings"]["workers"] == [1, 2] and doc["settings"]["threads_per_worker"] == 1
    fleet = doc["fleet"]
    assert fleet["frames"] == 6 and fleet["ray_start_s"] > 0
    for name in ("bag", "fleet_1", "fleet_2"):
        run = fleet[name]
        assert run["frames"] == 6, name
        assert run["total_fps"] > 0 and run["steady_fps"] >= run["total_fps"], name
        assert "busy_cores" in run and "load_1m_before" in run, name  # whether it had the cores
    assert fleet["fleet_1"]["workers"] == 1 and fleet["fleet_2"]["workers"] == 2
    # on 3-frame bags the first worker may finish both before the second has loaded its model
    assert fleet["fleet_1"]["workers_used"] == 1 and 1 <= fleet["fleet_2"]["workers_used"] <= 2
    assert fleet["fleet_2"]["startup_s"] > 0 and fleet["fleet_2"]["total_with_ray_fps"] > 0
    goals = fleet["goals"]
    assert goals["fleet1_vs_bag"]["goal"] == 0.9 and goals["fleet2_vs_fleet1"]["goal"] == 1.7
    one = goals["fleet1_vs_bag"]
    assert one["steady"] == pytest.approx(
        fleet["fleet_1"]["steady_fps"] / fleet["bag"]["steady_fps"], rel=0.01
    )
    assert one["met"] == (one["steady"] >= 0.9)
    assert not ray.is_initialized(), "the bench started Ray, so it must shut it down"


@pytest.mark.ros
@pytest.mark.slow
def test_bench_node_writes_documented_json(tmp_path: Path) -> None:
    """The real node executable over SHM-only DDS in a domain of this test's own."""
    import os
    import subprocess
    import sys

    out = tmp_path / "node.json"
    domain = 100 + (os.getpid() + 37) % 100
    cmd = [
        str(Path(sys.executable).with_name("refinenet-ros")), "bench", "node",
        "--model", "lw_refinenet_mobilenetv2",
        "--labels", "voc", "--backend", "torch", "--image-size", "64", "96", "--frames", "5",
        "--outputs", "labels,overlay", "--domain-id", str(domain), "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "node overhead" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "node"
    assert doc["settings"]["transport"].startswith("SHM")
    node = doc["node"]
    assert set(node["latency_ms"]) >= {"p50", "p95", "p99"}
    assert set(node["backend_ms"]) >= {"p50", "p95"} and set(node["overhead_ms"]) >= {"p50", "p95"}
    assert node["frames_published"] == 5 and node["frames_received"] + node["drops"] == 5
    assert node["frames_received"] >= 1 and node["fps"] > 0
    assert node["diagnostics_received"], node.get("node_log_tail")
    assert node["node_backend"] == "torch"
    assert 0 < node["latency_ms"]["p50"] <= node["latency_ms"]["p95"] <= node["latency_ms"]["p99"]
    assert node["backend_ms"]["p50"] > 0
    # overhead is end-to-end minus the node's own inference time, per percentile
    for q in ("p50", "p95"):
        assert node["overhead_ms"][q] == pytest.approx(
            node["latency_ms"][q] - node["backend_ms"][q], abs=0.02
        )
    assert node["outputs"] == ["labels", "overlay"]
    stages = node["stages_ms"]
    assert set(stages) == {"decode", "preprocess", "infer", "postprocess", "render", "publish"}
    assert stages["render"]["p50"] > 0 and stages["publish"]["p50"] > 0  # overlay drawn, two publishes


@pytest.mark.parametrize("name", ["voc", "cityscapes", "ade20k"])
def test_fast_colorize_matches_the_palette_lookup(name: str) -> None:
    """The cv2.LUT path the benchmark motivated gives exactly the palette lookup, for
    every uint8 value (ignore index and out-of-range included), into fresh, message-like
    and strided buffers, and the int32 fallback agrees."""
    import numpy as np

    from refinenet_ros.labels import colorize, get_label_set

    ls = get_label_set(name)
    labels = np.random.default_rng(3).integers(0, 256, (37, 53), dtype=np.uint8)
    expected = ls.lut()[labels]
    np.testing.assert_array_equal(colorize(labels, ls), expected)
    buf = bytearray(labels.size * 3)  # what a reused Image message's data looks like
    view = np.frombuffer(buf, np.uint8).reshape(37, 53, 3)
    assert colorize(labels, ls, out=view) is view
    np.testing.assert_array_equal(view, expected)
    strided = np.zeros((37, 106, 3), np.uint8)[:, ::2]
    colorize(labels, ls, out=strided)
    np.testing.assert_array_equal(strided, expected)
    np.testing.assert_array_equal(colorize(labels.astype(np.int32), ls), expected)
    np.testing.assert_array_equal(colorize(labels[:, ::3], ls), expected[:, ::3])


def test_cpu_units_are_named_from_the_flags() -> None:
    from refinenet_ros.machine import cpu_units, units_line

    units = cpu_info(INTEL_AVX512, clock_ghz=2.5).units
    assert units == ("AVX2", "AVX-512")
    amx = cpu_units({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    assert amx == ("AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX-BF16", "AMX-INT8")
    line = units_line(units)
    assert line.startswith("AVX2 AVX-512; not found:") and "AMX-BF16" in line and "AMX-INT8" in line


def test_the_peak_uses_the_measured_all_core_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # The listed clock is nominal: on AVX-512 VMs listing 2.6 GHz sgemm ran at 122-125 % of
    # the peak derived from it. The measured clock replaces it, and says where it came from.
    from refinenet_ros import machine

    measured = machine.measure_clock_ghz(iterations=20_000, repeats=20)
    if measured is not None:  # x86-64 Linux: a dependent add chain, 1 cycle per add
        assert 0.3 < measured < 7.0, measured
    monkeypatch.setattr(machine, "measure_clock_ghz", lambda *a, **k: 3.25)
    cpu = cpu_info(INTEL_AVX512, measure_clock=True)
    assert cpu.clock_ghz == 3.25 and cpu.clock_source.startswith("measured")
    assert cpu.peak_gflops == pytest.approx(cpu.physical_cores * 2 * 16 * 2 * 3.25)
    assert cpu_info(INTEL_AVX512, clock_ghz=2.5, measure_clock=True).clock_ghz == 2.5  # the override wins


@pytest.mark.slow
def test_bench_model_runs_openvino_and_says_why_bf16_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from refinenet_ros.machine import cpu_has_native_bf16

    out = tmp_path / "model.json"
    rc = main([
        "bench", "model", "--model", "lw_refinenet_mobilenetv2", "--labels", "voc", "--weights", "random",
        "--backend", "onnxruntime", "openvino", "--precision", "fp32", "bf16", "--network-size", "64", "96",
        "--iterations", "2", "--warmup", "1", "--device", "cpu", "--engine-dir", str(tmp_path / "cache"),
        "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "CPU units: " in stdout
    rows = {(r["backend"], r["precision"]): r for r in json.loads(out.read_text())["results"]}
    assert ("onnxruntime", "bf16") not in rows  # no such path: skipped, not an error row
    assert rows[("openvino", "fp32")]["pixel_agreement"] >= 0.999
    if cpu_has_native_bf16():
        assert "latency_ms" in rows[("openvino", "bf16")]
    else:
        assert "AVX-512-BF16 or AMX-BF16" in rows[("openvino", "bf16")]["error"]
    assert json.loads(out.read_text())["machine"]["cpu"]["units"]
