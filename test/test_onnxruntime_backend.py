"""ONNX Runtime backend through the public surface: create_backend, Segmenter, the segment CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from refinenet_ros.backends import BackendError, BackendOptions, CalibrationSpec, create_backend
from refinenet_ros.backends.factory import choose_kind, tensorrt_unavailable_reason
from refinenet_ros.backends.onnxruntime_backend import OnnxRuntimeBackend, available_providers
from refinenet_ros.config import ModelConfig
from refinenet_ros.io import read_label_png
from refinenet_ros.samples import sample_images
from refinenet_ros.segmenter import Segmenter

H, W = 64, 96


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def images() -> list[npt.NDArray[np.uint8]]:
    return [img for _, img in sample_images()]


@pytest.fixture(scope="module")
def ort_backend(small_model_cfg: ModelConfig, engine_dir: Path) -> OnnxRuntimeBackend:
    options = BackendOptions(kind="onnxruntime", input_size=(H, W), max_batch=2, engine_dir=str(engine_dir))
    backend = create_backend(small_model_cfg, options)
    assert isinstance(backend, OnnxRuntimeBackend)
    return backend


@pytest.mark.slow
def test_backend_reads_its_contract_from_the_graph(ort_backend: OnnxRuntimeBackend, engine_dir: Path) -> None:
    assert ort_backend.name == "onnxruntime" and ort_backend.device == "cpu"
    assert ort_backend.input_size == (H, W)
    assert ort_backend.max_batch == 2  # dynamic batch axis: the options' limit
    assert ort_backend.num_classes == 21
    assert ort_backend.metadata["model_name"] == "lw_refinenet_mobilenetv2"
    assert ort_backend.path.parent == engine_dir / "onnx"
    labels, conf = ort_backend.infer(np.zeros((2, H, W, 3), np.uint8))
    assert labels.shape == conf.shape == (2, H, W) and conf.dtype == np.float32
    with pytest.raises(BackendError, match="exceeds max_batch 2"):
        ort_backend.infer(np.zeros((3, H, W, 3), np.uint8))
    with pytest.raises(BackendError, match="set network_size to match"):
        ort_backend.infer(np.zeros((1, H + 2, W, 3), np.uint8))


def test_segmenter_labels_agree_with_torch(
    ort_backend: OnnxRuntimeBackend, small_model_cfg: ModelConfig, images: list[npt.NDArray[np.uint8]]
) -> None:
    label_set = small_model_cfg.label_set
    torch_seg = Segmenter(
        create_backend(small_model_cfg, BackendOptions(kind="torch", input_size=(H, W), max_batch=2)),
        label_set,
    )
    ort_seg = Segmenter(ort_backend, label_set)
    ours, ref = ort_seg.segment_batch(images), torch_seg.segment_batch(images)
    for image, a, b in zip(images, ours, ref, strict=True):
        assert a.labels.shape == image.shape[:2]  # back at input resolution
        assert (a.labels == b.labels).mean() >= 0.999
        assert np.abs(a.confidence - b.confidence).max() < 1e-3


@pytest.mark.slow
def test_any_size_graph_when_no_network_size(small_model_cfg: ModelConfig, engine_dir: Path) -> None:
    backend = create_backend(small_model_cfg, BackendOptions(kind="onnxruntime", engine_dir=str(engine_dir)))
    assert backend.input_size is None
    for shape in [(1, 40, 72, 3), (3, 56, 56, 3)]:
        labels, _ = backend.infer(np.zeros(shape, np.uint8))
        assert labels.shape == shape[:3]


@pytest.mark.slow
def test_static_batch_graph_pads_short_batches(small_model_cfg: ModelConfig, tmp_path: Path) -> None:
    from refinenet_ros.backends.onnx_export import ExportSpec, export_onnx

    path = export_onnx(small_model_cfg, ExportSpec(H, W, batch=3), tmp_path / "b3.onnx", verify=False).path
    backend = OnnxRuntimeBackend(path, device="cpu")
    assert backend.max_batch == 3
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    full, _ = backend.infer(batch)
    one, _ = backend.infer(batch[:1])
    assert one.shape == (1, H, W)
    np.testing.assert_array_equal(one[0], full[0])


def test_auto_explains_its_choice(
    small_model_cfg: ModelConfig, engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without a fixed network size TensorRT is never chosen, on any machine.
    kind, why = choose_kind(BackendOptions())
    assert kind == "onnxruntime" and "TensorRT not used" in why
    reason = tensorrt_unavailable_reason()
    if reason is None:
        assert choose_kind(BackendOptions(input_size=(H, W)))[0] == "tensorrt"
    else:
        assert reason in choose_kind(BackendOptions(input_size=(H, W)))[1]
    assert choose_kind(BackendOptions(device="cpu"))[1].endswith("(TensorRT skipped: device cpu)")
    with caplog.at_level("INFO", logger="refinenet_ros"):
        options = BackendOptions(device="cpu", input_size=(H, W), engine_dir=str(engine_dir))
        backend = create_backend(small_model_cfg, options)
    assert backend.name == "onnxruntime"
    line = "backend: onnxruntime fp32 (ONNX Runtime with CPUExecutionProvider (TensorRT skipped"
    assert line in caplog.text
    assert "precision auto: " in caplog.text  # the default precision, resolved and said so


@pytest.mark.skipif(
    "CUDAExecutionProvider" in available_providers() or tensorrt_unavailable_reason() is None,
    reason="this machine has a GPU runtime: the no-GPU errors do not apply",
)
def test_unavailable_devices_and_backends_fail_with_the_fix(
    small_model_cfg: ModelConfig, engine_dir: Path
) -> None:
    with pytest.raises(BackendError, match="install onnxruntime-gpu or use device='cpu'"):
        create_backend(
            small_model_cfg,
            BackendOptions(kind="onnxruntime", device="cuda", input_size=(H, W), engine_dir=str(engine_dir)),
        )
    with pytest.raises(BackendError, match=r"tensorrt backend: .*pip install tensorrt"):
        create_backend(small_model_cfg, BackendOptions(kind="tensorrt", input_size=(H, W)))


def test_missing_onnx_file_is_a_clear_error(small_model_cfg: ModelConfig, engine_dir: Path) -> None:
    with pytest.raises(BackendError, match="no such file"):
        create_backend(
            small_model_cfg, BackendOptions(kind="onnxruntime", onnx=str(engine_dir / "nope.onnx"))
        )


@pytest.mark.slow
def test_int8_quantised_graph_runs_and_is_cached(small_model_cfg: ModelConfig, tmp_path: Path) -> None:
    import onnx

    frames = tmp_path / "calib"
    frames.mkdir()
    for i, (_, img) in enumerate(sample_images()):
        cv2.imwrite(str(frames / f"{i}.png"), img[..., ::-1])
    options = BackendOptions(
        kind="onnxruntime", precision="int8", input_size=(H, W), max_batch=1,
        engine_dir=str(tmp_path / "eng"), calibration=CalibrationSpec(images=str(frames), count=4),
    )  # fmt: skip
    backend = create_backend(small_model_cfg, options)
    assert isinstance(backend, OnnxRuntimeBackend) and "_int8_" in backend.path.name
    model = onnx.load(str(backend.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert backend.metadata["precision"] == "int8" and backend.num_classes == 21
    labels, _ = backend.infer(np.zeros((1, H, W, 3), np.uint8))
    assert labels.shape == (1, H, W) and labels.min() >= 0 and labels.max() < 21
    mtime = backend.path.stat().st_mtime_ns
    again = create_backend(small_model_cfg, options)
    assert isinstance(again, OnnxRuntimeBackend)
    assert again.path == backend.path and again.path.stat().st_mtime_ns == mtime
    with pytest.raises(BackendError, match="fixed network size"):
        create_backend(
            small_model_cfg, BackendOptions(kind="onnxruntime", precision="int8", engine_dir=str(tmp_path))
        )


@pytest.mark.slow
def test_segment_cli_with_onnxruntime_matches_torch(
    tmp_path: Path, images: list[npt.NDArray[np.uint8]], small_model_cfg: ModelConfig
) -> None:
    rgb = np.ascontiguousarray(cv2.resize(images[1], (W, H)), dtype=np.uint8)
    img = tmp_path / "in" / "chelsea.png"
    img.parent.mkdir()
    cv2.imwrite(str(img), rgb[..., ::-1])
    exe = str(Path(sys.executable).with_name("refinenet-ros"))
    proc = subprocess.run(
        [exe, "segment", str(img), "--model", "lw_refinenet_mobilenetv2", "--labels", "voc",
         "--backend", "onnxruntime", "--engine-dir", str(tmp_path / "eng"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "backend: onnxruntime fp32 (asked for" in proc.stderr
    assert list((tmp_path / "eng" / "onnx").glob("*.onnx"))  # the export went to the cache
    labels = read_label_png(tmp_path / "out" / "chelsea_labels.png")
    torch_seg = Segmenter(
        create_backend(small_model_cfg, BackendOptions(kind="torch")), small_model_cfg.label_set
    )
    assert (labels == torch_seg(rgb).labels).mean() >= 0.999
