"""The package's Python logging in the node's log, and the node's words for settings.

Model, backend and engine-build advice names settings through
:func:`refinenet_ros.errors.option`; in the node, :func:`node_words` renders them as the
parameters a node user sets (``-p device:=cpu``).
"""

from __future__ import annotations

import logging

from rclpy.lifecycle import LifecycleNode

from refinenet_ros.errors import cli_words
from refinenet_ros.ros.params import PARAMETERS

__all__ = ["RosLogHandler", "node_words"]


def node_words(name: str, value: object | None = None) -> str:
    """``-p device:=cpu``; ``network_size`` is two parameters. A setting the node does not
    have (an export's batch) keeps the command line's words, for the ``refinenet-ros`` step
    that sets it."""
    if name == "network_size":
        height, width = value if isinstance(value, tuple) else ("H", "W")
        return f"-p network_height:={height} -p network_width:={width}"
    if name not in PARAMETERS:
        return cli_words(name, value)
    return f"-p {name}:={'...' if value is None else value}"


class RosLogHandler(logging.Handler):
    """Forward the package's Python logging (model/backend/engine build) to the node's log."""

    def __init__(self, node: LifecycleNode) -> None:
        super().__init__()
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        elif record.levelno >= logging.INFO:
            self._logger.info(text)
        else:
            self._logger.debug(text)
