"""The node as a process on this machine: the DDS environment it runs in and its command line.

One home for what the demo, the tests and the launch files share: the shared-memory-only
Fast DDS transport string, the RMW, a ROS domain of this process's own, and ``-p name:=value``
parameter arguments. Pure Python (no rclpy), so it can be used before ROS is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from refinenet_ros.lifetime import die_with_parent

__all__ = [
    "NODE_MODULE",
    "RMW_IMPLEMENTATION",
    "SHM_ONLY",
    "adopt_environment",
    "die_with_parent",
    "local_ros_env",
    "node_module_command",
    "own_domain_id",
    "param_args",
]

SHM_ONLY = "SHM?max_msg_size=8MB&sockets_size=64MB"
"""``FASTDDS_BUILTIN_TRANSPORTS`` value for shared memory only: no UDP, nothing leaves the
machine, and 8 MB messages carry a VGA frame losslessly (the Makefile exports the same)."""
RMW_IMPLEMENTATION = "rmw_fastrtps_cpp"
NODE_MODULE = "refinenet_ros.ros.main"


def own_domain_id() -> str:
    """A ROS domain derived from this process's id (100..199), away from other runs."""
    return str(100 + os.getpid() % 100)


def local_ros_env(base: Mapping[str, str], *, on_drop: Callable[[str], None] | None = None) -> dict[str, str]:
    """``base`` with SHM-only Fast DDS, rmw_fastrtps and a domain of our own, each unless the
    caller already set it. ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` is dropped (with
    ``on_drop(reason)``) while the transport is SHM-only: rmw_fastrtps would swap the SHM-only
    transports for UDP loopback and drop ~90 % of VGA frames."""
    env = dict(base)
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", SHM_ONLY)
    env.setdefault("ROS_DOMAIN_ID", own_domain_id())
    env.setdefault("RMW_IMPLEMENTATION", RMW_IMPLEMENTATION)
    if env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST" and "SHM" in env["FASTDDS_BUILTIN_TRANSPORTS"]:
        if on_drop is not None:
            on_drop("ignoring ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (it disables the SHM-only transport)")
        del env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
    return env


def adopt_environment(env: Mapping[str, str]) -> None:
    """Make this process's environment exactly ``env`` (from :func:`local_ros_env`) before
    rclpy starts: rcl and Fast DDS read it once, and a key ``env`` dropped (LOCALHOST) must
    not survive in ``os.environ``."""
    for key in set(os.environ) - set(env):
        del os.environ[key]
    os.environ.update(env)


def param_args(**params: Any) -> list[str]:
    """``-p name:=value`` pairs for ``--ros-args`` (bools as true/false, lists as YAML flow sequences)."""
    out: list[str] = []
    for name, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = "[" + ",".join(str(v) for v in value) + "]"
        else:
            text = str(value)
        out += ["-p", f"{name}:={text}"]
    return out


def node_module_command(*ros_args: str) -> list[str]:
    """``python -m refinenet_ros.ros.main [ros args]`` with this interpreter."""
    return [sys.executable, "-m", NODE_MODULE, *ros_args]
