"""The package's shape a contributor must keep: one error root a user can catch, and module
boundaries (no import cycles, the library never imports the command line, the core imports
without ROS)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
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
