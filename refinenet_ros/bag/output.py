"""Staged output: the new bag is written into a hidden, locked folder beside OUTPUT and renamed
into place at the end; stale stages of dead runs are removed, foreign folders refused."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from refinenet_ros.bag.options import BagError

log = logging.getLogger("refinenet_ros")

PARTIAL_INFIX = ".partial-"
LOCK_NAME = ".lock"
"""Each run's hidden stage folder holds this file, flock-ed for the run's lifetime: the
kernel drops the lock when the process dies (even by SIGKILL), so a later run can tell a
live run's folder (lock held) from debris (lock free) without guessing from ages."""
_OUR_TOPIC = re.compile(r"^\s*name:\s*\S*/(?:labels|color|overlay|confidence)\s*$", re.M)


def _partials(output: Path) -> list[Path]:
    """Stage folders of runs writing ``output`` (live or dead), oldest name first."""
    prefix = f".{output.name}{PARTIAL_INFIX}"
    with contextlib.suppress(OSError):
        return sorted(p for p in output.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
    return []


def _lock_state(stage: Path) -> str:
    """``"live"`` (a running process holds the lock), ``"dead"`` (lock free) or ``"unknown"``
    (no lock file: an older version's folder, or a run in its first microsecond)."""
    try:
        fd = os.open(stage / LOCK_NAME, os.O_RDWR)
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "live"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)  # closing also releases a lock we just took
    return "dead"


def _remove_stale_partials(output: Path) -> None:
    """Remove stage folders of interrupted runs (SIGKILL, power cut) of this output, saying so;
    name the ones that cannot be proven dead instead of deleting them."""
    unknown: list[str] = []
    for stage in _partials(output):
        state = _lock_state(stage)
        if state == "dead":
            shutil.rmtree(stage, ignore_errors=True)
            log.warning("removed %s, left behind by an interrupted run", stage)
        elif state == "unknown":
            unknown.append(str(stage))
    if unknown:
        log.warning(
            "left in place (not provably abandoned): %s; remove them if no other run is writing %s",
            ", ".join(unknown), output,
        )  # fmt: skip


def _not_our_bag(path: Path) -> str | None:
    """Why ``path`` is not a rosbag2 folder this tool could have written (None when it is).

    ``--force`` replaces only such a folder: ``metadata.yaml`` plus ``NAME.mcap`` /
    ``NAME.db3`` (and sqlite's side files) and at least one of our output topics. A user's
    recording, a project folder or a file is never ours to delete.
    """
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is a file, not a bag folder"
    names = sorted(os.listdir(path))
    if "metadata.yaml" not in names:
        return "it has no metadata.yaml, so it is not a rosbag2 folder"
    data_file = re.compile(rf"{re.escape(path.name)}\.(?:mcap|db3)(?:-shm|-wal|-journal)?")
    others = [n for n in names if n != "metadata.yaml" and not data_file.fullmatch(n)]
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        return f"it holds {', '.join(others[:3])}{more}, which this tool never writes"
    try:
        metadata = (path / "metadata.yaml").read_text(errors="replace")
    except OSError as exc:
        return f"its metadata.yaml cannot be read ({exc.strerror})"
    if not _OUR_TOPIC.search(metadata):
        return "it has no labels/color/overlay/confidence topic, so it is not an output of this tool"
    return None


@contextlib.contextmanager
def _staged_output(output: Path, force: bool) -> Iterator[Path]:
    """Yield a path inside a hidden stage folder beside ``output``; move it into place on success.

    The bag folder keeps OUTPUT's name inside the stage folder so its files are named
    ``OUTPUT.mcap``, not after the stage folder. The stage folder is removed on any exit
    this process lives through (error, Ctrl-C, SIGTERM via the CLI) and is locked while the
    run lives, so the next run removes it after a SIGKILL. An existing OUTPUT (only with
    ``force``, and only our own bag) is renamed aside once the new bag is complete, then dropped.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(output)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}{PARTIAL_INFIX}", dir=output.parent))
    lock_fd = -1
    try:
        lock_fd = os.open(stage / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        yield stage / output.name
        _install(stage / output.name, output, force)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if lock_fd >= 0:
            os.close(lock_fd)


def _install(new: Path, output: Path, force: bool) -> None:
    """Move the finished bag ``new`` to ``output``; what happens to our result is said truthfully."""
    if output.exists() or output.is_symlink():
        discarded = "this run's result was discarded"
        if not force:  # another run (or the user) created it while we were writing
            raise BagError(
                f"output {output} was created by someone else while this run was writing; it is "
                f"left untouched and {discarded}: run again with --force to replace it, or choose "
                "another OUTPUT"
            )
        problem = _not_our_bag(output)
        if problem:
            raise BagError(f"output {output} appeared while this run was writing and {problem}; "
                           f"it is left untouched and {discarded}")  # fmt: skip
        os.replace(output, new.parent / ".replaced")  # dropped with the stage folder
    os.replace(new, output)


def _check_paths(input_bag: Path, output: Path, force: bool) -> None:
    """Refuse, before anything is read or written, every output that could cost user data."""
    if not input_bag.exists():
        raise BagError(f"input bag {input_bag} does not exist")
    inp, out = input_bag.resolve(), output.resolve()
    if out == inp:
        raise BagError(f"output {output} is the input bag; choose another output path")
    if inp.is_relative_to(out):
        raise BagError(f"output {output} contains the input bag {input_bag}; choose another output path")
    if out.is_relative_to(inp):
        raise BagError(f"output {output} is inside the input bag {input_bag}; choose a path outside it")
    live = [p for p in _partials(output) if _lock_state(p) == "live"]
    if live:
        raise BagError(
            f"another refinenet-ros bag run is writing {output} right now (in {live[0]}); "
            "wait for it to finish or choose another OUTPUT"
        )
    if output.exists() or output.is_symlink():
        if not force:
            raise BagError(f"output {output} exists; pass --force to replace it")
        problem = _not_our_bag(output)
        if problem:
            raise BagError(
                f"output {output} exists and {problem}; --force replaces only a bag folder this "
                "tool wrote: choose another OUTPUT (or move that one away yourself)"
            )
    parent = next((p for p in output.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BagError(f"output {output}: {parent} is a file, not a folder")
