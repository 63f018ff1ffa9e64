"""Which exceptions are the user's or the machine's, and their one-line text.

Shared by the command line (``cli.main``) and the library parts that report per-item
failures without stopping (``fleet`` reports a corrupt bag by path and goes on): both must
tell a user's mistake, said in one line, from a bug in this package, which keeps its
traceback. No import of the CLI: the library never depends on it.
"""

from __future__ import annotations

import errno
import sys

from refinenet_ros.io import UnreadableImage

USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("refinenet_ros.bag", "BagError"),
    ("refinenet_ros.bench", "BenchError"),
    ("refinenet_ros.config", "ConfigError"),
    ("refinenet_ros.datasets", "DatasetError"),
    ("refinenet_ros.train", "TrainError"),
    ("refinenet_ros.labels", "MappingError"),
    ("refinenet_ros.training.labelling", "LabellingError"),
    ("refinenet_ros.training.teacher", "TeacherError"),
    ("refinenet_ros.weights", "WeightsError"),
    ("refinenet_ros.models.checkpoint", "CheckpointError"),
    ("refinenet_ros.models.tflite_import", "TFLiteImportError"),
    ("refinenet_ros.backends.base", "BackendError"),
    ("refinenet_ros.backends.calibration", "CalibrationError"),
    ("refinenet_ros.ros.encodings", "MalformedImage"),
    ("rosbags.rosbag2", "ReaderError"),
    ("rosbags.rosbag2", "WriterError"),
    ("rosbags.highlevel", "AnyReaderError"),
)
"""Exception types that always mean "the user's input or machine", never our bug. Looked up
in ``sys.modules`` only: a module that was never imported cannot have raised its error, and
``--help`` stays free of torch."""


def user_error_text(exc: BaseException) -> str | None:
    """One line for a user or environment error, or None for a bug (which keeps its traceback)."""
    import sqlite3

    for module_name, name in USER_ERRORS:
        error_type = getattr(sys.modules.get(module_name), name, None)
        if isinstance(error_type, type) and isinstance(exc, error_type):
            return one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, UnreadableImage):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        return _os_error_text(exc)
    if isinstance(exc, sqlite3.Error):  # the output bag's database: disk full, read-only, locked
        return one_line(f"output bag database: {exc}; check free space and write permission")
    if isinstance(exc, MemoryError):
        return "out of memory: use smaller images, --network-size or --batch"
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
    return " ".join(text.split())
