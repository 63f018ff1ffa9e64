"""The package's Python logging in the node's log, in the node's words.

Model, backend and engine-build messages are written for the command line (``--device cpu``);
a node user sets parameters (``-p device:=cpu``), so the handler rewrites the flags it knows
into parameter words on the way.
"""

from __future__ import annotations

import logging
import re

from rclpy.lifecycle import LifecycleNode

from refinenet_ros.ros.params import PARAMETERS

__all__ = ["RosLogHandler", "in_node_words"]

_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?:[ =]([^\s;,'\"(]+))?")
_FLAG_WITH_NODE_WORDS = re.compile(
    r"(--[a-z][a-z0-9/-]*(?:[ =][^\s;,'\"(]+)?) \(((?:-p [a-z_]+:=\S+?\s?)+)\)"
)


def in_node_words(text: str) -> str:
    """Rewrite the library's CLI advice for node users: ``use --device cpu`` ->
    ``use -p device:=cpu``, ``--network-size`` -> ``-p network_height/network_width``."""

    def swap(m: re.Match[str]) -> str:
        flag, value = m.group(1), m.group(2)
        if flag == "network-size":
            return "-p network_height:=H -p network_width:=W"
        name = flag.replace("-", "_")
        if name not in PARAMETERS:
            return m.group(0)
        return f"-p {name}:={value}" if value and not value.startswith("-") else f"-p {name}:=..."

    # advice that already gives the node's words in brackets: keep those, drop the flags' copy
    text = _FLAG_WITH_NODE_WORDS.sub(lambda m: m.group(2), text)
    return _FLAG.sub(swap, text)


class RosLogHandler(logging.Handler):
    """Forward the package's Python logging (model/backend/engine build) to the node's log."""

    def __init__(self, node: LifecycleNode) -> None:
        super().__init__()
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        text = in_node_words(record.getMessage())
        if record.levelno >= logging.ERROR:
            self._logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(text)
        elif record.levelno >= logging.INFO:
            self._logger.info(text)
        else:
            self._logger.debug(text)
