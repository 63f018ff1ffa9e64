"""`refinenet-ros evaluate` and the data set readers it shares with `train`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from refinenet_ros.cli import main
from refinenet_ros.io import write_label_png, write_rgb_png
from refinenet_ros.labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, get_label_set
from refinenet_ros.training.datasets import (
    DatasetError,
    TrainAugment,
    cityscapes,
    folder_pairs,
    open_dataset,
    voc,
)
from refinenet_ros.training.evaluate import evaluate
from refinenet_ros.training.metrics import ConfusionMatrix

H, W = 48, 64
VOC = get_label_set("voc")


def make_pair(rng: np.random.Generator, classes: int = 21) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = rng.integers(0, classes, (H, W)).astype(np.uint8)
    label[:4] = IGNORE_INDEX
    return image, label


@pytest.fixture()
def folder_dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for i in range(3):
        image, label = make_pair(rng)
        write_rgb_png(tmp_path / "images" / f"img{i}.png", image)
        write_label_png(tmp_path / "labels" / f"img{i}.png", label, VOC)
    return tmp_path


def test_oracle_predictor_scores_perfectly(folder_dataset: Path) -> None:
    ds = open_dataset("folders", folder_dataset)
    assert len(ds) == 3
    truth = [ds[i][1] for i in range(3)]
    calls = iter(truth)
    result = evaluate(lambda images: [next(calls) for _ in images], ds, VOC, batch=1)
    m = result.metrics
    assert m.miou == 1.0 and m.pixel_accuracy == 1.0 and m.fw_iou == 1.0
    assert m.num_pixels == 3 * (H - 4) * W  # the ignore rows are not scored


def test_cli_report_matches_saved_predictions(folder_dataset: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    preds = tmp_path / "preds"
    rc = main([
        "evaluate", "--root", str(folder_dataset), "--backend", "torch", "--model",
        "lw_refinenet_mobilenetv2", "--labels", "voc", "--report", str(report_path), "--save-predictions",
        str(preds), "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert (
        report["images"] == 3 and report["labels"] == "voc" and report["model"] == "lw_refinenet_mobilenetv2"
    )
    assert set(report["metrics"]["per_class"]) == set(VOC.classes)
    # Recompute the metrics from the saved colour predictions (palette colours are distinct).
    lut = {tuple(c): i for i, c in enumerate(VOC.palette.tolist())}
    cm = ConfusionMatrix(21)
    ds = open_dataset("folders", folder_dataset)
    for i, sample in enumerate(ds.samples):
        bgr = cv2.imread(str(preds / f"{sample.name}.png"))
        assert bgr is not None
        color = bgr[..., ::-1]
        pred = np.vectorize(lambda *rgb: lut[rgb])(color[..., 0], color[..., 1], color[..., 2])
        cm.update(ds[i][1], pred)
    m = cm.compute()
    assert report["metrics"]["miou"] == pytest.approx(m.miou, abs=1e-6)
    assert report["metrics"]["pixel_accuracy"] == pytest.approx(m.pixel_accuracy, abs=1e-6)
    assert report["metrics"]["num_pixels"] == m.num_pixels


def test_cli_multiscale_flip_and_backend_check(folder_dataset: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "ms.json"
    rc = main([
        "evaluate", "--images", str(folder_dataset / "images"),
        "--labels-dir", str(folder_dataset / "labels"),
        "--backend", "torch", "--scales", "0.5", "1.0", "--flip", "--report", str(report_path),
        "--limit", "2", "--no-progress", "--labels", "voc",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 2 and report["scales"] == [0.5, 1.0] and report["flip"] is True
    assert 0.0 <= report["metrics"]["miou"] <= 1.0
    bad = tmp_path / "bad.json"
    assert main(["evaluate", "--root", str(folder_dataset), "--backend", "onnxruntime", "--flip",
                 "--report", str(bad)]) == 2  # fmt: skip
    assert main(["evaluate", "--root", str(tmp_path / "missing"), "--report", str(bad)]) == 2
    # ground truth with ids beyond the label set (VOC ids against the default camvid model)
    assert main(["evaluate", "--root", str(folder_dataset), "--backend", "torch", "--report", str(bad),
                 "--no-progress"]) == 2  # fmt: skip
    assert not bad.exists()


def test_cityscapes_reader_maps_label_ids(tmp_path: Path) -> None:
    label_ids = np.array([[7, 26, 0, 33], [11, 1, 255, 24]], dtype=np.uint8)
    city = "aachen"
    img_dir = tmp_path / "leftImg8bit" / "val" / city
    gt_dir = tmp_path / "gtFine" / "val" / city
    write_rgb_png(img_dir / "aachen_000000_000019_leftImg8bit.png", np.zeros((2, 4, 3), np.uint8))
    gt_dir.mkdir(parents=True)
    cv2.imwrite(str(gt_dir / "aachen_000000_000019_gtFine_labelIds.png"), label_ids)
    ds = cityscapes(tmp_path, "val")
    _, label = ds[0]
    expected = np.vectorize(lambda v: CITYSCAPES_ID_TO_TRAINID.get(int(v), IGNORE_INDEX))(label_ids)
    np.testing.assert_array_equal(label, expected)
    assert label.tolist() == [[0, 13, 255, 18], [2, 255, 255, 11]]
    assert ds.samples[0].name == "aachen_000000_000019"


def test_voc_reader_split_file_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(2)
    for sid in ("2007_000032", "2007_000039"):
        image, label = make_pair(rng)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{sid}.jpg"), image)
        write_label_png(root / "SegmentationClass" / f"{sid}.png", label, VOC)
    split = root / "ImageSets" / "Segmentation"
    split.mkdir(parents=True)
    (split / "val.txt").write_text("2007_000039\n")
    ds = voc(tmp_path / "VOCdevkit", "val")  # the devkit folder above VOC2012 is accepted
    assert [s.name for s in ds.samples] == ["2007_000039"]
    assert ds[0][1].max() == IGNORE_INDEX
    (split / "train.txt").write_text("2007_000099\n")
    with pytest.raises(DatasetError, match="2007_000099"):
        voc(root, "train")
    with pytest.raises(DatasetError, match="split file"):
        voc(root, "trainval")


def test_folder_pairs_offset_suffix_matching_and_missing(tmp_path: Path) -> None:
    write_rgb_png(tmp_path / "im" / "a.png", np.zeros((2, 3, 3), np.uint8))
    (tmp_path / "lab").mkdir()
    cv2.imwrite(str(tmp_path / "lab" / "a_label.png"), np.array([[0, 1, 2], [150, 3, 0]], np.uint8))
    ds = folder_pairs(tmp_path / "im", tmp_path / "lab", label_offset=1)
    assert ds[0][1].tolist() == [[255, 0, 1], [149, 2, 255]]
    write_rgb_png(tmp_path / "im" / "b.png", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"1 of 2 images .* no label.*b\.png"):
        folder_pairs(tmp_path / "im", tmp_path / "lab")


def test_train_augment_shapes_padding_and_label_integrity() -> None:
    rng = np.random.default_rng(3)
    image, label = make_pair(rng, classes=5)
    aug = TrainAugment(crop_size=(64, 80), scale_range=(0.5, 1.5))
    r = random.Random(0)
    for _ in range(20):
        img, lab = aug(image, label, r)
        assert img.shape == (64, 80, 3) and img.dtype == np.uint8
        assert lab.shape == (64, 80) and lab.dtype == np.int64
        assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3, 4, IGNORE_INDEX}  # nearest: no new values


def test_metrics_are_printed_even_when_the_report_cannot_be_written(
    folder_dataset: Path, tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["evaluate", "--root", str(folder_dataset), "--backend", "torch", "--model",
               "lw_refinenet_mobilenetv2", "--labels", "voc", "--report", str(blocker / "report.json"),
               "--no-progress"])  # fmt: skip
    assert rc == 2
    captured = capsys.readouterr()
    assert "mIoU" in captured.out and "3 images" in captured.out  # the evaluation is not lost
    assert "--report" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("command", ["evaluate", "train", "segment"])
def test_a_decompression_bomb_is_one_line_in_every_command(
    folder_dataset: Path, tmp_path: Path, capsys, command: str
) -> None:
    from hostile_images import png_bomb

    bomb = folder_dataset / "images" / "img1.png"
    bomb.write_bytes(png_bomb(60000, 60000))
    train_flags = ["--steps", "1", "--batch-size", "3", "--crop", "48", "48", "--val-split", "none"]
    common = ["--backend", "torch"] if command != "train" else train_flags
    argv = {
        "evaluate": ["evaluate", "--root", str(folder_dataset), "--report", str(tmp_path / "r.json")],
        "train": ["train", "--root", str(folder_dataset), "--out", str(tmp_path / "run")],
        "segment": ["segment", str(bomb), "--out", str(tmp_path / "seg")],
    }[command]
    rc = main([*argv, *common, "--model", "lw_refinenet_mobilenetv2", "--labels", "voc",
               *([] if command == "segment" else ["--no-progress"])])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "60000x60000" in err and "img1.png" in err and "Traceback" not in err, err
