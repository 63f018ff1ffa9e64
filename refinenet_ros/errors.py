"""One root for the errors a user can fix, and their one-line text.

Every error this package raises for the user's input or machine (a bad flag value, a missing
file, a checkpoint that does not fit, a corrupt bag) derives from :class:`RefineNetRosError`,
whose message says the problem and the fix in one line. Anything else is a bug in this
package and keeps its traceback. The command line (``cli.main``) and the library parts that
report per-item failures without stopping (``fleet`` reports a corrupt bag by path and goes
on) both tell the two apart with :func:`user_error_text`.

Advice names settings through :func:`option`, rendered in the words of whoever runs the
process: ``device='cpu'`` for Python callers, ``--device cpu`` on the command line (set by
``cli.main``), ``-p device:=cpu`` in the node (set by the node). The library never guesses
who reads it.

This module imports nothing from the package, so every module can import the root.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable

OptionWords = Callable[[str, object], str]
"""How one audience sets a setting: ``(name, value) -> text``. ``name`` is the Python API's
keyword (``device``, ``network_size``); ``value`` None stands for "a value of your choice"."""

_NETWORK_SIZE = "network_size"


def python_words(name: str, value: object | None = None) -> str:
    """``device='cpu'``: the keyword of :func:`refinenet_ros.load` and the config dataclasses."""
    name = {"engine_dir": "cache_dir"}.get(name, name)
    if name == _NETWORK_SIZE and value is None:
        return "network_size=(H, W)"
    return f"{name}=..." if value is None else f"{name}={value!r}"


def cli_words(name: str, value: object | None = None) -> str:
    """``--device cpu``: the command line's flag (``-`` for ``_``)."""
    flag = "--" + name.replace("_", "-")
    if name == _NETWORK_SIZE:
        return f"{flag} {' '.join(map(str, value)) if isinstance(value, tuple) else 'H W'}"
    return flag if value is None else f"{flag} {value}"


_words: OptionWords = python_words


def use_option_words(words: OptionWords) -> OptionWords:
    """Make :func:`option` speak ``words`` in this process; returns the previous words, for
    an entry point that hands the process back (``cli.main``) to restore."""
    global _words
    previous, _words = _words, words
    return previous


def option_words() -> OptionWords:
    """The words :func:`option` speaks now (a child process the library spawns takes them along)."""
    return _words


def option(name: str, value: object | None = None) -> str:
    """Setting ``name`` (the Python keyword) to ``value``, in the words of whoever runs this
    process: ``option("device", "cpu")`` reads ``device='cpu'``, ``--device cpu`` or
    ``-p device:=cpu``."""
    return _words(name, value)


class RefineNetRosError(Exception):
    """The user's input or machine cannot do what was asked; the message names the fix.

    ``except RefineNetRosError`` catches every error of this package that a user can act
    on; the subclasses say which part refused (``ConfigError``, ``BagError``, ...)."""


def user_error_text(exc: BaseException) -> str | None:
    """One line for a user or environment error, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, RefineNetRosError):
        return one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, OSError):
        return _os_error_text(exc)
    if isinstance(exc, sqlite3.Error):  # the output bag's database: disk full, read-only, locked
        return one_line(f"output bag database: {exc}; check free space and write permission")
    if isinstance(exc, MemoryError):
        return f"out of memory: use smaller images, {option('network_size')} or {option('batch')}"
    return None


_OS_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file path",
    errno.EEXIST: "it already exists",
}


def _os_error_text(exc: OSError) -> str:
    """``[Errno 30] Read-only file system: 'x'`` -> ``x: read-only file system: write elsewhere``."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename if exc.filename is not None else None
    text = f"{where}: {what[0].lower()}{what[1:]}" if where is not None else what
    if exc.filename2 is not None:
        text += f" (-> {exc.filename2})"
    hint = _OS_HINTS.get(exc.errno or 0)
    if hint and hint not in text:
        text += f"; {hint}"
    return one_line(text)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space."""
    return " ".join(text.split())
