"""The build gate: where a slow build (ONNX export, INT8 calibration, compiled model,
engine, ``auto``'s measurement) may start, and what was built.

Every place that would start a slow build calls :func:`require_build` first; within
:func:`builds_forbidden` it raises :class:`BuildNeeded` instead, which is how
:mod:`refinenet_ros.backends.child_build` moves the work into a child process that the
caller can give up on at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("refinenet_ros")

_BUILDS_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("builds_allowed", default=True)


class BuildNeeded(Exception):
    """Raised by :func:`require_build` where builds are forbidden: ``what`` would be built."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class BuildCancelled(Exception):
    """The caller's ``cancelled()`` turned true (shutdown) while a child was building."""


_BUILT: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("built", default=None)


def require_build(what: str) -> None:
    """Call before starting a slow build (seconds or more); raises :class:`BuildNeeded` where
    builds are forbidden, so the caller can move the work into a child process. Within
    :func:`builds_reported`, ``what`` is remembered for the summary line."""
    if not _BUILDS_ALLOWED.get():
        raise BuildNeeded(what)
    built = _BUILT.get()
    if built is not None:
        built.append(what)


@contextlib.contextmanager
def builds_reported(what: str) -> Iterator[None]:
    """Within: every build started is remembered, and at the end one line says what was built
    for ``what`` and how long it all took (nothing when every cache was warm). Nested uses
    report once, at the outermost."""
    if _BUILT.get() is not None:
        yield
        return
    built: list[str] = []
    token = _BUILT.set(built)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _BUILT.reset(token)
        if built:
            log.info("first start of %s: built %s in %.1f s (cached: later starts reuse it)",
                     what, "; ".join(dict.fromkeys(built)), time.perf_counter() - t0)  # fmt: skip


@contextlib.contextmanager
def builds_forbidden() -> Iterator[None]:
    """Within: :func:`require_build` raises instead of letting a build start."""
    token = _BUILDS_ALLOWED.set(False)
    try:
        yield
    finally:
        _BUILDS_ALLOWED.reset(token)
