"""`refinenet-ros label`, the indoor label set and the mappings a teacher's classes go through."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from refinenet_ros.cli import main
from refinenet_ros.io import read_label_png
from refinenet_ros.labels import IGNORE_INDEX, get_label_set, load_mapping
from refinenet_ros.training.datasets import folder_pairs, open_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "indoor"
INDOOR = get_label_set("indoor")


def indoor_id(name: str) -> int:
    return INDOOR.classes.index(name)


# --- the label set and the mappings -------------------------------------------------------


def test_indoor_set_has_the_fourteen_robot_classes_in_order() -> None:
    assert INDOOR.classes == (
        "wall", "floor", "ceiling", "door", "window", "stairs", "person", "chair", "table",
        "sofa", "bed", "cabinet", "screen", "other",
    )  # fmt: skip
    palette = INDOOR.palette.astype(int)
    assert len({tuple(c) for c in palette}) == 14
    # floor, person and stairs are told apart at a glance: far apart in RGB
    key = [palette[indoor_id(n)] for n in ("floor", "person", "stairs")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.linalg.norm(key[i] - key[j]) > 120


def test_ade20k_mapping_sends_teacher_classes_where_a_robot_needs_them() -> None:
    m = load_mapping("ade20k_to_indoor")
    ade = get_label_set("ade20k").classes
    expect = {
        "rug": "floor", "armchair": "chair", "stool": "chair", "seat": "chair", "desk": "table",
        "coffee table": "table", "stairway": "stairs", "step": "stairs", "escalator": "stairs",
        "wardrobe": "cabinet", "refrigerator": "cabinet", "shelf": "cabinet", "counter": "cabinet",
        "television receiver": "screen", "monitor": "screen", "computer": "screen",
        "windowpane": "window", "sky": "other", "lamp": "other", "person": "person",
    }  # fmt: skip
    for ade_name, indoor_name in expect.items():
        assert m.table[ade.index(ade_name)] == indoor_id(indoor_name), ade_name
    # a leading "other" output (TensorFlow's 151-output ADE20K models) goes to other
    lead = m.with_leading_other()
    assert len(lead.table) == 151
    assert lead.table[0] == indoor_id("other") and lead.table[1] == indoor_id("wall")
    # probabilities sum over members: every ADE20K class lands in exactly one indoor class
    assert np.all(m.matrix().sum(axis=1) == 1)


def test_nyud40_mapping_scores_nyu_label_files() -> None:
    m = load_mapping("nyud40_to_indoor")
    nyu = get_label_set("nyud40").classes
    lut = m.lut(offset=1)  # NYU label files: 0 = unlabelled, 1..40 = the classes
    assert lut[0] == IGNORE_INDEX
    expect = {
        "floor mat": "floor", "desk": "table", "bookshelf": "cabinet", "counter": "cabinet",
        "shelves": "cabinet", "dresser": "cabinet", "night stand": "cabinet",
        "refrigerator": "cabinet", "television": "screen", "lamp": "other", "pillow": "other",
    }  # fmt: skip
    for nyu_name, indoor_name in expect.items():
        assert lut[nyu.index(nyu_name) + 1] == indoor_id(indoor_name), nyu_name
    assert lut[41] == IGNORE_INDEX


# --- a tiny teacher the tests build -------------------------------------------------------


def rgb_teacher(path: Path) -> Path:
    """An ONNX "teacher" whose 3 classes are the red, green and blue channels (logits = 10 x/255):
    pure colours are confident, grey is a three-way tie (probability 1/3)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, "h", "w"])
    ten = helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "ten"], ["logits"])], "rgb", [x], [y], [ten])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def rgb_mapping(path: Path) -> Path:
    path.write_text(
        "source_classes: [red, green, blue]\ntarget: indoor\ndefault: other\n"
        "map:\n  red: person\n  green: floor\n  blue: ignore\n"
    )
    return path


def quadrants(h: int = 20, w: int = 30) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (128, 128, 128)
    return img


@pytest.fixture
def teacher_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    images = tmp_path / "images"
    (images / "room").mkdir(parents=True)
    cv2.imwrite(str(images / "room" / "a.png"), quadrants()[..., ::-1])
    cv2.imwrite(str(images / "b.png"), quadrants(16, 12)[::-1, ::-1, ::-1])
    return images, rgb_teacher(tmp_path / "teacher.onnx"), rgb_mapping(tmp_path / "map.yaml")


def label(*args: str) -> int:
    return main(["label", *args, "--no-progress", "--input-scaling", "zero1"])


def test_label_folder_maps_thresholds_and_mirrors_the_layout(teacher_setup, tmp_path: Path, capsys) -> None:
    images, teacher, mapping = teacher_setup
    out = tmp_path / "labels"
    code = label(str(images), "--out", str(out), "--teacher", str(teacher), "--mapping", str(mapping),
                 "--min-confidence", "0.5", "--flip")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    a = read_label_png(out / "room" / "a.png")
    assert a.shape == (20, 30)
    assert a[0, 0] == indoor_id("person")  # red
    assert a[0, -1] == indoor_id("floor")  # green
    assert a[-1, 0] == IGNORE_INDEX  # blue: mapped to ignore
    assert a[-1, -1] == IGNORE_INDEX  # grey: a 1/3 tie, below --min-confidence 0.5
    b = read_label_png(out / "b.png")
    assert b.shape == (16, 12) and b[-1, -1] == indoor_id("person")  # flipped image, red corner
    # train/evaluate read the result as an image folder + label folder pair
    assert len(folder_pairs(images, out)) == 2
    record = json.loads((out / "labelling.json").read_text())
    assert record["options"]["min_confidence"] == 0.5 and record["teacher"]["kind"] == "onnx"
    assert "not by people" in record["note"]


def test_without_threshold_every_pixel_gets_a_class(teacher_setup, tmp_path: Path) -> None:
    images, teacher, mapping = teacher_setup
    out = tmp_path / "labels"
    assert label(str(images), "--out", str(out), "--teacher", str(teacher), "--mapping", str(mapping)) == 0
    a = read_label_png(out / "room" / "a.png")
    assert a[-1, -1] != IGNORE_INDEX  # grey still gets its (tied) class


def test_label_resumes_skipping_finished_files_and_refuses_other_settings(
    teacher_setup, tmp_path: Path, capsys
) -> None:
    images, teacher, mapping = teacher_setup
    out = tmp_path / "labels"
    args = [str(images), "--out", str(out), "--teacher", str(teacher), "--mapping", str(mapping)]
    assert label(*args) == 0
    done = out / "room" / "a.png"
    os.utime(done, ns=(1, 1))
    (out / "b.png").unlink()
    capsys.readouterr()
    assert label(*args) == 0
    said = capsys.readouterr().out
    assert "labelled 1 images" in said and "(1 already done)" in said
    assert done.stat().st_mtime_ns == 1  # untouched
    assert (out / "b.png").is_file()
    # the same folder with another threshold would mix two sets of labels: one line, exit 2
    assert label(*args, "--min-confidence", "0.7") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "--out" in err


def test_label_bag_topic_writes_a_folders_data_set(tmp_path: Path, capsys) -> None:
    from refinenet_ros.bag import write_sample_bag

    bag = write_sample_bag(tmp_path / "bag", frames=4, size=(24, 32), compressed=True)
    teacher = rgb_teacher(tmp_path / "t.onnx")
    out = tmp_path / "data"
    code = label(str(bag), "--out", str(out), "--teacher", str(teacher), "--mapping",
                 str(rgb_mapping(tmp_path / "m.yaml")), "--image-topic", "/camera/image_raw/compressed",
                 "--every", "2")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    ds = open_dataset("folders", out, "")
    assert len(ds) == 2
    image, labels = ds[0]
    assert image.shape == (24, 32, 3) and labels.shape == (24, 32)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("--teacher", "missing.onnx"), "--teacher: teacher missing.onnx: no such file"),
        (("--teacher", "GARBAGE"), "not a usable ONNX model"),
        (("--mapping", "BADMAP"), "'sky' is no source class"),
        (("--mapping", "no_such_mapping"), "no such file or bundled mapping"),
        (("--min-confidence", "1.5"), "--min-confidence 1.5: must be in [0, 1)"),
    ],
)
def test_bad_teacher_or_mapping_is_one_line(teacher_setup, tmp_path: Path, capsys, change, expected) -> None:
    images, teacher, mapping = teacher_setup
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model" * 10)
    bad_map = tmp_path / "bad.yaml"
    bad_map.write_text("source_classes: [red, green, blue]\ntarget: indoor\nmap:\n  sky: floor\n")
    opts = {"--teacher": str(teacher), "--mapping": str(mapping), "--min-confidence": "0"}
    value = {"GARBAGE": str(garbage), "BADMAP": str(bad_map)}.get(change[1], change[1])
    opts[change[0]] = value
    flat = [v for kv in opts.items() for v in kv]
    assert label(str(images), "--out", str(tmp_path / "o"), *flat) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "o" / "b.png").exists()


@pytest.mark.slow
def test_our_own_weights_teach_with_flip_and_scales(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    from refinenet_ros.samples import sample_sequence

    cv2.imwrite(str(images / "street.png"), next(iter(sample_sequence(1, (90, 120))))[..., ::-1])
    out = tmp_path / "labels"
    code = main(["label", str(images), "--out", str(out), "--teacher", "camvid", "--flip",
                 "--scales", "0.75", "1.0", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    labels = read_label_png(out / "street.png")
    assert labels.shape == (90, 120) and labels.max() < get_label_set("camvid").num_classes


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data/indoor (Places365 photographs, ADE20K teacher) absent"
)
def test_the_ade20k_teacher_labels_a_real_room(tmp_path: Path, capsys) -> None:
    rooms = SHARED / "places" / "eval" / "living_room"
    first = sorted(rooms.glob("*.jpg"))[0]
    out = tmp_path / "labels"
    teacher = SHARED / "teacher" / "deeplabv3_mobilenetv2_ade20k.tflite"
    code = main(["label", str(rooms), "--out", str(out), "--teacher", str(teacher), "--mapping",
                 "ade20k_to_indoor", "--min-confidence", "0.5", "--limit", "1", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    labels = read_label_png(out / first.with_suffix(".png").name)
    present = {INDOOR.classes[v] for v in np.unique(labels) if v != IGNORE_INDEX}
    assert {"wall", "floor"} <= present and len(present) >= 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_adapt_to_your_robot_bag_label_train_evaluate_run(tmp_path: Path, capsys) -> None:
    """The README's "Adapt to your robot" loop on tiny data: a recorded bag is labelled by our
    own model as teacher (flip + scales), a student is fine-tuned from it, evaluated, and run."""
    from refinenet_ros.bag import write_sample_bag

    bag = write_sample_bag(tmp_path / "robot_bag", frames=6, size=(96, 128))
    data, run = tmp_path / "data", tmp_path / "run"
    steps = [
        ["label", str(bag), "--image-topic", "/camera/image_raw", "--teacher", "camvid", "--flip",
         "--scales", "0.75", "1.0", "--min-confidence", "0.3", "--out", str(data)],
        ["train", "--root", str(data), "--split", "", "--val-split", "none", "--weights", "camvid",
         "--steps", "3", "--batch-size", "2", "--crop", "64", "64", "--out", str(run)],
        ["evaluate", "--root", str(data), "--split", "", "--weights", str(run / "last.pt"),
         "--backend", "torch", "--report", str(tmp_path / "report.json")],
        ["segment", str(data / "images"), "--weights", str(run / "last.pt"), "--backend", "torch",
         "--out", str(tmp_path / "seg")],
    ]  # fmt: skip
    for argv in steps:
        quiet = ["--no-progress"] if argv[0] != "segment" else []
        assert main([*argv, *quiet]) == 0, (argv[0], capsys.readouterr().err)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 6 and report["labels"] == "camvid"
    assert len(list((tmp_path / "seg").glob("*_labels.png"))) == 6


def test_evaluate_scores_nyu_style_labels_through_a_mapping(tmp_path: Path, capsys) -> None:
    """NYUv2-40 label files (0 = unlabelled) are scored as indoor classes with --label-map."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    cv2.imwrite(str(images / "f.png"), np.full((8, 8, 3), 90, np.uint8))
    nyu = np.zeros((8, 8), np.uint8)  # rows 0-1 unlabelled
    nyu[2:4], nyu[4:6], nyu[6:8] = 2, 20, 25  # floor, floor mat, television (ids + 1)
    cv2.imwrite(str(labels / "f.png"), nyu)
    report = tmp_path / "r.json"

    def evaluate(labels_name: str) -> int:
        return main(["evaluate", "--images", str(images), "--labels-dir", str(labels), "--label-offset", "1",
                     "--label-map", "nyud40_to_indoor", "--weights", "random", "--labels", labels_name,
                     "--backend", "torch", "--network-size", "32", "32", "--report", str(report),
                     "--no-progress"])  # fmt: skip

    assert evaluate("indoor") == 0, capsys.readouterr().err
    per_class = json.loads(report.read_text())["metrics"]["per_class"]
    assert per_class["floor"]["pixels"] == 32 and per_class["screen"]["pixels"] == 16
    assert sum(c["pixels"] for c in per_class.values()) == 48  # unlabelled rows are not scored
    # a mapping into another label set than the model's is one line
    capsys.readouterr()
    assert evaluate("camvid") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "maps to indoor but the model predicts camvid" in err


def test_a_label_run_over_every_nth_image_trains_on_the_labelled_ones(teacher_setup, tmp_path: Path) -> None:
    images, teacher, mapping = teacher_setup
    out = tmp_path / "labels"
    args = [str(images), "--out", str(out), "--teacher", str(teacher), "--mapping", str(mapping)]
    assert label(*args, "--every", "2") == 0
    assert len(folder_pairs(images, out)) == 1  # the skipped image is no mismatch
    (out / "labelling.json").unlink()  # without the record a missing label is a mistake
    with pytest.raises(ValueError, match="1 of 2 images"):
        folder_pairs(images, out)
