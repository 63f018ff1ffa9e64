"""TensorRT engine cache users can trust: reuse an engine only when it is provably current.

An engine is only valid for the exact ONNX graph, TensorRT version, GPU (name and compute
capability), precision, input shapes and batch it was built for. The most common field
complaints about ROS segmentation nodes are multi-minute rebuilds on every start and
engines that crash or silently misbehave after a JetPack upgrade, so:

* every engine ``<stem>.engine`` has a JSON sidecar ``<stem>.json`` holding its full
  :class:`EngineKey` plus the engine's own sha256;
* :meth:`EngineCache.lookup` returns a hit only when every key field matches, and
  otherwise says exactly why (``"TensorRT version changed 10.3 -> 10.8"``), so the log
  explains each rebuild;
* both files are written to a temp file and renamed (engine first, sidecar last: the
  sidecar is the commit marker), so a crash mid-write never leaves a half engine that
  looks valid;
* a stale engine, or one that fails its checksum or deserialisation, is renamed ``.bad``
  (kept for a post-mortem or a rollback, never loaded again) and rebuilt;
* a per-stem lock file makes a second process wait for a build in progress instead of
  building the same engine twice;
* every lookup of a cached file (engine here, ONNX graph in :mod:`onnx_export`) logs one
  INFO line saying which file was picked and why: ``hit <path>``, ``miss: rebuilt because
  <key field> differed (<old> -> <new>)``, or ``miss: no cached file`` (:func:`cache_decision`),
  so a robot's log tells why a start took minutes.

Pure Python: nothing here imports TensorRT, so the whole policy is tested on machines
without a GPU. :mod:`refinenet_ros.backends.tensorrt` plugs its build/deserialise
functions into :meth:`EngineCache.load_or_build`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from refinenet_ros.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger("refinenet_ros")

CACHE_FORMAT = 1
"""Bumped when the sidecar layout changes; older sidecars then read as stale."""

CACHE_ENV = "REFINENET_ROS_CACHE"


def default_cache_dir() -> str:
    """Where ONNX graphs, quantised graphs and engines are cached unless a user says otherwise.

    ``$REFINENET_ROS_CACHE``, else ``$ROS_HOME/refinenet_ros``, else ``~/.ros/refinenet_ros``:
    where ROS users look for a node's state, and the same whatever folder the node or a
    command was started from (a cache in the working directory rebuilt engines per folder
    and crashed in read-only ones).
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return explicit
    ros_home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return os.path.join(ros_home, "refinenet_ros")


T = TypeVar("T")

ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on.

    ``input_shapes`` maps each input tensor name to its optimisation profile
    ``(min, opt, max)`` shapes (all three equal for a static engine). ``calibration``
    is a fingerprint of the INT8 calibration data ("" for fp32/fp16): new calibration
    images mean new scales, hence a new engine.
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shapes: dict[str, ShapeTriple]
    max_batch: int
    calibration: str = ""
    format: int = CACHE_FORMAT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shapes"] = {
            name: [list(s) for s in triple] for name, triple in sorted(self.input_shapes.items())
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineKey:
        """Parse a sidecar's key; raises ValueError/KeyError/TypeError when malformed."""
        shapes = {
            str(name): (tuple(triple[0]), tuple(triple[1]), tuple(triple[2]))
            for name, triple in dict(data["input_shapes"]).items()
        }
        return cls(
            onnx_sha256=str(data["onnx_sha256"]),
            tensorrt_version=str(data["tensorrt_version"]),
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            precision=str(data["precision"]),
            input_shapes=shapes,
            max_batch=int(data["max_batch"]),
            calibration=str(data.get("calibration", "")),
            format=int(data.get("format", 0)),
        )


def _short(value: str) -> str:
    return value[:12] + "…" if len(value) > 16 else value


def _shapes_text(shapes: dict[str, ShapeTriple]) -> str:
    parts = []
    for name, (lo, opt, hi) in sorted(shapes.items()):
        dims = ["x".join(str(d) for d in s) for s in (lo, opt, hi)]
        parts.append(f"{name} {dims[0]}" if lo == opt == hi else f"{name} {dims[0]}..{dims[1]}..{dims[2]}")
    return ", ".join(parts) or "none"


def key_differences(cached: EngineKey, wanted: EngineKey) -> list[str]:
    """Human-readable reasons why an engine built for ``cached`` cannot serve ``wanted``."""
    reasons: list[str] = []
    if cached.format != wanted.format:
        reasons.append(f"cache format changed {cached.format} -> {wanted.format}")
    if cached.onnx_sha256 != wanted.onnx_sha256:
        reasons.append(
            f"ONNX model changed (sha256 {_short(cached.onnx_sha256)} -> {_short(wanted.onnx_sha256)})"
        )
    if cached.tensorrt_version != wanted.tensorrt_version:
        reasons.append(f"TensorRT version changed {cached.tensorrt_version} -> {wanted.tensorrt_version}")
    if cached.gpu_name != wanted.gpu_name:
        reasons.append(f"GPU changed {cached.gpu_name!r} -> {wanted.gpu_name!r}")
    if cached.compute_capability != wanted.compute_capability:
        reasons.append(
            f"GPU compute capability changed {cached.compute_capability} -> {wanted.compute_capability}"
        )
    if cached.precision != wanted.precision:
        reasons.append(f"precision changed {cached.precision} -> {wanted.precision}")
    if cached.input_shapes != wanted.input_shapes:
        reasons.append(
            f"input shapes changed ({_shapes_text(cached.input_shapes)}) -> "
            f"({_shapes_text(wanted.input_shapes)})"
        )
    if cached.max_batch != wanted.max_batch:
        reasons.append(f"max batch changed {cached.max_batch} -> {wanted.max_batch}")
    if cached.calibration != wanted.calibration:
        reasons.append(
            f"INT8 calibration data changed ({_short(cached.calibration) or 'none'} -> "
            f"{_short(wanted.calibration) or 'none'})"
        )
    return reasons


def _flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if re.fullmatch(r"[0-9a-f]{17,}", text):
        return _short(text)
    return text if len(text) <= 60 else text[:57] + "..."


def differing_fields(cached: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``field differed (old -> new)`` for each key field whose value differs, nested fields
    by dotted name (``spec.height``), hashes shortened; empty when the records agree."""
    old, new = _flat(cached), _flat(wanted)
    return [
        f"{name} differed ({_shown(old.get(name, 'none'))} -> {_shown(new.get(name, 'none'))})"
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]


def cache_decision(
    kind: str, path: str | os.PathLike[str], *, hit: bool, differences: Iterable[str] = ()
) -> str:
    """The one line a cache lookup logs: which file and why (``hit``, the differing key
    fields of the nearest cached entry, or no cached file)."""
    if hit:
        return f"{kind} cache: hit {path}"
    diffs = list(differences)
    if diffs:
        return f"{kind} cache: miss: rebuilt because {'; '.join(diffs)} -> {path}"
    return f"{kind} cache: miss: no cached file -> {path}"


def nearest_differences(
    candidates: Iterable[Path], wanted: Mapping[str, Any], read: Callable[[Path], Mapping[str, Any]]
) -> list[str]:
    """Why the newest readable cached entry among ``candidates`` does not serve ``wanted``:
    its stored record (``read``) against the wanted one, field by field. Empty when there is
    no readable candidate, or it differs only in fields its record does not hold."""
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True):
        try:
            stored = read(path)
        except Exception:  # an unreadable neighbour explains nothing; try the next
            continue
        return differing_fields(stored, wanted)
    return []


@dataclass(frozen=True)
class CacheLookup:
    """Result of :meth:`EngineCache.lookup`: ``hit`` or the ``reason`` it is not one
    (``differences``: the stale entry's differing key fields, for the decision log)."""

    hit: bool
    engine_path: Path
    meta_path: Path
    reason: str = ""
    differences: tuple[str, ...] = ()


@dataclass
class BuildRecord:
    """What :meth:`EngineCache.load_or_build` did, for logs and ``build-engine`` output."""

    engine_path: Path
    built: bool
    reason: str = ""
    build_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Streaming sha256 of a file (checkpoints can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_path(path: str | os.PathLike[str]) -> Path:
    """Where a cache entry's content hash lives: ``<file>.sha256`` beside it."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def record_digest(path: str | os.PathLike[str], sha256: str | None = None) -> None:
    """Record a freshly written cache entry's content hash (checked by :func:`digest_problem`).

    Best effort: a cache that cannot take the record (read-only, full) only means the
    entry is rebuilt next time instead of trusted unverified."""
    from refinenet_ros.io import atomic_write_text

    try:
        atomic_write_text(digest_path(path), (sha256 or sha256_file(path)) + "\n")
    except OSError as exc:
        log.warning("cache: content hash of %s not recorded (%s); it will be rebuilt next time", path, exc)


def digest_problem(path: str | os.PathLike[str], sha256: str | None = None) -> str | None:
    """None when a cache entry's content matches the hash recorded when it was written, else
    why not: bit rot inside a graph's weights, or another model's file under this name, still
    parse and would run with other labels, so only the content hash can tell."""
    try:
        expected = digest_path(path).read_text().strip()
    except OSError:
        return "no content hash was recorded with it"
    actual = sha256 or sha256_file(path)
    if actual != expected:
        return f"its content changed since it was written (sha256 {_short(expected)} -> {_short(actual)})"
    return None


def slug(text: str) -> str:
    """File-name-safe lowercase form of a GPU or model name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def default_stem(name: str, key: EngineKey) -> str:
    """``<name>_<precision>_<HxW>_b<batch>``: one slot per model/precision/size.

    Deliberately *not* keyed by TensorRT version or GPU: when those change the same
    slot is found, reported stale with the reason, and rebuilt in place, instead of
    silently piling up engines nobody can load.
    """
    image = key.input_shapes.get("image")
    size = "x".join(str(d) for d in image[2][1:3]) if image else "any"
    return f"{slug(name)}_{key.precision}_{size}_b{key.max_batch}"


class EngineCache:
    """A directory of ``<stem>.engine`` + ``<stem>.json`` pairs (default ``engines/``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        directory = default_cache_dir() if directory is None else directory
        self.directory = Path(directory)

    def engine_path(self, stem: str) -> Path:
        return self.directory / f"{stem}.engine"

    def meta_path(self, stem: str) -> Path:
        return self.directory / f"{stem}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """Timing caches are specific to a GPU and TensorRT version, shared by all models."""
        return self.directory / (
            f"timing_{slug(key.gpu_name)}_sm{slug(key.compute_capability)}_trt{slug(key.tensorrt_version)}.cache"
        )

    def lookup(self, stem: str, key: EngineKey) -> CacheLookup:
        """A hit only when both files exist, the sidecar parses and every key field matches."""
        engine, meta = self.engine_path(stem), self.meta_path(stem)

        def miss(reason: str) -> CacheLookup:
            return CacheLookup(False, engine, meta, reason)

        if not meta.exists() and not engine.exists():
            return miss(f"no cached engine {engine}")
        if not meta.exists():
            return miss(f"{engine} has no sidecar {meta.name} (interrupted build or copied by hand)")
        if not engine.exists():
            return miss(f"{meta.name} exists but its engine {engine.name} is missing")
        try:
            data = json.loads(meta.read_text())
            cached = EngineKey.from_json(data["key"])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            return miss(f"sidecar {meta} is unreadable ({type(exc).__name__}: {exc})")
        reasons = key_differences(cached, key)
        if reasons:
            fields_ = tuple(differing_fields(cached.to_json(), key.to_json()))
            return CacheLookup(False, engine, meta, "; ".join(reasons), fields_)
        return CacheLookup(True, engine, meta)

    def read_engine(self, stem: str) -> bytes:
        """The engine bytes, verified against the sha256 recorded in the sidecar.

        Raises ValueError on a mismatch (truncated copy, disk corruption)."""
        data = self.engine_path(stem).read_bytes()
        meta = json.loads(self.meta_path(stem).read_text())
        expected = meta.get("engine_sha256")
        if not isinstance(expected, str) or not expected:
            raise ValueError("the sidecar records no engine sha256: damaged or written by another tool")
        if sha256_bytes(data) != expected:
            raise ValueError(
                f"engine file checksum mismatch (sidecar {_short(expected)}, file "
                f"{_short(sha256_bytes(data))}): truncated or corrupted"
            )
        return data

    def store(
        self,
        stem: str,
        key: EngineKey,
        engine: bytes | bytearray | memoryview,
        *,
        build_seconds: float = 0.0,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write engine then sidecar, each atomically; the sidecar commits the entry."""
        data = bytes(engine)
        meta = {
            "key": key.to_json(),
            "engine_sha256": sha256_bytes(data),
            "engine_bytes": len(data),
            "build_seconds": round(build_seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        # Remove the old sidecar first: between the two renames below the pair must
        # never look like a valid (old key, new engine) entry.
        with contextlib.suppress(FileNotFoundError):
            self.meta_path(stem).unlink()
        atomic_write_bytes(self.engine_path(stem), data)
        atomic_write_text(self.meta_path(stem), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return self.engine_path(stem)

    def mark_bad(self, stem: str, reason: str) -> Path | None:
        """Move a broken engine (and its sidecar) aside as ``.bad`` so it is never retried."""
        engine, meta = self.engine_path(stem), self.meta_path(stem)
        bad = engine.with_name(engine.name + ".bad")
        moved = None
        if engine.exists():
            os.replace(engine, bad)
            moved = bad
        if meta.exists():
            os.replace(meta, meta.with_name(meta.name + ".bad"))
        log.warning("engine %s cannot be used (%s); kept as %s, rebuilding", engine, reason, bad.name)
        return moved

    @contextlib.contextmanager
    def lock(self, stem: str) -> Iterator[None]:
        """Exclusive per-stem lock: a second node waits for a build instead of repeating it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f".{stem}.lock"
        with open(path, "a+b") as f:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
                yield
                return
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log.info("another process is building %s; waiting for it", stem)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def load_or_build(
        self,
        stem: str,
        key: EngineKey,
        build: Callable[[], bytes | bytearray | memoryview],
        deserialize: Callable[[bytes], T | None],
        *,
        extra: dict[str, Any] | None = None,
    ) -> tuple[T, BuildRecord]:
        """Deserialise the cached engine when current, else build, store and deserialise.

        A stale engine, or one whose ``deserialize`` returns None or raises, is kept as
        ``<stem>.engine.bad`` (the latest one only) with the reason logged. A freshly built
        engine that fails to deserialise raises RuntimeError (building again would not help).
        """
        with self.lock(stem):
            found = self.lookup(stem, key)
            reason = found.reason
            if found.hit:
                try:
                    obj = deserialize(self.read_engine(stem))
                except Exception as exc:  # any failure means the file cannot be trusted
                    obj, reason = None, f"{type(exc).__name__}: {exc}"
                if obj is not None:
                    log.info(cache_decision("engine", found.engine_path, hit=True))
                    return obj, BuildRecord(found.engine_path, built=False)
                reason = f"deserialisation failed ({reason or 'TensorRT returned no engine'})"
                self.mark_bad(stem, reason)
            elif found.engine_path.exists():
                # Stale (other TensorRT, GPU, graph, ...): keep it aside, never load it.
                self.mark_bad(stem, reason)
            if found.hit:  # current by its key, but the file itself failed
                log.info("engine cache: miss: rebuilt because the cached file failed (%s)", reason)
            elif found.differences or found.meta_path.exists() or found.engine_path.exists():
                diffs = found.differences or (reason,)
                log.info(cache_decision("engine", found.engine_path, hit=False, differences=diffs))
            else:
                log.info(cache_decision("engine", found.engine_path, hit=False))
            log.info("building engine %s: %s", found.engine_path.name, reason)
            t0 = time.perf_counter()
            data = bytes(build())
            seconds = time.perf_counter() - t0
            path = self.store(stem, key, data, build_seconds=seconds, extra=extra)
            log.info("engine built in %.1f s (%.1f MB) -> %s", seconds, len(data) / 1e6, path)
            obj = deserialize(data)
            if obj is None:
                raise RuntimeError(f"freshly built engine {path} could not be deserialised")
            return obj, BuildRecord(path, built=True, reason=reason, build_seconds=seconds, extra=extra or {})


def key_field_names() -> tuple[str, ...]:
    """Names of the key fields (tests iterate over them to check each staleness reason)."""
    return tuple(f.name for f in fields(EngineKey))
