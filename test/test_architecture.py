"""The package's shape a contributor must keep: one error root a user can catch, and module
boundaries (no import cycles, the library never imports the command line, the core imports
without ROS)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import refinenet_ros
from refinenet_ros.errors import RefineNetRosError

NEEDS_TENSORRT = {"refinenet_ros.backends.tensorrt"}
"""Modules that import only where TensorRT itself is installed (the stubs are not enough)."""

CONTROL_FLOW = {"BuildNeeded", "BuildCancelled", "ConfigureInterrupted", "Terminated"}
"""Exceptions that steer the program (a build handed to a child process, a shutdown) and are
caught inside the package; a user never sees them."""


def package_modules() -> list[ModuleType]:
    modules = []
    for info in pkgutil.walk_packages(refinenet_ros.__path__, "refinenet_ros."):
        if info.name.endswith("__main__") or info.name in NEEDS_TENSORRT:
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def test_every_error_a_user_can_see_derives_from_the_package_root() -> None:
    strays = [
        f"{module.__name__}.{name}"
        for module in package_modules()
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
        and name not in CONTROL_FLOW
        and not issubclass(obj, RefineNetRosError)
    ]
    assert strays == [], f"derive these from refinenet_ros.errors.RefineNetRosError: {strays}"


def test_one_except_clause_catches_a_refusal_from_any_layer() -> None:
    from refinenet_ros.config import ModelConfig

    with pytest.raises(RefineNetRosError, match="no-such-weights"):
        ModelConfig(weights="no-such-weights").resolved()


REPO = Path(__file__).resolve().parent.parent
TRACKER_REFERENCE = re.compile(
    r"(?<![\w&/])(?<!message )#\d{1,5}(?!\w)|\bissues? #?\d+|\bPR #?\d+", re.IGNORECASE
)
"""A hash sign and a number, or "issue" and a number: a tracker a user cannot see. Hex
colours, ``# noqa`` and the bag tool's own "message #<n>" warnings do not match."""
NOT_SHIPPED = {".git", ".venv", "build", "install", "log", "engines", "demo_out"}


def shipped_text_files() -> list[Path]:
    files = []
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in NOT_SHIPPED or any(p.startswith(".") and p != ".ci" for p in rel.parts):
            continue
        if not path.is_file() or "__pycache__" in rel.parts or ".egg-info" in str(rel):
            continue
        if rel == Path("CHANGELOG.md") or path.suffix in (".pt", ".pth", ".onnx", ".png", ".jpg", ".mcap"):
            continue
        files.append(path)
    return files


def test_code_docs_and_tests_name_no_tracker_issue_only_the_changelog_does() -> None:
    """Code and docs say what and why; which issue asked for it is history, kept in commit
    messages and CHANGELOG.md."""
    hits = []
    for path in shipped_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary data: no prose in it
        for number, line in enumerate(text.splitlines(), 1):
            if TRACKER_REFERENCE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == [], "reword to what and why (history goes in CHANGELOG.md):\n" + "\n".join(hits)


def test_the_tracker_pattern_catches_references_and_spares_colours_and_noqa() -> None:
    number = "12"  # split so that this file does not trip its own check
    assert TRACKER_REFERENCE.search(f"fixed in issue {number}")
    assert TRACKER_REFERENCE.search(f"(see #{number})")
    assert not TRACKER_REFERENCE.search("color: #1a2b3c; x = 1  # noqa: E501; topic message #3")
