"""The fleet manifest: what is done, for which input and model, and what it holds.

``DIR/fleet-manifest.jsonl`` gets one JSON line per finished bag (done or failed),
appended and fsync-ed by the driver only (one writer, however many workers), so a crash
loses at most the line being written; a torn last line is ignored on load. The newest
line per output wins and the file is compacted at the start of each run.

A bag counts as done only when its newest line says ``done`` for the same input
fingerprint (size + mtime of every file of the bag) and the same job fingerprint (model,
weights content, backend, bag options), and the output bag on disk still holds the
recorded message counts and the size and mtime of every output file recorded when it was
done (a truncated, deleted or overwritten output is redone). Everything else is redone.
Outputs appear only by the bag job's atomic rename, so an output with no ``done`` line is
at worst a finished bag whose line was lost, replaced by the rerun; a half-written bag
never has the output's name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from refinenet_ros.fleet.inputs import FleetError, is_bag_folder

log = logging.getLogger("refinenet_ros")

MANIFEST_NAME = "fleet-manifest.jsonl"
SUMMARY_NAME = "fleet-summary.json"
LOCK_NAME = ".fleet.lock"


def input_fingerprint(path: Path) -> dict[str, list[int]]:
    """Size and mtime (ns) of each file of a bag: a re-recorded or edited bag differs."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    out: dict[str, list[int]] = {}
    for f in files:
        st = f.stat()
        out[f.name] = [st.st_size, st.st_mtime_ns]
    return out


def output_fingerprint(output: Path) -> dict[str, list[int]] | None:
    """Size and mtime (ns) of each file of a finished output bag, recorded when it is done and
    compared before it counts as done again: a truncated, deleted or overwritten output file
    differs (its message counts in ``metadata.yaml`` alone do not). None: nothing there."""
    try:
        return input_fingerprint(output) if output.exists() else None
    except OSError:
        return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def job_fingerprint(description: Mapping[str, Any]) -> str:
    """A short stable hash of everything that changes an output's bytes."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def output_counts(bag: Path) -> dict[str, int] | None:
    """Messages per topic from an output bag's metadata.yaml (None: no complete bag there)."""
    import yaml

    if not is_bag_folder(bag):
        return None
    try:
        meta = yaml.safe_load((bag / "metadata.yaml").read_text())
        topics = meta["rosbag2_bagfile_information"]["topics_with_message_count"]
        return {str(t["topic_metadata"]["name"]): int(t["message_count"]) for t in topics}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


class Manifest:
    """The records of one DIR, newest per output; :meth:`record` appends one durably."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / MANIFEST_NAME
        self.records: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        torn = 0
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    self.records[str(rec["output"])] = rec
                except (ValueError, KeyError, TypeError):
                    torn += 1
        if torn:
            log.warning(
                "%s: %d unreadable line(s) ignored (an interrupted write); those bags are redone",
                self.path,
                torn,
            )

    def compact(self) -> None:
        """Rewrite the file with the newest line per output (atomically: temp file + rename)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the record from the team
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for rec in self.records.values():
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def is_done(self, rel: str, fingerprint: Mapping[str, Any], job: str, output: Path) -> bool:
        rec = self.records.get(rel)
        if rec is None or rec.get("status") != "done":
            return False
        if rec.get("input_fingerprint") != fingerprint or rec.get("job") != job:
            return False
        recorded = rec.get("output_files")
        if not recorded or output_fingerprint(output) != recorded:
            return False  # damaged, deleted or replaced since it was recorded (or never verified)
        return output_counts(output) == rec.get("messages")

    def record(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        line = json.dumps(rec, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records[str(rec["output"])] = rec


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold DIR's lock for the run: two fleet runs on one DIR would each redo the other's
    bags and interleave manifest lines. The kernel drops it when the driver dies."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError(
                f"another refinenet-ros fleet run is writing {out_dir}; wait for it or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)
