"""The package installs and starts on Humble, Jazzy and Kilted.

- every ``package.xml`` dependency is a ROS package of each distro or a rosdep key with a
  rule for its Ubuntu (and Debian) releases, so ``rosdep install --from-paths src`` never
  stops on an unknown key (checked against the rosdep snapshot in ../shared/vendor/rosdistro);
- every rclpy module the package imports exists in the Humble and Jazzy rclpy sources
  (../shared/vendor/rclpy-api), or its import falls back to one that does, and none is
  private. ``make typecheck`` type-checks the ROS glue against the same sources (pyright);
  Kilted is the rclpy the tests run.

Both skip with the reason when ../shared is not beside the checkout (a user's clone).
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT.parent / "shared" / "vendor"
DISTROS = ("humble", "jazzy", "kilted")
DEPEND_TAGS = ("depend", "exec_depend", "build_depend", "buildtool_depend", "test_depend")


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} is absent (it sits beside the checkout in the project's workspace)")
    return path


def package_keys() -> list[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    return [el.text.strip() for tag in DEPEND_TAGS for el in root.iter(tag) if el.text]


@cache
def rosdep_rules() -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for name in ("base.yaml", "python.yaml"):
        rules.update(yaml.safe_load((_need(VENDOR / "rosdistro") / "rosdep" / name).read_text()))
    return rules


@cache
def distribution(distro: str) -> tuple[set[str], dict[str, list[str]]]:
    """(ROS packages released for ``distro``, its platforms: os -> releases)."""
    data = yaml.safe_load((_need(VENDOR / "rosdistro") / distro / "distribution.yaml").read_text())
    packages: set[str] = set()
    for name, repo in data["repositories"].items():
        release = repo.get("release")
        if release:
            packages |= set(release.get("packages") or [name])
    return packages, data["release_platforms"]


def resolves(rule: Any, release: str) -> bool:
    """Whether a rosdep rule for one OS installs something on ``release`` (None: it does not)."""
    if isinstance(rule, dict) and not {"pip", "apt", "source"} & set(rule):
        rule = rule.get(release, rule.get("*"))
    return bool(rule)


@pytest.mark.parametrize("distro", DISTROS)
def test_every_package_xml_key_resolves(distro: str) -> None:
    packages, platforms = distribution(distro)
    rules = rosdep_rules()
    unresolved = []
    for key in package_keys():
        if key in packages:
            continue
        rule = rules.get(key)
        missing = [
            f"{os_name} {release}"
            for os_name in ("ubuntu", "debian")
            for release in platforms.get(os_name, [])
            if rule is None or not resolves(rule.get(os_name), release)
        ]
        if missing:
            unresolved.append(f"{key} ({', '.join(missing)})")
    assert not unresolved, f"rosdep cannot resolve on {distro}: {unresolved}"


def test_resolves_reads_rules_like_rosdep() -> None:
    torch = {"ubuntu": {"*": ["python3-torch"], "focal": None}}["ubuntu"]
    assert resolves(torch, "noble") and not resolves(torch, "focal")
    assert resolves({"pip": {"packages": ["onnxruntime"]}}, "jammy")
    assert not resolves(None, "jammy")


def rclpy_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, fallback modules of an ``except ImportError`` around it, line) per rclpy import."""
    tree = ast.parse(path.read_text())
    fallbacks: dict[int, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            alternatives = [
                imp.module or ""
                for handler in node.handlers
                for imp in ast.walk(handler)
                if isinstance(imp, ast.ImportFrom)
            ]
            for stmt in node.body:
                fallbacks[id(stmt)] = alternatives
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names[:1] if isinstance(node, ast.ImportFrom) else names:
            if name == "rclpy" or name.startswith("rclpy."):
                found.append((name, fallbacks.get(id(node), []), getattr(node, "lineno", 0)))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rclpy":
            found += [
                (f"{node.module}.{a.name}", [], node.lineno) for a in node.names if a.name.startswith("_")
            ]
    return found


def module_exists(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_rclpy_modules_exist_on(distro: str) -> None:
    root = _need(VENDOR / "rclpy-api" / distro) / "rclpy"
    problems = []
    for path in sorted((ROOT / "refinenet_ros").rglob("*.py")):
        for module, fallbacks, line in rclpy_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if any(part.startswith("_") for part in module.split(".")):
                problems.append(f"{where}: private {module}")
            elif not module_exists(root, module) and not any(module_exists(root, m) for m in fallbacks):
                problems.append(f"{where}: {module} is not in {distro}'s rclpy")
    assert not problems, problems


def test_the_import_check_sees_missing_and_private_modules(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from rclpy._rclpy_pybind11 import RCLError\n"
        "try:\n    from rclpy.event_handler import X\n"
        "except ImportError:\n    from rclpy.qos_event import X\n"
    )
    found = rclpy_imports(source)
    assert ("rclpy._rclpy_pybind11", [], 1) in found
    assert ("rclpy.event_handler", ["rclpy.qos_event"], 3) in found
