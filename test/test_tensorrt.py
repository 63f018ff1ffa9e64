"""TensorRT engines on a real GPU (skipped with the reason elsewhere), and the no-GPU behaviour.

Never fakes TensorRT: the GPU tests run only where ``tensorrt_unavailable_reason()`` is
None (a real TensorRT 10 runtime and a CUDA device); everywhere else they are skipped
with that reason, and the tests below them check what a user without a GPU sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refinenet_ros.backends import BackendError, BackendOptions, create_backend
from refinenet_ros.backends.factory import tensorrt_unavailable_reason
from refinenet_ros.config import ModelConfig

REASON = tensorrt_unavailable_reason()
needs_gpu = pytest.mark.skipif(REASON is not None, reason=f"TensorRT GPU test: {REASON}")
H, W = 64, 96


def _images(n: int) -> np.ndarray:
    import cv2

    from refinenet_ros.samples import sample_images

    return np.stack([cv2.resize(img, (W, H)) for _, img in sample_images()][:n])


@pytest.mark.gpu
@needs_gpu
def test_engine_builds_runs_and_matches_onnxruntime(small_model_cfg: ModelConfig, tmp_path: Path) -> None:
    options = BackendOptions(
        kind="tensorrt", input_size=(H, W), max_batch=2, engine_dir=str(tmp_path), precision="fp32"
    )
    trt_backend = create_backend(small_model_cfg, options)
    ort_options = BackendOptions(
        kind="onnxruntime", device="cpu", input_size=(H, W), max_batch=2, engine_dir=str(tmp_path)
    )
    ort_backend = create_backend(small_model_cfg, ort_options)
    assert trt_backend.name == "tensorrt" and trt_backend.device.startswith("cuda")
    assert trt_backend.input_size == (H, W) and trt_backend.max_batch == 2 and trt_backend.num_classes == 21
    images = _images(4)
    for start in (0, 2):  # batch of 2, twice: reused buffers must not leak between calls
        labels, conf = trt_backend.infer(images[start : start + 2])
        ref_labels, ref_conf = ort_backend.infer(images[start : start + 2])
        assert labels.shape == (2, H, W) and conf.dtype == np.float32
        assert (labels == ref_labels).mean() >= 0.995
        assert np.abs(conf - ref_conf).max() < 1e-2
    one, _ = trt_backend.infer(images[:1])  # batch 1 inside a 1..2 profile
    assert one.shape == (1, H, W)
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    meta = json.loads(engines[0].with_suffix(".json").read_text())
    assert meta["key"]["precision"] == "fp32" and meta["key"]["max_batch"] == 2


@pytest.mark.gpu
@needs_gpu
def test_second_start_reuses_the_engine_and_corrupt_engine_is_rebuilt(
    small_model_cfg: ModelConfig, tmp_path: Path
) -> None:
    from refinenet_ros.backends.factory import onnx_for
    from refinenet_ros.backends.tensorrt import TensorRTBackend

    options = BackendOptions(
        kind="tensorrt", input_size=(H, W), max_batch=1, engine_dir=str(tmp_path), precision="fp16"
    )
    onnx_path = onnx_for(small_model_cfg, options)
    _, first = TensorRTBackend.load_or_build(onnx_path, options)
    assert first.built
    _, second = TensorRTBackend.load_or_build(onnx_path, options)
    assert not second.built and second.engine_path == first.engine_path
    # Corrupt the engine but keep its checksum consistent: only TensorRT can notice.
    engine = first.engine_path
    data = bytearray(engine.read_bytes())
    data[16:48] = b"\0" * 32
    engine.write_bytes(bytes(data))
    meta_path = engine.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    import hashlib

    meta["engine_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    meta_path.write_text(json.dumps(meta))
    _, third = TensorRTBackend.load_or_build(onnx_path, options)
    assert third.built and "deserialisation failed" in third.reason
    assert engine.with_name(engine.name + ".bad").exists()


@pytest.mark.gpu
@needs_gpu
def test_build_engine_cli_validates_against_onnxruntime(tmp_path: Path) -> None:
    from refinenet_ros.cli import main

    model = ["--model", "lw_refinenet_mobilenetv2", "--labels", "voc", "--network-size", str(H), str(W)]
    rc = main(
        [
            "build-engine",
            *model,
            "--precision",
            "fp16",
            "--engine-dir",
            str(tmp_path),
            "--validate",
            "samples",
        ]
    )
    assert rc == 0
    assert list(tmp_path.glob("*.engine"))


@pytest.mark.slow
@pytest.mark.skipif(REASON is None, reason="TensorRT is available here: the no-GPU message does not apply")
def test_without_tensorrt_build_engine_fails_with_one_clear_line(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).with_name("refinenet-ros"))
    proc = subprocess.run(
        [exe, "build-engine", "--model", "lw_refinenet_mobilenetv2", "--network-size", "64", "64"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs TensorRT 10 and a CUDA GPU" in lines[0]
    assert "JetPack" in lines[0] and "pip install tensorrt" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "engines").exists()  # nothing exported or written on the way


@pytest.mark.skipif(REASON is None, reason="TensorRT is available here")
def test_without_tensorrt_the_backend_refuses_and_auto_falls_back(small_model_cfg: ModelConfig) -> None:
    assert REASON is not None
    with pytest.raises(BackendError, match="tensorrt backend: "):
        create_backend(small_model_cfg, BackendOptions(kind="tensorrt", input_size=(H, W)))
