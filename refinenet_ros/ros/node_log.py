"""The package's Python logging in the node's log, and the node's words for settings.

Model, backend and engine-build advice names settings through
:func:`refinenet_ros.errors.option`; in the node, :func:`node_words` renders them as the
parameters a node user sets (``-p device:=cpu``).

:func:`attach` and :func:`detach` do both for one node. Several nodes may live in one
process (a component container, tests): the package logger and the words are taken over
on the first attach and put back as they were on the last detach, whatever the order in
which the nodes go.
"""

from __future__ import annotations

import logging

from rclpy.lifecycle import LifecycleNode

from refinenet_ros.errors import OptionWords, cli_words, use_option_words
from refinenet_ros.ros.params import PARAMETERS

__all__ = ["RosLogHandler", "attach", "detach", "node_words"]

_PACKAGE_LOGGER = "refinenet_ros"
_attached: list[RosLogHandler] = []
_before: tuple[int, bool, OptionWords] | None = None
"""The package logger's level and propagation and the option words before the first attach."""


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


def attach(node: LifecycleNode) -> RosLogHandler:
    """Send the package's log to ``node``'s log and word advice as its parameters, until
    :func:`detach` of the handler returned."""
    global _before
    pkg_log = logging.getLogger(_PACKAGE_LOGGER)
    if not _attached:
        _before = (pkg_log.level, pkg_log.propagate, use_option_words(node_words))
        pkg_log.setLevel(logging.INFO)
        pkg_log.propagate = False
    handler = RosLogHandler(node)
    pkg_log.addHandler(handler)
    _attached.append(handler)
    return handler


def detach(handler: RosLogHandler) -> None:
    """Stop sending the package's log to that node; the last node to go puts the package
    logger and the option words back as they were before the first attach."""
    global _before
    pkg_log = logging.getLogger(_PACKAGE_LOGGER)
    pkg_log.removeHandler(handler)
    if handler in _attached:
        _attached.remove(handler)
    if not _attached and _before is not None:
        level, propagate, words = _before
        pkg_log.setLevel(level)
        pkg_log.propagate = propagate
        use_option_words(words)
        _before = None
