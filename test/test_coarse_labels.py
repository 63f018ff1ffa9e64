"""Coarse labels supervise and score a fine model: IDD-Lite's level-1 classes for CamVid's 11.

A coarse class is the union of fine classes (vehicle = car + bicyclist): training puts the
loss on the summed probability of the union, evaluation scores fine predictions on the
coarse classes through the same unions. Tests on IDD-Lite itself read ../shared/data in
place and skip with the reason where it is absent (a user's fresh clone).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from refinenet_ros.cli import main
from refinenet_ros.labels import CAMVID_CLASSES, IGNORE_INDEX, MappingError, get_label_set, load_mapping
from refinenet_ros.training.datasets import (
    DatasetError,
    open_dataset,
    read_label,
    write_shapes_dataset,
)
from refinenet_ros.training.evaluate import evaluate
from refinenet_ros.training.losses import union_loss, union_targets

IDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "idd_lite"
needs_idd = pytest.mark.skipif(
    not (IDD / "gtFine" / "train").is_dir(),
    reason=f"IDD-Lite is not here ({IDD}); it is read in place, never shipped",
)
LEVEL1 = ("drivable", "non-drivable", "living thing", "vehicle", "roadside object", "far object", "sky")
CAMVID = get_label_set("camvid")


def fine(*names: str) -> list[int]:
    return [CAMVID_CLASSES.index(n) for n in names]


# ------------------------------------------------------------------------------ the unions


def test_the_bundled_idd_mapping_holds_the_unions_of_the_issue() -> None:
    m = load_mapping("idd_level1_to_camvid")
    assert m.source == LEVEL1 and m.target.name == "camvid" and m.is_union
    members = {name: sorted(ids) for name, ids in zip(m.source, m.members(), strict=True)}
    assert members == {
        "drivable": fine("road"),
        "non-drivable": fine("pavement"),
        "living thing": sorted(fine("pedestrian", "bicyclist")),
        "vehicle": sorted(fine("car", "bicyclist")),
        "roadside object": sorted(fine("pole", "sign/symbol", "fence")),
        "far object": sorted(fine("building", "tree")),
        "sky": fine("sky"),
    }
    assert m.matrix().sum(axis=0).tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]  # bicyclist twice
    assert not load_mapping("nyud40_to_indoor").is_union


@pytest.mark.parametrize(
    ("entry", "named"),
    [("vehicle: []", "lists no class"), ("vehicle: [car, lorry]", "'lorry' is no camvid class"),
     ("vehicle: [car, ignore]", "cannot hold ignore")],
)  # fmt: skip
def test_a_bad_union_in_a_mapping_file_is_one_line(tmp_path: Path, entry: str, named: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(f"source_classes: [vehicle, other]\ntarget: camvid\nmap:\n  {entry}\n")
    with pytest.raises(MappingError, match=named) as info:
        load_mapping(path)
    assert "\n" not in str(info.value)


def test_union_loss_is_minus_log_of_the_summed_probability() -> None:
    """Hand-computed: p = (1/6, 2/6, 3/6); a union of classes 0 and 2 has p = 4/6."""
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0])).view(1, 3, 1, 1).repeat(1, 1, 1, 3)
    unions = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float32)
    target = torch.tensor([[[3, 1, IGNORE_INDEX]]])  # the union, fine class 1, unlabelled
    loss = union_loss(logits, target, unions)
    assert loss.item() == pytest.approx((math.log(6 / 4) + math.log(6 / 2)) / 2, rel=1e-5)
    # class weights: a union pixel weighs the mean of its members' (1 and 4 -> 2.5)
    weight = torch.tensor([1.0, 2.0, 4.0])
    weighted = union_loss(logits, target, unions, weight=weight)
    assert weighted.item() == pytest.approx((2.5 * math.log(6 / 4) + 2 * math.log(3)) / 4.5, rel=1e-5)
    # fine labels only: exactly cross-entropy; the gradient reaches every member of a union
    fine_target = torch.tensor([[[2, 1, 0]]])
    assert union_loss(logits, fine_target, unions).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, fine_target).item()
    )
    x = logits.clone().requires_grad_(True)
    union_loss(x, torch.tensor([[[3, 3, 3]]]), unions).backward()
    assert x.grad is not None and (x.grad[0, 1] > 0).all() and (x.grad[0, [0, 2]] < 0).all()


# ------------------------------------------------------------------------------ the reader


def _write_idd(root: Path, frames: dict[str, np.ndarray]) -> Path:
    """A tiny IDD-Lite layout: leftImg8bit/train/SEQ/ID_image.jpg + gtFine/.../ID_label.png."""
    for key, label in frames.items():
        seq, fid = key.split("/")
        image = np.full((*label.shape, 3), 90, np.uint8)
        (root / "leftImg8bit" / "train" / seq).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "train" / seq).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "leftImg8bit" / "train" / seq / f"{fid}_image.jpg"), image)
        cv2.imwrite(str(root / "gtFine" / "train" / seq / f"{fid}_label.png"), label)
    return root


def test_idd_lite_reader_holds_out_whole_sequences(tmp_path: Path) -> None:
    label = np.array([[0, 3, 6, 255]], np.uint8).repeat(4, axis=0)
    root = _write_idd(
        tmp_path, {"10/000001": label, "11/000002": label, "7/000003": label, "20/000004": label}
    )
    names = {s: [x.name for x in open_dataset("idd_lite", root, s).samples]
             for s in ("train", "train_fit", "train_holdout")}  # fmt: skip
    assert names["train_holdout"] == ["10/000001", "20/000004"]  # sequence folders ending in 0
    assert names["train_fit"] == ["11/000002", "7/000003"]
    assert sorted(names["train"]) == sorted(names["train_fit"] + names["train_holdout"])
    _, got = open_dataset("idd_lite", root, "train")[0]
    np.testing.assert_array_equal(got, label)  # level-1 ids as they are, 255 stays void
    with pytest.raises(DatasetError, match="unknown split 'test'"):
        open_dataset("idd_lite", root, "test")
    (root / "gtFine" / "train" / "7" / "000003_label.png").unlink()
    with pytest.raises(DatasetError, match=r"000003_image\.jpg has no label"):
        open_dataset("idd_lite", root, "train")


@needs_idd
def test_idd_lite_train_split_and_its_held_out_slice() -> None:
    train = open_dataset("idd_lite", IDD, "train")
    fit = open_dataset("idd_lite", IDD, "train_fit")
    holdout = open_dataset("idd_lite", IDD, "train_holdout")
    assert len(train) == 1403 and len(fit) + len(holdout) == 1403
    assert 100 < len(holdout) < 300
    sequences = {s.name.split("/")[0] for s in holdout.samples}
    assert not sequences & {s.name.split("/")[0] for s in fit.samples}
    image, label = holdout[0]
    assert image.shape == (227, 320, 3) and label.shape == (227, 320)
    assert set(np.unique(label).tolist()) <= {*range(7), 255}


# ------------------------------------------------------------------------------ scoring


def test_a_fine_model_is_scored_on_the_coarse_classes_through_the_unions(tmp_path: Path) -> None:
    """gt vehicle, vehicle, living thing, drivable; predicted bicyclist, car, bicyclist, pavement:
    the bicyclist is right on both of its unions, pavement on drivable is a non-drivable miss."""
    gt = np.array([[3, 3, 2, 0]], np.uint8).repeat(2, axis=0)
    root = _write_idd(tmp_path, {"1/000001": gt})
    dataset = open_dataset("idd_lite", root, "train")
    pred = np.array([fine("bicyclist", "car", "bicyclist", "pavement")]).repeat(2, axis=0)
    mapping = load_mapping("idd_level1_to_camvid")
    result = evaluate(lambda images: [pred for _ in images], dataset, CAMVID, score_through=mapping)
    iou = dict(zip(LEVEL1, result.metrics.iou, strict=True))
    assert (iou["vehicle"], iou["living thing"], iou["drivable"], iou["non-drivable"]) == (1.0, 1.0, 0.0, 0.0)
    assert math.isnan(iou["sky"])
    assert result.metrics.miou == pytest.approx(0.5)
    assert result.metrics.pixel_accuracy == pytest.approx(0.75)


def test_a_fine_class_no_coarse_class_covers_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text("source_classes: [drivable, vehicle]\ntarget: camvid\nmap:\n  drivable: road\n"
                    "  vehicle: [car, bicyclist]\n")  # fmt: skip
    root = _write_idd(tmp_path / "d", {"1/000001": np.zeros((2, 2), np.uint8)})  # all drivable
    pred = np.array([fine("road", "sky"), fine("road", "road")])
    result = evaluate(lambda images: [pred for _ in images], open_dataset("idd_lite", root, "train"), CAMVID,
                      score_through=load_mapping(path))  # fmt: skip
    assert len(result.metrics.iou) == 2
    assert result.metrics.iou[0] == pytest.approx(0.75)  # 3 of 4 drivable pixels; sky counts as a miss


@needs_idd
@pytest.mark.slow
def test_evaluate_cli_scores_the_camvid_model_on_idd_level1(tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.json"
    code = main(["evaluate", "--dataset", "idd_lite", "--root", str(IDD), "--split", "train_holdout",
                 "--limit", "4", "--weights", "camvid", "--backend", "torch", "--network-size", "180", "240",
                 "--report", str(report), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert list(data["metrics"]["per_class"]) == list(LEVEL1)
    assert data["labels"] == "camvid" and "idd_level1_to_camvid" in data["scored_on"]
    assert 0.2 < data["metrics"]["miou"] <= 1.0
    assert "coarse classes of idd_level1_to_camvid" in capsys.readouterr().out


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def shapes_with_coarse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Fine shapes (classes 0..3) and the same kind of frames labelled coarsely: 0 = ground,
    1 = "some shape" (the union of classes 1..3), with a user's mapping file."""
    root = tmp_path_factory.mktemp("coarse")
    fine_root = write_shapes_dataset(root / "fine", "train", 12, (48, 48), classes=4, seed=0)
    coarse_root = write_shapes_dataset(root / "coarse", "train", 12, (48, 48), classes=4, seed=5)
    for path in (coarse_root / "labels" / "train").iterdir():
        label = read_label(path)  # palette PNG -> class ids
        cv2.imwrite(str(path), (label > 0).astype(np.uint8))
    mapping = root / "shape_union.yaml"
    mapping.write_text("source_classes: [ground, shape]\ntarget: person_part\nmap:\n  ground: background\n"
                       "  shape: [head, torso, upper arms]\n")  # fmt: skip
    return fine_root, coarse_root, mapping


def test_coarse_labels_become_union_targets_after_the_fine_classes(
    shapes_with_coarse: tuple[Path, Path, Path],
) -> None:
    _, coarse_root, mapping_file = shapes_with_coarse
    coarse = open_dataset("folders", coarse_root, "train")
    coarse.unions = load_mapping(mapping_file)
    unions = union_targets([coarse], 7)
    assert unions is not None and unions.shape == (9, 7)
    np.testing.assert_array_equal(unions[:7], np.eye(7))
    assert unions[8].tolist() == [0, 1, 1, 1, 0, 0, 0]
    _, label = coarse[0]
    assert set(np.unique(label).tolist()) <= {7, 8} and 8 in label  # ground -> 7, shape -> 8


@pytest.mark.slow
def test_train_cli_mixes_fine_and_coarse_sets(shapes_with_coarse: tuple[Path, Path, Path], tmp_path: Path,
                                              capsys) -> None:  # fmt: skip
    fine_root, coarse_root, mapping = shapes_with_coarse
    base = ["train", "--root", str(fine_root), "--model", "lw_refinenet_mobilenetv2", "--labels",
            "person_part", "--batch-size", "2", "--crop", "48", "48", "--val-split", "none",
            "--no-progress", "--steps", "2"]  # fmt: skip
    mix = ["--mix", "folders", str(coarse_root), "train", "--mix-label-map", str(mapping)]
    assert main([*base, *mix, "--mix-ratio", "0.5", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "last.pt").is_file()
    capsys.readouterr()
    assert main([*base, *mix, "--labels", "camvid", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "maps to person_part but the model predicts camvid" in err and "\n" not in err
    assert main([*base, *mix, "--mix-ratio", "1", "--out", str(tmp_path / "c")]) == 2
    assert "--mix-ratio 1.0: must be between 0 and 1" in capsys.readouterr().err


CAMVID_ROOT = IDD.parent / "camvid"


@needs_idd
@pytest.mark.skipif(not (CAMVID_ROOT / "train").is_dir(), reason=f"CamVid is not here ({CAMVID_ROOT})")
@pytest.mark.slow
def test_the_camvid_v2_recipe_runs_as_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One small step of config/train_camvid_v2.yaml from the repository root, as docs/training.md
    says to run it (the data paths are the recipe's own)."""
    pytest.importorskip("tflite", reason="the ImageNet initialisation needs pip install .[imagenet]")
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    out = tmp_path / "v2"
    code = main(["train", "--config", "config/train_camvid_v2.yaml", "--steps", "1", "--crop", "64", "64",
                 "--batch-size", "2", "--val-split", "none", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0 and (out / "last.pt").is_file()
