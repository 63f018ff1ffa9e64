"""The package's shape a contributor must keep: one error root a user can catch, and module
boundaries (no import cycles, the library never imports the command line, the core imports
without ROS)."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
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
BINARY_SUFFIXES = {".pt", ".pth", ".onnx", ".png", ".jpg", ".mcap", ".db3", ".pyc"}


def shipped_text_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(REPO):
        rel = Path(folder).relative_to(REPO)
        dirs[:] = [
            d for d in dirs
            if not (rel == Path(".") and d in NOT_SHIPPED)
            and (not d.startswith(".") or d == ".ci")
            and d != "__pycache__" and not d.endswith(".egg-info")
        ]  # fmt: skip
        for name in names:
            path = Path(folder) / name
            if path.relative_to(REPO) == Path("CHANGELOG.md") or path.suffix in BINARY_SUFFIXES:
                continue
            files.append(path)
    return sorted(files)


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


# --- module boundaries -----------------------------------------------------------------------

PACKAGE = REPO / "refinenet_ros"


def module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (also inside functions: a lazy import
    is still a dependency), except under ``if TYPE_CHECKING:`` (never executed)."""
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for statement in block.body
            for node in ast.walk(statement)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target not in files and "." in target:
                    target = target.rpartition(".")[0]
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan), each an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_zero_import_cycles() -> None:
    """Each module can be read, tested and replaced from the bottom up: no module needs one
    that needs it back (``auto`` gets its candidate builder from the factory as an argument)."""
    assert [sorted(c) for c in import_cycles(import_graph())] == []


def test_the_library_never_imports_the_command_line() -> None:
    graph = import_graph()
    library = {m for m in graph if not m.startswith("refinenet_ros.cli") and m != "refinenet_ros.__main__"}
    offenders = {m: sorted(t for t in graph[m] if t.startswith("refinenet_ros.cli")) for m in library}
    assert {m: t for m, t in offenders.items() if t} == {}


ROS_PACKAGES = (
    "rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs",
    "builtin_interfaces", "launch", "launch_ros",
)  # fmt: skip

CORE_WITHOUT_ROS = f"""
import importlib, pkgutil, sys

class NoRos:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {ROS_PACKAGES!r}:
            raise ImportError(name + " is not installed")

sys.meta_path.insert(0, NoRos())
import refinenet_ros
for info in pkgutil.walk_packages(refinenet_ros.__path__, "refinenet_ros."):
    if info.name.startswith("refinenet_ros.ros.") or info.name.endswith("__main__"):
        continue
    if info.name in {sorted(NEEDS_TENSORRT)!r}:
        continue
    importlib.import_module(info.name)
print("ok")
"""


@pytest.mark.slow
def test_everything_but_the_ros_package_imports_without_ros() -> None:
    """The bag tool, training, benchmarks and the command line run where ROS 2 is not
    installed: every module outside ``refinenet_ros.ros`` imports with the ROS packages gone."""
    proc = subprocess.run([sys.executable, "-c", CORE_WITHOUT_ROS], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
