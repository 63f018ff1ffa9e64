"""User mistakes on the command line: one line naming the flag, exit 2, before any slow work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "refinenet_ros"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240, env=dict(os.environ))


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--network-size", "100000", "100000"], ["--network-size", "32..8192"]),
        (["--network-size", "8", "8"], ["--network-size"]),
        (["--threads", "-1"], ["--threads"]),
    ],
    ids=["absurd-size", "tiny-size", "threads"],
)
def test_backend_options_are_checked_before_any_model_work(args: list[str], needles: list[str]) -> None:
    one_line_error(run_cli("segment", "--samples", *args), *needles)


def test_the_backends_advice_names_the_flag_on_the_command_line_and_the_keyword_in_python() -> None:
    """One refusal of the library, in each caller's words: ``--backend openvino`` for the
    command line, ``backend='openvino'`` for :func:`refinenet_ros.load`."""
    proc = run_cli("segment", "--samples", "--backend", "onnxruntime", "--precision", "bf16")
    one_line_error(proc, "bf16 runs on --backend openvino on CPUs")
    import refinenet_ros
    from refinenet_ros.errors import RefineNetRosError

    with pytest.raises(RefineNetRosError, match=r"bf16 runs on backend='openvino' on CPUs"):
        refinenet_ros.load(backend="onnxruntime", precision="bf16")


@pytest.mark.slow
def test_engine_dir_under_a_file_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(run_cli("segment", "--samples", "--engine-dir", str(blocker / "cache")), "--engine-dir")


@pytest.mark.slow
def test_random_bytes_checkpoint_never_suggests_unsafe_loading(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    proc = run_cli(
        "segment", "--samples", "--weights", str(junk), "--backend", "torch", "--out", str(tmp_path / "o")
    )

    one_line_error(proc, "not a PyTorch checkpoint")
    assert "weights_only" not in proc.stderr


@pytest.mark.slow
def test_export_out_that_is_a_folder(tmp_path: Path) -> None:
    proc = run_cli("export", "--network-size", "64", "64", "--out", str(tmp_path))
    one_line_error(proc, "--out", "folder")


# Cheap checks come before slow work: each fails in one line, before any model
# export or engine build (the commands would take seconds to minutes to get there).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["segment", "--samples", "--weights", "camvid", "--labels", "voc"], ["--labels voc", "11"]),
        (["bag", "in", "out", "--image-topic", "/c", "--outputs", "labels,colour"], ["'colour'", "overlay"]),
        (["evaluate", "--images", "."], ["--images and --labels-dir go together"]),
        (["train", "--images", ".", "--labels-dir", ".", "--val-images", "."], ["--val-labels-dir"]),
        (
            ["build-engine", "--weights", "camvid", "--validate", "/nonexistent"],
            ["--validate", "no such folder"],
        ),
        (["build-engine", "--onnx", "/nonexistent.onnx"], ["--onnx", "no such file"]),
        (["export", "--weights", "random", "--out", "m.onnx"], ["--network-size H W"]),
    ],
    ids=["labels-vs-weights", "outputs", "images-without-labels-dir", "val-pair", "validate", "onnx", "size"],
)
def test_cheap_checks_fail_first_naming_the_flag(args: list[str], needles: list[str]) -> None:
    one_line_error(run_cli(*args), *needles)


def _without_root_file_access() -> None:
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so a
    root test run is refused a mode-000 file like any user (the exec'd CLI keeps its uid)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


@pytest.mark.slow
def test_an_unreadable_image_says_permission_denied(tmp_path: Path) -> None:
    """An image the user may not read says "Permission denied", not "not an image OpenCV can read"."""
    image = tmp_path / "locked.png"
    image.write_bytes((Path(__file__).parent.parent / "docs" / "demo.png").read_bytes())
    image.chmod(0)
    args = ["segment", str(image), "--out", str(tmp_path / "out"), "--weights", "random",
            "--backend", "torch", "--network-size", "64", "64"]  # fmt: skip
    proc = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=240, env=dict(os.environ),
        preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    expected = f"refinenet-ros segment: error: {image}: cannot be read (Permission denied)"
    assert errors == [expected], proc.stderr
    assert "Traceback" not in proc.stderr and "OpenCV" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_absurd_threads_are_capped_to_the_cores_with_a_warning(tmp_path: Path, backend: str) -> None:
    """--threads 1000000 segfaulted torch and hung ONNX Runtime (SIGKILL needed)."""
    proc = run_cli("segment", "--samples", "--weights", "random", "--network-size", "64", "64",
                   "--backend", backend, "--threads", "1000000", "--out", str(tmp_path / "o"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    cores = len(os.sched_getaffinity(0))
    assert f"threads 1000000: this process runs on {cores} cores; using {cores} threads" in proc.stderr
