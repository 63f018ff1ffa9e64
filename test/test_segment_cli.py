"""`refinenet-ros segment`: the demo's main job until the node demo, and a user tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from refinenet_ros.io import read_label_png

CLI = [sys.executable, "-m", "refinenet_ros"]
SMALL = ["--model", "lw_refinenet_mobilenetv2", "--labels", "voc", "--backend", "torch"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240, env=dict(os.environ))


@pytest.mark.slow
def test_segment_writes_labels_color_overlay_confidence_per_image(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "b.jpg"), rng.integers(0, 256, (41, 33, 3), dtype=np.uint8))
    out = tmp_path / "out"
    proc = run_cli("segment", str(images), "--out", str(out), *SMALL)
    assert proc.returncode == 0, proc.stderr
    # one honest line about random weights, once per run
    assert proc.stderr.count("seeded random weights") == 1
    assert "labels are meaningless" in proc.stderr
    for name, (h, w) in {"a": (50, 70), "b": (41, 33)}.items():
        with Image.open(out / f"{name}_labels.png") as img:
            assert img.mode == "P" and img.size == (w, h)
        labels = read_label_png(out / f"{name}_labels.png")
        assert labels.max() < 21
        color = cv2.imread(str(out / f"{name}_color.png"))
        overlay = cv2.imread(str(out / f"{name}_overlay.png"))
        confidence = cv2.imread(str(out / f"{name}_confidence.png"), cv2.IMREAD_UNCHANGED)
        assert color is not None and color.shape == (h, w, 3)
        assert overlay is not None and overlay.shape == (h, w, 3)
        assert confidence is not None and confidence.shape == (h, w)
        assert f"{name}: {w}x{h} -> " in proc.stdout and " ms " in proc.stdout
    assert "2 images ->" in proc.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.mark.slow
def test_segment_bundled_samples_at_a_network_size(tmp_path):
    proc = run_cli("segment", "--samples", "--out", str(tmp_path), "--network-size", "64", "64", *SMALL)
    assert proc.returncode == 0, proc.stderr
    # labels come back at each sample's own resolution (astronaut is 512x512)
    assert read_label_png(tmp_path / "astronaut_labels.png").shape == (512, 512)
    assert len(list(tmp_path.glob("*_labels.png"))) == 4


@pytest.mark.slow
def test_segment_user_errors_exit_2_with_one_clear_line(tmp_path):
    missing = run_cli("segment", str(tmp_path / "nope.png"), "--out", str(tmp_path))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_model = run_cli("segment", "--samples", "--model", "segnet")
    assert bad_model.returncode == 2 and "unknown --model 'segnet'" in bad_model.stderr
    bad_labels = run_cli("segment", "--samples", "--labels", "kitti")
    assert bad_labels.returncode == 2 and "unknown label set 'kitti'" in bad_labels.stderr
    not_image = tmp_path / "x.png"
    not_image.write_text("hello")
    proc = run_cli("segment", str(not_image), "--out", str(tmp_path / "o"), *SMALL)
    assert proc.returncode == 2 and "not an image" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("segment", str(empty))
    assert proc.returncode == 2 and "holds no images" in proc.stderr


@pytest.mark.slow
def test_segment_with_weights_loads_them_and_drops_the_random_warning(tmp_path):
    from refinenet_ros.models import IMAGENET_MEAN, IMAGENET_STD, build_model, save_checkpoint

    ckpt = tmp_path / "model.pth"
    model = build_model("lw_refinenet_mobilenetv2", 7, seed=5)
    save_checkpoint(
        ckpt, model, model_name="lw_refinenet_mobilenetv2", label_set="person_part", num_classes=7,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, network_size=None,
    )  # fmt: skip
    img = tmp_path / "p.png"
    cv2.imwrite(str(img), np.full((40, 40, 3), 128, np.uint8))
    # model and label set come from the checkpoint's metadata
    proc = run_cli(
        "segment", str(img), "--out", str(tmp_path / "o"), "--weights", str(ckpt), "--backend", "torch"
    )
    assert proc.returncode == 0, proc.stderr
    assert "random weights" not in proc.stderr
    assert read_label_png(Path(tmp_path / "o" / "p_labels.png")).max() < 7


@pytest.mark.slow
def test_random_weights_are_announced_even_when_the_onnx_graph_is_cached(tmp_path):
    """A cached graph skips building the model; the user must still be told, once."""
    img = tmp_path / "p.png"
    cv2.imwrite(str(img), np.full((32, 48, 3), 90, np.uint8))
    args = ["segment", str(img), "--out", str(tmp_path / "o"), "--backend", "onnxruntime"]
    args += ["--engine-dir", str(tmp_path / "engines"), "--network-size", "32", "48", "--weights", "random"]
    for _ in range(2):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.count("seeded random weights") == 1
    assert list((tmp_path / "engines" / "onnx").glob("*.onnx")), "second run should reuse the cache"


@pytest.mark.slow
def test_same_named_inputs_and_bad_out_are_one_line_errors(tmp_path):
    """Inputs that would write the same result (`d1/x.png d2/x.png`), and `--out` a file or
    under a file, are one-line errors."""
    rng = np.random.default_rng(1)
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        cv2.imwrite(str(tmp_path / d / "x.png"), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    out = tmp_path / "out"
    proc = run_cli("segment", str(tmp_path / "d1" / "x.png"), str(tmp_path / "d2"), "--out", str(out), *SMALL)
    assert proc.returncode == 2 and "would both write x_*.png" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    same = run_cli("segment", str(tmp_path / "d1" / "x.png"), str(tmp_path / "d1"), "--out", str(out), *SMALL)
    assert same.returncode == 0 and "1 images ->" in same.stdout, same.stderr  # one file given twice
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    proc = run_cli("segment", str(tmp_path / "d1"), "--out", str(a_file), *SMALL)
    assert proc.returncode == 2 and "is a file; give a folder" in proc.stderr
    proc = run_cli("segment", str(tmp_path / "d1"), "--out", str(a_file / "sub"), *SMALL)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("refinenet-ros segment: error: "), proc.stderr
    assert "not a directory" in err[-1] and "Traceback" not in proc.stderr
