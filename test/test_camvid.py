"""The trained default: CamVid data, ImageNet initialisation, bundled weights, load() API.

Tests that read the real data (../shared/data, never committed) skip with the reason
where it is absent, as in a user's fresh clone. The bundled-weights tests need no data
beyond what the package ships, except the accuracy check on real val frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CAMVID = DATA / "camvid"
TFLITE = DATA / "imagenet" / "mobilenet_v2_1.0_224_quant.tflite"
CLI = [sys.executable, "-m", "refinenet_ros"]

needs_camvid = pytest.mark.skipif(
    not (CAMVID / "val").is_dir(), reason=f"CamVid is not here ({CAMVID}); it is read in place, never shipped"
)
needs_tflite = pytest.mark.skipif(
    not TFLITE.is_file(), reason=f"the ImageNet MobileNetV2 TFLite file is not here ({TFLITE})"
)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=280, env=dict(os.environ), cwd=cwd
    )


def val_frames(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from refinenet_ros.training.datasets import open_dataset

    ds = open_dataset("camvid", CAMVID, "val")
    step = len(ds) // n  # spread over the sequence, not n neighbouring frames
    return [ds[i * step] for i in range(n)]


# ------------------------------------------------------------------------------ data set


@needs_camvid
def test_camvid_reader_splits_and_ignores_unlabelled() -> None:
    from refinenet_ros.labels import IGNORE_INDEX, get_label_set
    from refinenet_ros.training.datasets import open_dataset

    train = open_dataset("camvid", CAMVID, "train")
    val = open_dataset("camvid", CAMVID, "val")
    assert (len(train), len(val)) == (367, 101)
    assert len(open_dataset("camvid", CAMVID, "train+val")) == 468
    image, label = val[0]
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    values = set(np.unique(label).tolist())
    assert values <= set(range(11)) | {IGNORE_INDEX}
    assert IGNORE_INDEX in values, "class 11 (unlabelled) must read as the ignore index"
    assert get_label_set("camvid").classes[3] == "road"


def test_camvid_reader_names_a_missing_split(tmp_path: Path) -> None:
    proc = run_cli("evaluate", "--dataset", "camvid", "--root", str(tmp_path), "--split", "test",
                   "--weights", "random")  # fmt: skip
    assert proc.returncode == 2
    assert "camvid test images" in proc.stderr and str(tmp_path / "test") in proc.stderr


# ----------------------------------------------------------------------- ImageNet init


@needs_tflite
def test_tflite_conversion_gives_the_interpreters_top5_and_logits() -> None:
    """The converted MobileNetV2 classifies like TensorFlow Lite's own interpreter."""
    pytest.importorskip("tflite", reason="the tflite parser is in the [imagenet] extra")
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="the LiteRT interpreter is a dev extra")
    import cv2
    import torch
    from skimage import data

    from refinenet_ros.models.tflite_import import TFLITE_MEAN, TFLITE_STD, mobilenetv2_classifier

    names = (DATA / "imagenet" / "imagenet_labels.txt").read_text().splitlines()
    interpreter = litert.Interpreter(model_path=str(TFLITE), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    logits_t = next(d for d in interpreter.get_tensor_details() if d["name"] == "MobilenetV2/Logits/Squeeze1")
    scale, zero = logits_t["quantization"]
    ours = mobilenetv2_classifier(TFLITE)
    mean = torch.tensor(TFLITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TFLITE_STD).view(1, 3, 1, 1)
    top1 = {}
    for key, picture in (("chelsea", data.chelsea()), ("coffee", data.coffee())):
        image = cv2.resize(picture, (224, 224), interpolation=cv2.INTER_AREA)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        reference = (interpreter.get_tensor(logits_t["index"])[0].astype(np.float32) - zero) * scale
        x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.no_grad():
            logits = ours(x)[0].numpy()
        assert list(np.argsort(-logits)[:5]) == list(np.argsort(-reference)[:5])
        # int8 noise: the interpreter rounds every activation to 8 bits; ours does not
        assert np.sqrt(np.mean((logits - reference) ** 2)) < 2 * scale
        assert np.abs(logits - reference).max() < 8 * scale
        top1[key] = names[int(np.argmax(logits))]
    assert top1 == {"chelsea": "Egyptian cat", "coffee": "espresso"}  # chelsea is a cat


@needs_tflite
def test_backbone_init_fills_the_segmentation_encoder_exactly() -> None:
    """The encoder of lw_refinenet_mobilenetv2 gets the same features as the classifier's."""
    pytest.importorskip("tflite", reason="the tflite parser is in the [imagenet] extra")
    import torch

    from refinenet_ros.models import build_model
    from refinenet_ros.models.tflite_import import TFLiteImportError, load_mobilenetv2_tflite

    model: Any = build_model("lw_refinenet_mobilenetv2", 11).eval()  # its layers by name
    head = load_mobilenetv2_tflite(model, TFLITE)
    assert len(head) == 2  # the 1x1 to 1280 channels and the classifier are not used
    first_expand = model.layer2[0].output[0]
    assert torch.equal(first_expand[0].weight[:, :, 0, 0], torch.eye(32)), "t=1 block: identity expansion"
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        feats = model.mobilenet_features(x)
    assert [f.shape[1] for f in feats] == [24, 32, 64, 96, 160, 320]
    assert all(torch.isfinite(f).all() for f in feats)
    with pytest.raises(TFLiteImportError, match="not a TensorFlow Lite model"):
        load_mobilenetv2_tflite(model, Path(__file__))
    with pytest.raises(TFLiteImportError, match="MobileNetV2 models"):
        load_mobilenetv2_tflite(build_model("lw_refinenet_resnet50", 11), TFLITE)


# ------------------------------------------------------------------------ bundled weights


def test_registry_lists_the_bundled_camvid_model() -> None:
    from refinenet_ros.weights import DEFAULT_WEIGHTS, get_weights

    w = get_weights(DEFAULT_WEIGHTS)
    assert (w.name, w.model, w.labels) == ("camvid", "lw_refinenet_mobilenetv2", "camvid")
    assert w.path.is_file() and w.path.stat().st_size < 10 * 2**20
    proc = run_cli("weights", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["camvid"]
    assert listed["network_size"] == [360, 480] and listed["mean"] == [0.5, 0.5, 0.5]
    assert "TFLite" in listed["backbone"] and "CamVid" in listed["dataset"]
    assert listed["metrics"]["val_miou"] >= 0.5


def test_bundled_camvid_ships_its_confidence_calibration_and_int8_record() -> None:
    """What makes the robot path trustworthy without data on the robot: a fitted confidence
    temperature, and INT8 figures close enough to FP32 that ``auto`` may choose INT8."""
    from refinenet_ros.config import checkpoint_metadata, recorded_temperature
    from refinenet_ros.weights import get_weights
    from refinenet_ros.weights.records import MIOU_LOSS_LIMIT, weights_accuracy, weights_int8_ranges

    path = get_weights("camvid").path
    temperature = recorded_temperature(checkpoint_metadata(path))
    assert temperature is not None and temperature != 1.0
    record = weights_accuracy(path)
    assert record is not None and record.frames >= 100 and "camvid val" in record.dataset
    losses = [record.loss(k) for k in record.miou if k.endswith(" int8")]
    assert losses and all(loss is not None and loss <= MIOU_LOSS_LIMIT for loss in losses), losses
    assert weights_int8_ranges(path) is not None
    proc = run_cli("weights")
    assert proc.returncode == 0, proc.stderr
    camvid = proc.stdout.split("\nindoor:")[0]
    assert f"temperature {temperature:g}" in camvid and "IDD-Lite" in camvid


def test_config_resolves_names_paths_and_random() -> None:
    from refinenet_ros.config import ModelConfig
    from refinenet_ros.weights import get_weights

    default = ModelConfig().resolved()
    assert default.weights == str(get_weights("camvid").path) and default.weights_name == "camvid"
    assert (default.model, default.labels, default.mean, default.network_size) == (
        "lw_refinenet_mobilenetv2", "camvid", (0.5, 0.5, 0.5), (360, 480)
    )  # fmt: skip
    assert ModelConfig(weights=default.weights).resolved().labels == "camvid"  # a path: same metadata
    random = ModelConfig(weights="random").resolved()
    assert random.weights is None and random.mean == (0.485, 0.456, 0.406) and random.network_size is None
    # another label set than the bundled model's: no silent camvid weights under voc names
    assert ModelConfig(labels="voc").resolved().weights is None


@pytest.mark.slow
def test_default_path_runs_the_bundled_model_without_a_random_weights_warning(tmp_path: Path) -> None:
    from skimage import data

    from refinenet_ros.io import write_rgb_png

    write_rgb_png(tmp_path / "in" / "street.png", data.astronaut())
    proc = run_cli("segment", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    assert "random" not in proc.stderr
    assert (tmp_path / "out" / "street_labels.png").is_file()
    explicit = run_cli("segment", str(tmp_path / "in"), "--out", str(tmp_path / "rand"), "--backend", "torch",
                       "--weights", "random")  # fmt: skip
    assert explicit.returncode == 0 and explicit.stderr.count("seeded random weights") == 1


@pytest.mark.slow
def test_unknown_weights_name_is_one_line() -> None:
    proc = run_cli("segment", "--samples", "--weights", "camvdi")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "no bundled weights of that name" in proc.stderr and "camvid" in proc.stderr


def test_load_api_returns_a_ready_segmenter(tmp_path: Path) -> None:
    from skimage import data

    import refinenet_ros

    seg = refinenet_ros.load("camvid", backend="torch", cache_dir=str(tmp_path))
    assert seg.label_set.name == "camvid" and seg.network_size == (360, 480)
    image = data.astronaut()
    result = seg(image)
    assert result.labels.shape == image.shape[:2] and result.labels.max() < 11
    assert result.confidence.shape == image.shape[:2]
    assert result.color().shape == result.overlay().shape == image.shape
    with pytest.raises(ValueError, match="no bundled weights"):
        refinenet_ros.load("nonexistent")


@needs_camvid
def test_bundled_model_segments_real_street_frames() -> None:
    """A handful of val frames (never test): the shipped model must really segment streets."""
    import refinenet_ros
    from refinenet_ros.training.metrics import ConfusionMatrix

    frames = val_frames(6)
    seg = refinenet_ros.load("camvid", backend="torch")
    cm = ConfusionMatrix(11)
    for image, label in frames:
        cm.update(label, seg(image).labels)
    metrics = cm.compute()
    assert metrics.pixel_accuracy > 0.85, metrics.pixel_accuracy
    assert metrics.miou > 0.55, metrics.miou
    confidence = seg(frames[0][0]).confidence
    assert confidence.mean() > 0.7, "a trained model is confident on most pixels"


@pytest.mark.slow
@needs_camvid
def test_onnxruntime_and_torch_agree_on_the_bundled_model(tmp_path: Path) -> None:
    """The exported graph carries the weights' normalisation (x/127.5 - 1), not ImageNet's."""
    import refinenet_ros
    from refinenet_ros.backends.onnx_export import read_metadata

    image, _ = val_frames(1)[0]
    torch_labels = refinenet_ros.load("camvid", backend="torch")(image).labels
    seg = refinenet_ros.load("camvid", backend="onnxruntime", cache_dir=str(tmp_path))
    assert (seg(image).labels == torch_labels).mean() > 0.995
    graph = next((tmp_path / "onnx").glob("*.onnx"))
    assert json.loads(read_metadata(graph)["mean"]) == [0.5, 0.5, 0.5]


IDD = DATA / "idd_lite"


@pytest.mark.skipif(not (IDD / "gtFine" / "train").is_dir(), reason=f"IDD-Lite is not here ({IDD})")
def test_bundled_model_segments_roads_unlike_camvid(tmp_path: Path) -> None:
    """Held-out IDD-Lite frames (other cameras, cities and roads), scored on the coarse classes
    through the unions of the model's fine ones: the shipped model must hold up off CamVid."""
    report = tmp_path / "idd.json"
    proc = run_cli("evaluate", "--dataset", "idd_lite", "--root", str(IDD), "--split", "train_holdout",
                   "--weights", "camvid", "--backend", "onnxruntime", "--limit", "12", "--no-progress",
                   "--engine-dir", str(tmp_path), "--report", str(report))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["miou"] > 0.6 and metrics["pixel_accuracy"] > 0.8, metrics
