"""`refinenet-ros train`: the loop learns, checkpoints load elsewhere, resume is exact."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from refinenet_ros.cli import main
from refinenet_ros.labels import get_label_set
from refinenet_ros.models import build_model, load_checkpoint, read_checkpoint_metadata
from refinenet_ros.training.datasets import open_dataset, write_shapes_dataset
from refinenet_ros.training.train import TrainConfig, decoder_lr_mult_for, param_groups, poly_lr, train

MODEL = "lw_refinenet_mobilenetv2"
LABELS = get_label_set("person_part")  # 7 classes; the toy set uses 0..3


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, "train", 48, (48, 48), classes=4, seed=0)
    write_shapes_dataset(root, "val", 12, (48, 48), classes=4, seed=1)
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1 min on 2 idle cores; generous for a loaded CI machine
def test_validation_miou_rises_far_above_chance(shapes: Path, tmp_path: Path) -> None:
    """A randomly initialised network trained for 300 SGD steps on coloured shapes.

    The encoder starts from random weights here (no downloads), so it gets the decoder's
    learning rate (the x10 decoder multiplier assumes a pretrained encoder).
    """
    torch.manual_seed(0)
    model = build_model(MODEL, LABELS.num_classes, seed=0)
    config = TrainConfig(
        steps=300, batch_size=4, crop_size=(48, 48), scale_range=(0.75, 1.25), lr=4e-3,
        decoder_lr_mult=1.0, val_every=100, checkpoint_every=100, seed=0,
    )  # fmt: skip
    train_set = open_dataset("folders", shapes, "train")
    val_set = open_dataset("folders", shapes, "val")
    result = train(model, MODEL, LABELS, train_set, val_set, config, out_dir=tmp_path)
    steps = [s for s, _ in result.history]
    assert steps == [0, 100, 200, 300]
    before, after = result.history[0][1], result.history[-1][1]
    print(f"validation mIoU before {100 * before:.1f} % -> after {100 * after:.1f} %")
    assert before < 0.2  # chance: 4 classes present, random network
    assert after > 0.6 and after > 3 * before
    assert result.best_miou == max(m for _, m in result.history)
    assert sum(result.losses[-20:]) < 0.5 * sum(result.losses[:20])
    # best.pt is an ordinary checkpoint: metadata for the other tools, loadable weights.
    meta = read_checkpoint_metadata(tmp_path / "best.pt")
    assert meta is not None and meta["model_name"] == MODEL and meta["label_set"] == "person_part"
    assert meta["extra"]["best_miou"] == pytest.approx(result.best_miou)
    fresh = build_model(MODEL, LABELS.num_classes, seed=5)
    load_checkpoint(fresh, tmp_path / "last.pt")
    for (k, a), b in zip(fresh.state_dict().items(), model.state_dict().values(), strict=True):
        if not k.endswith("num_batches_tracked"):  # a counter checkpoints do not carry
            assert torch.equal(a, b), k


RECIPES: dict[str, dict[str, Any]] = {
    "sgd": {},
    # the bundled CamVid model's recipe: AdamW state, warm-up, jitter draws and class weights
    # must all resume exactly too
    "camvid-recipe": {"optimizer": "adamw", "jitter": 0.3, "class_weighting": "enet", "warmup_steps": 3,
                      "freeze_bn": True},
}  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_resume_from_mid_run_checkpoint_matches_straight_run(
    shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: str
) -> None:
    train_set = open_dataset("folders", shapes, "train").subset(8)
    config = TrainConfig(steps=4, batch_size=2, crop_size=(48, 48), lr=1e-3, val_every=0, checkpoint_every=2,
                         **RECIPES[recipe])  # fmt: skip
    straight = build_model(MODEL, LABELS.num_classes, seed=0)
    train(straight, MODEL, LABELS, train_set, None, config, out_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    # Interrupt the same 4-step run right after its step-2 checkpoint (as Ctrl-C would).
    import refinenet_ros.training.train as train_module

    original = train_module._save_optimizer
    calls: list[int] = []

    def save_then_stop(path: Path, optimizer: torch.optim.Optimizer, step: int) -> None:
        original(path, optimizer, step)
        calls.append(step)
        if step == 2:
            raise Stop

    monkeypatch.setattr(train_module, "_save_optimizer", save_then_stop)
    with pytest.raises(Stop):
        first = build_model(MODEL, LABELS.num_classes, seed=0)
        train(first, MODEL, LABELS, train_set, None, config, out_dir=tmp_path / "b")
    monkeypatch.undo()
    assert calls == [2]
    resumed = build_model(MODEL, LABELS.num_classes, seed=7)
    train(resumed, MODEL, LABELS, train_set, None, config, resume=tmp_path / "b" / "last.pt")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        if not k.endswith("num_batches_tracked"):  # a counter checkpoints do not carry
            assert torch.allclose(a, b, atol=1e-6), k


def test_param_groups_lr_schedule_and_frozen_bn() -> None:
    model = build_model(MODEL, LABELS.num_classes, seed=0)
    assert decoder_lr_mult_for(MODEL) == 10.0 and decoder_lr_mult_for("refinenet_resnet101") == 1.0
    groups = param_groups(model, 1e-3, 10.0, freeze_bn=True)
    enc, dec = groups
    assert enc["lr"] == 1e-3 and dec["lr"] == pytest.approx(1e-2)
    n_bn = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()
    )
    assert n_bn > 0
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == total - n_bn
    assert poly_lr(1.0, 0, 100, 0.9) == 1.0 and poly_lr(1.0, 100, 100, 0.9) == 0.0
    assert poly_lr(1.0, 50, 100, 0.9) == pytest.approx(0.5**0.9)


def test_frozen_bn_keeps_running_stats(shapes: Path) -> None:
    model = build_model(MODEL, LABELS.num_classes, seed=0)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.running_mean is not None
    mean_before = bn.running_mean.clone()
    weight_before = bn.weight.detach().clone()
    train_set = open_dataset("folders", shapes, "train").subset(4)
    config = TrainConfig(steps=2, batch_size=2, crop_size=(48, 48), lr=1e-3, val_every=0, freeze_bn=True)
    train(model, MODEL, LABELS, train_set, None, config)
    assert torch.equal(bn.running_mean, mean_before) and torch.equal(bn.weight.detach(), weight_before)


def test_cli_train_then_segment_with_the_checkpoint(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main([
        "train", "--root", str(shapes), "--labels", "person_part", "--model", MODEL, "--steps", "3",
        "--batch-size", "2", "--crop", "48", "48", "--val-every", "0", "--val-limit", "2",
        "--out", str(out), "--no-progress", "--lr", "1e-3",
    ])  # fmt: skip
    assert rc == 0
    meta = read_checkpoint_metadata(out / "last.pt")
    assert meta is not None and meta["extra"]["step"] == 3
    history = meta["extra"]["val_history"]
    assert [s for s, _ in history] == [0, 3] and all(not math.isnan(m) for _, m in history)
    # Labels and model come from the checkpoint's metadata.
    seg_out = tmp_path / "seg"
    img = next((shapes / "images" / "val").iterdir())
    assert main(["segment", str(img), "--weights", str(out / "best.pt"), "--out", str(seg_out),
                 "--backend", "torch"]) == 0  # fmt: skip
    assert (seg_out / f"{img.stem}_labels.png").is_file()
    # Errors are one line, exit 2.
    assert main(["train", "--root", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert main(["train", "--root", str(shapes), "--resume", str(tmp_path / "x.pt")]) == 2


def test_cli_recipe_file_sets_options_and_flags_override_it(shapes: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {MODEL}\nlabels: person_part\nroot: {shapes}\nsteps: 50\nbatch_size: 2\ncrop: [48, 48]\n"
        "optimizer: adamw\njitter: 0.2\nwarmup_steps: 1\nval_every: 0\nval_limit: 2\n"
    )
    out = tmp_path / "run"
    # --steps on the command line wins over the recipe's 50
    assert main(["train", "--config", str(recipe), "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    meta = read_checkpoint_metadata(out / "last.pt")
    assert meta is not None
    cfg = meta["extra"]["train_config"]
    assert (cfg["steps"], cfg["optimizer"], cfg["jitter"], cfg["crop_size"]) == (2, "adamw", 0.2, [48, 48])
    recipe.write_text("stepz: 3\n")
    assert main(["train", "--config", str(recipe), "--out", str(out)]) == 2
    assert main(["train", "--root", str(shapes), "--lr", "-1", "--out", str(out)]) == 2


def test_cli_train_refuses_ground_truth_beyond_the_label_set(tmp_path: Path, capsys) -> None:
    from refinenet_ros.io import write_label_png, write_rgb_png

    rng = np.random.default_rng(0)
    for i in range(2):
        write_rgb_png(tmp_path / "images" / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
        label = np.zeros((40, 40), np.uint8)
        label[10:20, 10:20] = 200  # not a person_part class, not the ignore index
        write_label_png(tmp_path / "labels" / f"{i}.png", label, get_label_set("person_part"))
    rc = main([
        "train", "--root", str(tmp_path), "--labels", "person_part", "--steps", "1", "--batch-size", "2",
        "--crop", "40", "40", "--val-split", "none", "--out", str(tmp_path / "run"), "--no-progress",
    ])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "[200]" in err and "--labels" in err and "Traceback" not in err


# --- nothing lost, nothing silent ------------------------------------------------------------

TINY = ["--model", MODEL, "--labels", "person_part", "--batch-size", "2", "--crop", "48", "48",
        "--val-split", "none", "--no-progress", "--lr", "1e-3"]  # fmt: skip


def _train(shapes: Path, out: Path, *extra: str) -> int:
    return main(["train", "--root", str(shapes), *TINY, "--out", str(out), *extra])


def _step(path: Path) -> int:
    meta = read_checkpoint_metadata(path)
    assert meta is not None
    return int(meta["extra"]["step"])


def test_a_new_run_never_replaces_an_earlier_one_without_force(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(shapes, out, "--steps", "3") == 0
    capsys.readouterr()
    assert _train(shapes, out, "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "earlier run" in err and "--resume" in err and "--force" in err and "Traceback" not in err
    assert _step(out / "last.pt") == 3  # the earlier result is intact
    # --resume with --steps at or below the checkpoint's step: refused, not "trained -N steps"
    assert _train(shapes, out, "--steps", "2", "--resume", str(out / "last.pt")) == 2
    assert "already at step 3" in capsys.readouterr().err
    assert _train(shapes, out, "--steps", "1", "--force") == 0
    assert _step(out / "last.pt") == 1
    printed = capsys.readouterr().out
    assert "best.pt" not in printed  # no validation: no best.pt is named


def test_resume_refuses_what_train_did_not_write_in_one_line(shapes: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(shapes, out, "--steps", "2", "--checkpoint-every", "1") == 0
    good = (out / "last.optim.pt").read_bytes()
    sgd_state = torch.load(out / "last.optim.pt", weights_only=True)
    adam = torch.optim.AdamW(build_model(MODEL, LABELS.num_classes).parameters())
    bad_optim = {
        "random bytes": np.random.default_rng(0).bytes(4096),
        "truncated": good[: len(good) // 2],
        "list": None,
        "no optimizer": None,
        "step not a number": None,
        "other optimizer": None,
    }
    for name, data in bad_optim.items():
        target = out / "last.optim.pt"
        if name == "list":
            torch.save([1, 2, 3], target)
        elif name == "no optimizer":
            torch.save({"step": 2}, target)
        elif name == "step not a number":
            torch.save({"step": "two", "optimizer": sgd_state["optimizer"]}, target)
        elif name == "other optimizer":
            torch.save({"step": 2, "optimizer": adam.state_dict()}, target)
        else:
            assert data is not None
            target.write_bytes(data)
        assert _train(shapes, out, "--steps", "3", "--resume", str(out / "last.pt")) == 2, name
        err = capsys.readouterr().err
        assert "Traceback" not in err and "weights_only=False" not in err, (name, err)
        assert "last.optim.pt" in err and len(err.strip().splitlines()) == 1, (name, err)
    (out / "last.optim.pt").write_bytes(good)
    # a weights-only checkpoint (no step, no optimiser) and a non-numeric step
    from refinenet_ros.models import save_checkpoint

    model = build_model(MODEL, LABELS.num_classes)
    for extra in ({}, {"step": "ten"}):
        save_checkpoint(tmp_path / "w.pt", model, model_name=MODEL, label_set="person_part",
                        num_classes=LABELS.num_classes, mean=(0.5,) * 3, std=(0.5,) * 3, network_size=None,
                        extra=extra)  # fmt: skip
        assert _train(shapes, tmp_path / "other", "--steps", "3", "--resume", str(tmp_path / "w.pt")) == 2
        err = capsys.readouterr().err
        assert "not a checkpoint written by refinenet-ros train" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--momentum", "-1"], "--momentum"),
        (["--crop", "100000", "100000"], "--crop"),
        (["--batch-size", "1", "--crop", "48", "48"], "--batch-size 1"),
        (["--weight-decay", "-1"], "--weight-decay"),
    ],
)
def test_bad_optimisation_options_are_one_line(
    shapes: Path, tmp_path: Path, capsys, options: list[str], named: str
) -> None:
    argv = ["train", "--root", str(shapes), "--model", MODEL, "--labels", "person_part", "--steps", "1",
            "--out", str(tmp_path / "run"), "--no-progress", *options]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("line", "named"),
    [('steps: "ten"', "steps"), ("crop: 48", "crop"), ("no_flip: maybe", "no_flip"),
     ("optimizer: lbfgs", "lbfgs")],
)  # fmt: skip
def test_recipe_values_are_checked_like_flags(
    shapes: Path, tmp_path: Path, capsys, line: str, named: str
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"root: {shapes}\nmodel: {MODEL}\n{line}\n")
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "--config" in err and "Traceback" not in err


def test_val_images_are_used_with_root_and_help_says_train_starts_random(
    shapes: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--root", str(shapes), *TINY[:-5], "--lr", "1e-3", "--no-progress", "--steps", "1",
               "--val-images", str(shapes / "images" / "val"),
               "--val-labels-dir", str(shapes / "labels" / "val"),
               "--val-split", "val", "--val-limit", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    assert "validation mIoU" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: random initialisation" in text and "default: the bundled camvid" not in text


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("signame", "rc", "word"), [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")]
)
def test_a_signal_while_writing_a_checkpoint_is_one_word_and_leaves_no_torn_file(
    shapes: Path, tmp_path: Path, signame: str, rc: int, word: str
) -> None:
    """The signal as soon as a checkpoint's temporary file appears: "terminated" (143) or
    "interrupted" (130), and whatever last.pt holds is a whole checkpoint that --resume reads."""
    import os
    import signal
    import subprocess
    import sys
    import time

    signum = getattr(signal, signame)

    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "refinenet_ros", "train", "--root", str(shapes), *TINY, "--steps", "400",
           "--checkpoint-every", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    caught = False
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if any(name.endswith(".tmp") for name in os.listdir(out)):
            proc.send_signal(signum)
            caught = True
            break
        time.sleep(0.0005)
    if not caught:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == rc, err
    assert word in err and "Traceback" not in err, err
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    if (out / "last.pt").exists():
        step = _step(out / "last.pt")
        optim = torch.load(out / "last.optim.pt", weights_only=True)
        assert optim["step"] == step  # weights and momentum of the same step
