"""Tests for checkpoint loading/saving: every wrapper format, every failure message.

Round trips use the small LW-RefineNet MobileNetV2 (3.3 M parameters) with few classes:
a model with seed 0 is saved, a model with seed 1 loads it, and both must then give
bit-identical outputs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAMES,
    CheckpointError,
    LoadReport,
    build_model,
    checkpoint_num_classes,
    guess_model_name,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)

NAME = "lw_refinenet_mobilenetv2"
CLASSES = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from threads; oversubscription makes them slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def source() -> nn.Module:
    return build_model(NAME, CLASSES, seed=0)


@pytest.fixture
def target() -> nn.Module:
    return build_model(NAME, CLASSES, seed=1)


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(1, 3, 33, 47, generator=torch.Generator().manual_seed(3))


def _sd(model: nn.Module) -> OrderedDict[str, Tensor]:
    return OrderedDict((k, v.clone()) for k, v in model.state_dict().items())


def _outputs_equal(a: nn.Module, b: nn.Module, x: Tensor) -> bool:
    with torch.inference_mode():
        return torch.equal(a(x), b(x))


def _n_loadable(model: nn.Module) -> int:
    return sum(not k.endswith("num_batches_tracked") for k in model.state_dict())


# ---------------------------------------------------------------------------- formats


WRAPPERS: dict[str, Callable[[OrderedDict[str, Tensor]], Any]] = {
    "flat": lambda sd: sd,
    "model": lambda sd: {"model": sd},
    "segmenter": lambda sd: {
        "segmenter": OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        "epoch_start": 12,
        "best_val": np.float64(0.625),  # NumPy scalar, as training scripts store it
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
    },
    "weights": lambda sd: {"weights": sd, "num_classes": CLASSES, "dataset": "toy"},
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
@pytest.mark.parametrize("fmt", list(WRAPPERS))
def test_wrapper_round_trip(
    fmt: str, in_memory: bool, source: nn.Module, target: nn.Module, x: Tensor, tmp_path: Path
) -> None:
    assert not _outputs_equal(source, target, x)
    obj = WRAPPERS[fmt](_sd(source))
    if in_memory:
        report = load_checkpoint(target, obj)
        assert report.source == "<in-memory checkpoint>"
    else:
        path = tmp_path / f"{fmt}.pth"
        torch.save(obj, path)
        report = load_checkpoint(target, path)
        assert report.source == str(path)
    assert isinstance(report, LoadReport)
    assert report.format == fmt
    assert report.loaded_keys == _n_loadable(source)
    assert report.stripped_prefix == ("module." if fmt == "segmenter" else "")
    assert report.missing_keys == []
    assert all(k.endswith("num_batches_tracked") for k in report.ignored_keys)
    assert _outputs_equal(source, target, x)
    if fmt == "segmenter":
        assert report.metadata == {"epoch_start": 12, "best_val": 0.625}
        assert isinstance(report.metadata["best_val"], float)
    if fmt == "weights":
        assert report.metadata == {"num_classes": CLASSES, "dataset": "toy"}


def test_own_format_round_trip_with_metadata(
    source: nn.Module, target: nn.Module, x: Tensor, tmp_path: Path
) -> None:
    path = tmp_path / "sub" / "ours.pth"
    save_checkpoint(
        path,
        source,
        model_name=NAME,
        label_set="person_part",
        num_classes=CLASSES,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        network_size=(480, 640),
        extra={"epoch": 5, "miou": 0.5, "note": ["a", "b"]},
    )
    # Loadable with the safe loader alone (plain metadata only).
    raw = torch.load(path, weights_only=True)
    assert raw["refinenet_ros_checkpoint"] == 1
    report = load_checkpoint(target, path)
    assert report.format == "refinenet_ros"
    assert report.loaded_keys == _n_loadable(source)
    assert _outputs_equal(source, target, x)
    meta = read_checkpoint_metadata(path)
    assert meta is not None
    assert meta == report.metadata
    assert meta["model_name"] == NAME
    assert meta["label_set"] == "person_part"
    assert meta["num_classes"] == CLASSES
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert meta["network_size"] == [480, 640]
    assert meta["cascaded"] is False
    assert meta["extra"] == {"epoch": 5, "miou": 0.5, "note": ["a", "b"]}
    assert meta["torch_version"] == torch.__version__
    assert "model lw_refinenet_mobilenetv2" in report.summary()


def test_own_format_label_list_and_no_network_size(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "ours.pth"
    save_checkpoint(
        path, source, model_name=NAME, label_set=("bg", "a", "b", "c"), num_classes=CLASSES,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, network_size=None,
    )  # fmt: skip
    meta = read_checkpoint_metadata(path)
    assert meta is not None and meta["label_set"] == ["bg", "a", "b", "c"] and meta["network_size"] is None


def test_metadata_of_published_format_is_none(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "flat.pth"
    torch.save(_sd(source), path)
    assert read_checkpoint_metadata(path) is None


def test_num_batches_tracked_ignored_both_ways(source: nn.Module, target: nn.Module, x: Tensor) -> None:
    with_nbt = _sd(source)
    n_nbt = sum(k.endswith("num_batches_tracked") for k in with_nbt)
    assert n_nbt > 0
    report = load_checkpoint(target, with_nbt)
    assert len(report.ignored_keys) == n_nbt
    assert f"ignored {n_nbt} ({n_nbt} num_batches_tracked)" in report.summary()
    # Old checkpoints have no num_batches_tracked at all: still a strict, complete load.
    without = OrderedDict((k, v) for k, v in _sd(source).items() if not k.endswith("num_batches_tracked"))
    fresh = build_model(NAME, CLASSES, seed=2)
    report = load_checkpoint(fresh, without, strict=True)
    assert report.ignored_keys == [] and report.loaded_keys == len(without)
    assert _outputs_equal(source, fresh, x)


def test_summary_is_one_line(source: nn.Module, target: nn.Module) -> None:
    report = load_checkpoint(target, {"segmenter": {f"module.{k}": v for k, v in _sd(source).items()}})
    line = report.summary()
    assert "\n" not in line
    assert line.startswith(f"loaded {_n_loadable(source)} tensors from <in-memory checkpoint> (segmenter")
    assert "stripped 'module.'" in line


# ---------------------------------------------------------------------------- failures


def test_missing_decoder_key_is_always_an_error(source: nn.Module, target: nn.Module) -> None:
    sd = _sd(source)
    del sd["crp2.0.3_outvar_dimred.weight"]
    before = _sd(target)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="missing 1 decoder key") as info:
            load_checkpoint(target, sd, strict=strict)
        assert "crp2.0.3_outvar_dimred.weight" in str(info.value)
    after = _sd(target)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_many_missing_keys_are_summarised(source: nn.Module, target: nn.Module) -> None:
    sd = OrderedDict((k, v) for k, v in _sd(source).items() if not k.startswith("crp"))
    with pytest.raises(CheckpointError, match=r"missing 16 decoder key\(s\)") as info:
        load_checkpoint(target, sd)
    assert "(+11 more)" in str(info.value)


def test_missing_backbone_key_strict_vs_lenient(source: nn.Module, target: nn.Module) -> None:
    sd = _sd(source)
    del sd["layer4.1.output.0.0.weight"]
    with pytest.raises(CheckpointError, match="missing 1 backbone key") as info:
        load_checkpoint(target, sd, strict=True)
    assert "layer4.1.output.0.0.weight" in str(info.value) and "strict=False" in str(info.value)
    report = load_checkpoint(target, sd, strict=False)
    assert report.missing_keys == ["layer4.1.output.0.0.weight"]
    assert "1 backbone keys missing" in report.summary()


def test_missing_backbone_key_resnet_model() -> None:
    src = build_model("lw_refinenet_resnet50", 2, seed=0)
    dst = build_model("lw_refinenet_resnet50", 2, seed=1)
    sd = _sd(src)
    del sd["layer1.0.conv1.weight"], sd["bn1.weight"]
    report = load_checkpoint(dst, sd, strict=False)
    assert sorted(report.missing_keys) == ["bn1.weight", "layer1.0.conv1.weight"]
    del sd["p_ims1d2_outl3_dimred.weight"]
    with pytest.raises(CheckpointError, match=r"p_ims1d2_outl3_dimred\.weight"):
        load_checkpoint(dst, sd, strict=False)


def test_unexpected_keys_strict_vs_lenient(source: nn.Module, target: nn.Module) -> None:
    sd = _sd(source)
    sd["aux_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"does not have: aux_head\.weight"):
        load_checkpoint(target, sd)
    report = load_checkpoint(target, sd, strict=False)
    assert "aux_head.weight" in report.ignored_keys


def test_class_count_mismatch_names_key_shapes_and_labels(source: nn.Module) -> None:
    other = build_model(NAME, 21, seed=0)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(other, _sd(source), strict=False)
    msg = str(info.value)
    assert "segm.weight: checkpoint [4, 256, 3, 3] vs model [21, 256, 3, 3]" in msg
    assert "segm.bias: checkpoint [4] vs model [21]" in msg
    assert "4 classes" in msg and "built for 21" in msg and "labels=..." in msg


def test_skip_classifier_allows_new_class_count(source: nn.Module, x: Tensor) -> None:
    other = build_model(NAME, 21, seed=0)
    report = load_checkpoint(other, _sd(source), skip_classifier=True)
    assert {"segm.weight", "segm.bias"} <= set(report.ignored_keys)
    assert report.loaded_keys == _n_loadable(source) - 2
    assert torch.equal(other.state_dict()["conv8.weight"], source.state_dict()["conv8.weight"])


def test_other_shape_mismatch(source: nn.Module, target: nn.Module) -> None:
    sd = _sd(source)
    sd["conv8.weight"] = torch.zeros(128, 320, 1, 1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, sd, strict=False)
    assert "conv8.weight: checkpoint [128, 320, 1, 1] vs model [256, 320, 1, 1]" in str(info.value)


def test_wrong_architecture_says_what_the_checkpoint_is(target: nn.Module) -> None:
    resnet_sd = build_model("lw_refinenet_resnet50", 21, seed=0).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, resnet_sd)
    assert "looks like 'lw_refinenet_resnet50' with 21 classes" in str(info.value)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({}, "empty"),
        ({"foo": 1, "bar": "baz"}, "without tensors.*foo, bar"),
        ({"unrelated.weight": torch.zeros(2), "other": torch.ones(1)}, "none of the 2 entries"),
        ({"model": {}}, "none of the 0 entries"),
        ({"model": {"a": 1}}, "not a state_dict"),
        ([torch.zeros(1)], "holds a list, not a dict"),
    ],
)
def test_unrelated_objects_are_rejected(obj: Any, match: str, target: nn.Module) -> None:
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(target, obj) if isinstance(obj, dict) else _load_saved(target, obj)


def _load_saved(model: nn.Module, obj: Any) -> LoadReport:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "obj.pth"
        torch.save(obj, path)
        return load_checkpoint(model, path)


def test_a_refused_checkpoint_is_caught_by_the_package_error_root(target: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(RefineNetRosError, match=r"notes\.pth"):
        load_checkpoint(target, path)


@pytest.mark.parametrize("kind", ["text", "empty", "missing", "directory", "truncated"])
def test_unreadable_files_name_the_path(
    kind: str, source: nn.Module, target: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "truncated":
        torch.save(_sd(source), path)
        path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    msg = str(info.value)
    assert str(path) in msg
    assert "torch.save" in msg  # says what was expected
    with pytest.raises(CheckpointError):
        read_checkpoint_metadata(path)


def test_unsafe_pickle_is_refused(target: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "hook": os.getcwd, "x": Path("/")}, path)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint this package can read") as info:
        load_checkpoint(target, path)
    assert "weights_only" not in str(info.value)  # never relay torch's advice to load unsafely


# ---------------------------------------------------------------------------- saving


def _save(path: Path, model: nn.Module, **overrides: Any) -> None:
    kwargs: dict[str, Any] = dict(
        model_name=NAME, label_set="voc", num_classes=CLASSES, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        network_size=(64, 64),
    )  # fmt: skip
    kwargs.update(overrides)
    save_checkpoint(path, model, **kwargs)


def test_atomic_save_leaves_only_the_file(source: nn.Module, target: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "m.pth"
    _save(path, source)
    _save(path, target)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]
    report = load_checkpoint(build_model(NAME, CLASSES, seed=3), path)
    assert report.loaded_keys == _n_loadable(target)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_failed_save_keeps_old_file_and_no_temp(
    source: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.pth"
    _save(path, source)
    before = path.read_bytes()

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path, source)
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model_name": "fcn8s"}, "unknown model_name"),
        ({"num_classes": 21}, "built for 4 classes"),
        ({"mean": (0.5, 0.5)}, "mean and std"),
        ({"network_size": (0, 10)}, "network_size"),
        ({"extra": {"fn": print}}, "plain data"),
    ],
)
def test_save_validates_arguments(
    overrides: dict[str, Any], match: str, source: nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=match):
        _save(tmp_path / "m.pth", source, **overrides)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- identification


def test_guess_model_name_and_classes() -> None:
    with torch.device("meta"):
        for name in MODEL_NAMES:
            sd = build_model(name, 11).state_dict()
            assert guess_model_name(sd) == name
            assert checkpoint_num_classes(sd) == 11
            prefixed = {f"module.{k}": v for k, v in sd.items()}
            assert guess_model_name(prefixed) == name
            assert checkpoint_num_classes(prefixed) == 11
        cascaded = build_model("refinenet_resnet50", 5, cascaded=True).state_dict()
    assert guess_model_name(cascaded) == "refinenet_resnet50"
    assert guess_model_name({"foo.weight": torch.zeros(1)}) is None
    assert checkpoint_num_classes({}) is None


def test_cascaded_round_trip_and_backbone_prefixes(tmp_path: Path) -> None:
    with torch.device("meta"):
        meta_model = build_model("refinenet_resnet50", 3, cascaded=True)
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta_model.state_dict().items()}
    del sd["encoders.1.layer2.0.conv1.weight"]
    with torch.device("meta"):
        model = build_model("refinenet_resnet50", 3, cascaded=True)
    with pytest.raises(CheckpointError, match="backbone"):
        load_checkpoint(model, sd)
    del sd["refine2.out_rcu.1_conv.bias"]
    with pytest.raises(CheckpointError, match=r"decoder key.*refine2.out_rcu.1_conv.bias"):
        load_checkpoint(model, sd, strict=False)


# --- checkpoints that would load without a word and give wrong labels -------------------------


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from refinenet_ros.models import build_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "good.pt"
    model = build_model(NAME, 11, seed=0)
    save_checkpoint(path, model, model_name=NAME, label_set="camvid", num_classes=11, mean=(0.5,) * 3,
                    std=(0.5,) * 3, network_size=(64, 64))  # fmt: skip
    return path


def _lying(
    good: Path,
    out: Path,
    *,
    metadata: dict[str, Any] | None = None,
    tensors: Callable[[dict[str, Tensor]], None] | None = None,
    rehash: bool = False,
) -> Path:
    from refinenet_ros.models.checkpoint_file import state_digest

    obj = torch.load(good, weights_only=True)
    obj["metadata"].update(metadata or {})
    if tensors is not None:
        tensors(obj["state_dict"])
        if rehash:
            obj["metadata"]["state_sha256"] = state_digest(obj["state_dict"])
    torch.save(obj, out)
    return out


def _flip_bits(sd: dict[str, Tensor]) -> None:
    w = sd["segm.weight"]
    w.view(torch.int32).reshape(-1)[:8] ^= 1 << 22


def _all_nan(sd: dict[str, Tensor]) -> None:
    for v in sd.values():
        if v.is_floating_point():
            v.fill_(float("nan"))


LIES: dict[str, tuple[dict[str, Any], Any, bool, str]] = {
    "unknown label set": ({"label_set": "no_such_labels"}, None, False, "no_such_labels"),
    "size a string": ({"network_size": "big"}, None, False, "network size"),
    "size negative": ({"network_size": [-64, 64]}, None, False, "network size"),
    "size zero": ({"network_size": [0, 0]}, None, False, "network size"),
    "size 1x1": ({"network_size": [1, 1]}, None, False, "32..8192"),
    "mean of strings": ({"mean": ["a", "b", "c"]}, None, False, "mean"),
    "mean NaN": ({"mean": [float("nan"), 0.5, 0.5]}, None, False, "mean"),
    "std zero": ({"std": [0.0, 0.5, 0.5]}, None, False, "std"),
    "bit flips in tensor data": ({}, _flip_bits, False, "damaged"),
    "all-NaN weights": ({}, _all_nan, True, "NaN"),
}


@pytest.mark.parametrize("case", sorted(LIES))
def test_lying_or_damaged_checkpoints_are_refused_in_one_line(
    good_checkpoint: Path, tmp_path: Path, capsys, case: str
) -> None:
    from refinenet_ros.cli import main

    metadata, tensors, rehash, named = LIES[case]
    bad = _lying(good_checkpoint, tmp_path / "bad.pt", metadata=metadata, tensors=tensors, rehash=rehash)
    image = tmp_path / "x.png"
    from refinenet_ros.io import write_rgb_png

    write_rgb_png(image, np.zeros((40, 40, 3), np.uint8))
    out = str(tmp_path / "o")
    rc = main(["segment", str(image), "--weights", str(bad), "--backend", "torch", "--out", out])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    # the good file runs
    assert main(["segment", str(image), "--weights", str(good_checkpoint), "--backend", "torch",
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip


def test_bundled_weights_are_checked_against_their_hash() -> None:
    import dataclasses

    from refinenet_ros.weights import WEIGHTS, WeightsError

    for weights in WEIGHTS.values():
        assert len(weights.sha256) == 64 and weights.path.is_file()  # the shipped file is intact
        with pytest.raises(WeightsError, match="damaged"):
            _ = dataclasses.replace(weights, sha256="0" * 64).path
