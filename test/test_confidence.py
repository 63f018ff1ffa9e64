"""Calibrated confidence: temperature scaling fitted on labelled pixels, stored with the weights,
applied by every backend's confidence output, and its calibration error reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refinenet_ros.cli import main
from refinenet_ros.training.temperature import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    softmax_confidence,
)

MODEL = "lw_refinenet_mobilenetv2"


def test_expected_calibration_error_by_hand() -> None:
    conf = np.full(10, 0.9)
    assert expected_calibration_error(conf, np.arange(10) < 9) == pytest.approx(0.0)
    assert expected_calibration_error(conf, np.arange(10) < 5) == pytest.approx(0.4)
    # two bins: 0.55 right half the time (0.05 off), 0.95 always right (0.05 off)
    conf = np.array([0.55, 0.55, 0.95, 0.95])
    assert expected_calibration_error(conf, np.array([1, 0, 1, 1], bool)) == pytest.approx(0.05)


def test_temperature_scaling_undoes_overconfidence_on_a_synthetic_case() -> None:
    """Labels drawn from softmax(z); the 'network' reports 3 z: T = 3 is the truth."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (40000, 6))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = (rng.random((len(z), 1)) > p.cumsum(1)).sum(1)
    logits = 3.0 * z
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.05)
    fit = calibrate(logits, labels)
    assert fit.ece_before > 0.1  # overconfident: far from calibrated
    assert fit.ece_after < fit.ece_before / 5 and fit.ece_after < 0.02
    # T changes the confidence, never the label
    assert (softmax_confidence(logits, fit.temperature) < softmax_confidence(logits, 1.0) + 1e-12).all()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refinenet_ros.models import IMAGENET_MEAN, IMAGENET_STD, build_model, save_checkpoint

    path = tmp_path_factory.mktemp("conf") / "model.pt"
    model = build_model(MODEL, 11, seed=0)
    save_checkpoint(path, model, model_name=MODEL, label_set="camvid", num_classes=11, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, network_size=(64, 96))  # fmt: skip
    return path


@pytest.mark.slow
def test_a_packed_temperature_calibrates_every_backends_confidence(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    import refinenet_ros

    packed = tmp_path / "calibrated.pt"
    assert main(["weights", "--pack", str(checkpoint), "--out", str(packed), "--temperature", "2.5"]) == 0
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    out = {}
    for weights in (checkpoint, packed):
        for backend in ("torch", "onnxruntime"):
            seg = refinenet_ros.load(str(weights), backend=backend, precision="fp32", cache_dir=str(tmp_path))
            result = seg(image)
            out[(weights.name, backend)] = (result.labels, result.confidence)
    for backend in ("torch", "onnxruntime"):
        labels, conf = out[("model.pt", backend)]
        labels_t, conf_t = out[("calibrated.pt", backend)]
        # fp16 packing may flip a near-tie; the confidence drops wherever the model was not sure
        assert (labels == labels_t).mean() > 0.99, backend
        assert conf_t.mean() < conf.mean() and (conf_t <= conf + 2e-3).all(), backend
    np.testing.assert_allclose(out[("calibrated.pt", "torch")][1], out[("calibrated.pt", "onnxruntime")][1],
                               atol=2e-3)  # fmt: skip
    capsys.readouterr()
    assert (
        main(["weights", "--pack", str(checkpoint), "--out", str(tmp_path / "x.pt"), "--temperature", "0"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--temperature 0.0: must be a number above 0" in err and "\n" not in err


def test_weights_recording_a_bad_temperature_are_refused_in_one_line(
    checkpoint: Path, tmp_path: Path
) -> None:
    import torch

    from refinenet_ros.config import ConfigError, ModelConfig

    payload = torch.load(checkpoint, weights_only=True)
    payload["metadata"]["extra"]["temperature"] = -1.0
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(ConfigError, match=r"temperature -1.0; expected a number above 0") as info:
        ModelConfig(weights=str(bad)).resolved()
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_evaluate_fits_the_temperature_and_reports_the_calibration_error(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from refinenet_ros.training.datasets import write_shapes_dataset

    root = write_shapes_dataset(tmp_path / "d", "val", 4, (64, 96), classes=4, seed=2)
    report = tmp_path / "r.json"
    code = main(["evaluate", "--root", str(root), "--weights", str(checkpoint), "--backend", "torch",
                 "--fit-temperature", "--report", str(report), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    calibration = json.loads(report.read_text())["calibration"]
    t = calibration["temperature"]
    assert 0.05 <= t <= 20 and calibration["pixels"] > 1000
    assert 0 <= calibration["ece_calibrated"] <= 1 and 0 <= calibration["ece_uncalibrated"] <= 1
    assert f"--temperature {t:.3f}" in printed and "expected calibration error" in printed
