"""``segmentation_node``: the process around :class:`~refinenet_ros.ros.node.SegmentationNode`.

Starts rclpy, makes the node (one line and exit 2 for a parameter it refuses), walks it to
active when ``autostart`` is set, spins until SIGINT/SIGTERM and tears down within 2 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.lifecycle import TransitionCallbackReturn

from refinenet_ros.ros.node import NODE_NAME, SegmentationNode
from refinenet_ros.ros.params import ParameterError

# rclpy's error for calls on a context that is gone; rclpy reaches it the same way on every
# distro (no public name for it on Humble).
RCLError: type[Exception] = rclpy_implementation.RCLError


def _warn_about_transport(node: SegmentationNode) -> None:
    """With ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, rmw_fastrtps replaces the SHM-only
    builtin transports with UDP loopback, where most best-effort VGA frames are lost."""
    shm = "SHM" in os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "")
    if shm and os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST":
        node.get_logger().warning(
            "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST overrides FASTDDS_BUILTIN_TRANSPORTS=SHM with UDP "
            "loopback, which drops most large frames: unset it (SHM never leaves the machine anyway)"
        )


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``segmentation_node``: spin until SIGINT/SIGTERM, exit within 2 s."""
    try:
        rclpy.init(args=list(args) if args is not None else None)
    except RCLError as exc:  # a --ros-args rule rcl cannot parse: one line, not rclpy's traceback
        reason = str(exc).removeprefix("failed to initialize rcl: ").split(". Error:", 1)[0]
        print(
            f"{NODE_NAME}: error: {reason}; give parameters as -p name:=value "
            "(an empty string: -p \"name:=''\")",
            file=sys.stderr,
        )
        return 2
    node: SegmentationNode | None = None
    code = 0
    try:
        try:
            node = SegmentationNode()
        except ParameterError as exc:
            print(f"{NODE_NAME}: error: {exc}", file=sys.stderr)
            return 2
        _warn_about_transport(node)
        if node.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                if not node.context.ok():
                    print(f"{NODE_NAME}: interrupted during configure", file=sys.stderr)
                    return 0
                node.get_logger().fatal("autostart: configure failed (see above); exiting")
                return 2
            node.trigger_activate()
        else:
            node.get_logger().info(
                "autostart is false: waiting for lifecycle transitions (configure, activate)"
            )
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError as exc:  # the context went away under the executor (shutdown race)
        if rclpy.ok():
            raise
        print(f"{NODE_NAME}: shutting down after: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C during teardown kills at once
        if node is not None:
            node._stop_worker()
            with contextlib.suppress(RCLError):
                node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
