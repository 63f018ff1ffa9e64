"""One vocabulary across the CLI, checked over every subcommand of the real parser
(nested bench subcommands and fleet included): a shared concept has one spelling, one help
text and one value type; every default shows in ``--help``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from refinenet_ros.cli import (
    IMAGE_TOPIC_HELP,
    MAX_NETWORK_SIDE,
    NETWORK_SIZE_HELP,
    CliParser,
    DefaultsHelpFormatter,
    add_backend_arguments,
    add_image_size_argument,
    add_image_topic_argument,
    add_model_arguments,
    add_network_size_argument,
    add_outputs_argument,
    build_parser,
    format_default,
    shows_default,
)


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf (sub)command parser by its full name ("bag", "bench model")."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found[full] = sub
                found.update(subcommands(sub, full))
    return found


PARSER = build_parser()
COMMANDS = subcommands(PARSER)

# Dialects the issue names: spellings of a shared concept that must not be a visible option.
DIALECTS = {
    "--resolution": "--network-size",
    "--height": "--network-size",
    "--width": "--network-size",
    "--topic": "--image-topic",
    "--label-dir": "--labels-dir",
    "--val-label-dir": "--val-labels-dir",
    "--size": "--image-size",
}

# Options whose name is shared but whose meaning is each command's own (why, per option).
PER_COMMAND = {
    "--out": "a folder of PNGs, a checkpoint folder, an .onnx file, a packed checkpoint...",
    "--batch": "images per backend call vs the static batch of an export or engine",
    "--precision": "build-engine offers only TensorRT's precisions, default fp16",
    "--device": "build-engine: the CUDA device an engine is built for, default cuda:0",
    "--json": "weights: print the registry; bench: write the figures",
    "--frames": "frames played (demo) or generated (bench)",
    "--rate": "player rate of demo and bench node",
    "--backend": "bench model measures several backends (a list)",
    "--workers": "bench fleet measures several fleet widths (a list)",
    "--calib-count": "bench model calibrates on fewer images to stay quick",
    "--storage": "storage of the written vs the generated bag",
    "--threads": "bench: threads of the measured backend",
    "--weights": "train starts from random weights (or --backbone-init), not the bundled model",
    "--force": "replace what a command would otherwise refuse to overwrite: an output bag, an earlier run",
    "--engine-dir": "the same cache; bench may say it in its own words",
    "--iterations": "bench-only",
    "--warmup": "bench-only",
    "--flip": "evaluate averages the model over the mirror image, label averages the teacher",
    "--scales": "evaluate averages the model over scales, label averages the teacher",
    "--labels": "label: the set of the written labels when no --mapping names it",
}


def visible_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        opt: a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
        for opt in a.option_strings
    }


VARIANT_BASES = {
    "--network-size": NETWORK_SIZE_HELP.format(max=MAX_NETWORK_SIDE),
    "--image-topic": IMAGE_TOPIC_HELP,
}


def reference_actions() -> dict[str, argparse.Action]:
    """The helpers' own definitions: what every command's copy of a shared option must equal."""
    p = CliParser(prog="reference")
    add_model_arguments(p)
    add_backend_arguments(p)  # --network-size among them
    add_image_size_argument(p)
    add_image_topic_argument(p)
    add_outputs_argument(p)
    return visible_options(p)


def test_the_walk_sees_every_command() -> None:
    assert {"segment", "bag", "evaluate", "train", "export", "build-engine", "demo", "fleet"} <= set(COMMANDS)
    assert any(name.startswith("bench ") for name in COMMANDS), sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_dialect_spelling_is_visible(name: str) -> None:
    parser = COMMANDS[name]
    for old, new in DIALECTS.items():
        assert old not in parser._option_string_actions, f"{name}: {old} is a dialect of {new}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_options_are_the_helpers_definitions(name: str) -> None:
    reference = reference_actions()
    for opt, action in visible_options(COMMANDS[name]).items():
        ref = reference.get(opt)
        if ref is None or opt in PER_COMMAND:
            continue
        # Variants (repeatable, required) add a sentence to the one shared text, nothing else.
        base = VARIANT_BASES.get(opt, ref.help or "")
        assert action.help is not None and action.help.startswith(base), f"{name} {opt}: own help"
        assert action.type is ref.type, f"{name} {opt}: type {action.type} vs {ref.type}"
        assert action.metavar == ref.metavar, f"{name} {opt}: metavar"
        assert action.nargs == ref.nargs, f"{name} {opt}: nargs"


def test_an_option_in_several_commands_means_one_thing() -> None:
    shared = reference_actions()  # checked against the helpers themselves, variants included
    seen: dict[str, tuple[str, argparse.Action]] = {}
    problems = []
    for name, parser in sorted(COMMANDS.items()):
        for opt, action in visible_options(parser).items():
            if opt in PER_COMMAND or opt in ("-h", "--help") or opt in shared:
                continue
            if opt not in seen:
                seen[opt] = (name, action)
                continue
            first, ref = seen[opt]
            if (
                action.help != ref.help
                or action.type is not ref.type
                or type(action.default) is not type(ref.default)
            ):
                problems.append(f"{opt}: {first} says {ref.help!r} ({ref.default!r}), {name} {action.help!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_default(name: str) -> None:
    parser = COMMANDS[name]
    assert parser.formatter_class is DefaultsHelpFormatter
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not shows_default(action):
            continue
        assert action.help, f"{name} {action.option_strings}: no help, so its default is not shown"
        assert format_default(action.default) in text, f"{name} {action.option_strings}: default hidden"
        shown = DefaultsHelpFormatter(prog="x")._get_help_string(action)
        assert shown.count("(default") <= 1, f"{name} {action.option_strings}: default said twice"


def test_train_help_shows_the_recipe_defaults() -> None:
    text = " ".join(COMMANDS["train"].format_help().split())
    for fragment in ("(default: 1000)", "(default: 8)", "(default: 320 320)", "(default: 0.0005)"):
        assert fragment in text


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_outputs_take_commas_or_spaces_and_refuse_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["bag", "in", "out", "--image-topic", "/cam"]
    assert parse(*base, "--outputs", "labels,color").outputs == ("labels", "color")
    assert parse(*base, "--outputs", "labels", "color", "labels").outputs == ("labels", "color")
    with pytest.raises(SystemExit) as exc:
        parse(*base, "--outputs", "labels,colour")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'colour'" in err and "labels, color, overlay, confidence" in err


def test_network_size_sides_are_checked_while_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("segment", "--samples", "--network-size", "100000", "64")
    assert "32..8192" in capsys.readouterr().err
    p = CliParser(prog="t")
    add_network_size_argument(p, multiple=True, default=[(480, 640)])
    assert p.parse_args([]).network_size == [(480, 640)]
    sizes = p.parse_args(["--network-size", "360", "480", "--network-size", "64", "96"]).network_size
    assert sizes == [(360, 480), (64, 96)]  # the default is replaced, not extended


def test_default_cache_dir_is_not_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refinenet_ros.backends.engine_cache import default_cache_dir

    monkeypatch.delenv("REFINENET_ROS_CACHE", raising=False)
    monkeypatch.delenv("ROS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cache = Path(default_cache_dir())
    assert cache.is_absolute(), cache
    assert work not in cache.resolve().parents and cache.resolve() != work
    assert cache == tmp_path / "home" / ".ros" / "refinenet_ros"
    assert os.path.commonpath([cache, work]) != str(work)
