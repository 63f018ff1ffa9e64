"""What ``segmentation.launch.py`` and ``multi_camera.launch.py`` share.

- Launch arguments override the params file (a preset or ``params_file:=``) only when
  given: an argument left at its empty default sends nothing, so a file's value stands.
- ``shm_only:=true`` runs the node with shared-memory-only Fast DDS; never forced.
- The node's exit status reaches ``ros2 launch``: a node that stops by itself with a
  non-zero status (a failed configure: bad weights, an unknown parameter value) makes the
  launch exit non-zero with a line naming it, instead of the launch ending "cleanly".

The functions that build launch actions import ``launch`` / ``launch_ros`` (they come with a
ROS install) when called; everything else here needs neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from refinenet_ros.errors import RefineNetRosError
from refinenet_ros.ros.process import SHM_ONLY

NODE_NAME = "refinenet_segmentation"
EXECUTABLE = "segmentation_node"
PACKAGE = "refinenet_ros"

# Launch arguments that override the params file's parameter of the same name when given,
# so `build-engine` and the launch line can name the same model, weights, size and precision.
OVERRIDES: dict[str, type] = {
    "model": str, "weights": str, "labels": str, "backend": str, "precision": str,
    "network_height": int, "network_width": int, "engine_dir": str,
}  # fmt: skip

# (name, default, description) of the arguments both launch files declare.
COMMON_ARGUMENTS: list[tuple[str, str, str]] = [
    ("preset", "street", "street | indoor: the parameters file config/<preset>.yaml"),
    ("params_file", "", "your parameters YAML (used instead of the preset's)"),
    ("namespace", "", "namespace of the node"),
    *[(name, "", f"overrides the params file's {name} (when given)") for name in OVERRIDES],
    ("shm_only", "false", "Fast DDS over shared memory only (one machine; rviz elsewhere sees nothing)"),
]

Arg = Callable[[str], str]  # launch argument name -> its value ("" when not given)


def is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")


def given_overrides(arg: Arg) -> dict[str, object]:
    """The override arguments that were given, converted to the parameter's type."""
    return {name: typed(name, arg(name), cast) for name, cast in OVERRIDES.items() if arg(name) != ""}


def typed(name: str, value: str, cast: type) -> object:
    """``value`` as ``cast``; a wrong one fails the launch with one line naming the argument."""
    try:
        return cast(value)
    except ValueError:
        kind = {int: "a whole number", float: "a number"}.get(cast, cast.__name__)
        raise ValueError(f"launch argument {name}:={value} must be {kind}") from None


def transport_env(arg: Arg) -> dict[str, str]:
    """Shared-memory-only Fast DDS only when asked (``shm_only:=true``): forced, it hides the
    outputs from rviz on another computer and from drivers in other containers."""
    if not is_true(arg("shm_only")):
        return {}
    return {"FASTDDS_BUILTIN_TRANSPORTS": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", SHM_ONLY)}


def params_file(arg: Arg, config_dir: str | Path) -> str:
    """``params_file`` when given, else the preset's file in ``config_dir``."""
    return arg("params_file") or os.path.join(config_dir, f"{arg('preset')}.yaml")


def file_parameters(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The parameters a ROS params file gives the node (its ``/**`` and own-name sections)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    found: dict[str, Any] = {}
    for key in ("/**", node_name, f"/{node_name}"):
        section = data.get(key) if isinstance(data, dict) else None
        if isinstance(section, dict):
            found.update(section.get("ros__parameters") or {})
    return found


def declare_arguments(arguments: Sequence[tuple[str, str, str]]) -> list[Any]:
    """``DeclareLaunchArgument`` for each (name, default, description)."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in arguments]


def launch_argument(context: Any) -> Arg:
    """The value of a launch argument in ``context``."""
    from launch.substitutions import LaunchConfiguration

    return lambda name: str(LaunchConfiguration(name).perform(context))


def segmentation_node(
    arg: Arg,
    *,
    parameters: Mapping[str, object] | None = None,
    remappings: Sequence[tuple[str, str]] = (),
) -> list[Any]:
    """The node (params file, then ``parameters``, then the given overrides) and the handler
    that fails the launch when the node exits non-zero by itself."""
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch_ros.actions import Node

    config = os.path.join(get_package_share_directory(PACKAGE), "config")
    overrides: dict[str, object] = dict(parameters or {})
    overrides.update(given_overrides(arg))
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=arg("namespace"),
        parameters=[params_file(arg, config), overrides],
        remappings=list(remappings),
        additional_env=transport_env(arg),
        output="screen",
        emulate_tty=True,
    )
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_fail_on_error))]


class NodeFailed(RefineNetRosError, RuntimeError):
    """The node stopped by itself with a non-zero status: ``ros2 launch`` exits 1 with this."""


def _fail_on_error(event: Any, context: Any) -> None:
    if event.returncode != 0 and not context.is_shutdown:
        raise NodeFailed(
            f"{event.process_name} exited with status {event.returncode} (its log above says why): "
            "the launch fails"
        )
