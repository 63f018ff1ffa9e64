"""Engine cache policy (pure Python, no TensorRT): keying, staleness reasons, atomicity, .bad."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from refinenet_ros.backends.engine_cache import (
    EngineCache,
    EngineKey,
    default_stem,
    differing_fields,
    key_differences,
    key_field_names,
)

SHAPE = ((1, 64, 96, 3), (1, 64, 96, 3), (1, 64, 96, 3))


def make_key(**changes: object) -> EngineKey:
    key = EngineKey(
        onnx_sha256="a" * 64,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        input_shapes={"image": SHAPE},
        max_batch=1,
    )
    return dataclasses.replace(key, **changes)  # type: ignore[arg-type]


# One change per key field and the words its reason must contain.
CHANGES: dict[str, tuple[dict[str, object], str]] = {
    "onnx_sha256": ({"onnx_sha256": "b" * 64}, "ONNX model changed"),
    "tensorrt_version": ({"tensorrt_version": "10.8.0"}, "TensorRT version changed 10.3.0 -> 10.8.0"),
    "gpu_name": ({"gpu_name": "RTX 4090"}, "GPU changed 'Orin' -> 'RTX 4090'"),
    "compute_capability": ({"compute_capability": "8.9"}, "compute capability changed 8.7 -> 8.9"),
    "precision": ({"precision": "int8"}, "precision changed fp16 -> int8"),
    "input_shapes": (
        {"input_shapes": {"image": ((1, 128, 96, 3),) * 3}},
        "input shapes changed (image 1x64x96x3) -> (image 1x128x96x3)",
    ),
    "max_batch": ({"max_batch": 4}, "max batch changed 1 -> 4"),
    "calibration": ({"calibration": "c" * 64}, "INT8 calibration data changed"),
    "format": ({"format": 99}, "cache format changed"),
}


def test_every_key_field_has_a_staleness_case() -> None:
    assert set(CHANGES) == set(key_field_names())


def test_store_then_lookup_hits_only_with_identical_key(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    key = make_key()
    stem = default_stem("LW RefineNet/50", key)
    assert stem == "lw-refinenet-50_fp16_64x96_b1"
    miss = cache.lookup(stem, key)
    assert not miss.hit and "no cached engine" in miss.reason
    cache.store(stem, key, b"ENGINE-BYTES")
    found = cache.lookup(stem, key)
    assert found.hit and found.reason == ""
    assert cache.read_engine(stem) == b"ENGINE-BYTES"
    meta = json.loads(cache.meta_path(stem).read_text())
    assert meta["key"]["tensorrt_version"] == "10.3.0"
    assert meta["engine_bytes"] == len(b"ENGINE-BYTES")


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_each_key_change_is_stale_with_its_reason(tmp_path: Path, name: str) -> None:
    cache = EngineCache(tmp_path)
    stored = make_key()
    cache.store("m", stored, b"x")
    change, expected = CHANGES[name]
    wanted = dataclasses.replace(stored, **change)  # type: ignore[arg-type]
    result = cache.lookup("m", wanted)
    assert not result.hit
    assert expected in result.reason, result.reason
    assert key_differences(stored, wanted) == [result.reason]


def test_several_changes_are_all_reported() -> None:
    reasons = key_differences(make_key(), make_key(tensorrt_version="10.8", precision="fp32"))
    assert len(reasons) == 2


def test_key_round_trips_through_json() -> None:
    key = make_key(input_shapes={"image": ((1, 64, 64, 3), (2, 256, 256, 3), (4, 512, 512, 3))})
    assert EngineKey.from_json(json.loads(json.dumps(key.to_json()))) == key


def test_missing_sidecar_or_engine_is_a_miss_with_reason(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.store("m", key, b"x")
    cache.meta_path("m").unlink()
    assert "has no sidecar" in cache.lookup("m", key).reason
    cache.store("m", key, b"x")
    cache.engine_path("m").unlink()
    assert "engine m.engine is missing" in cache.lookup("m", key).reason
    cache.store("m", key, b"x")
    cache.meta_path("m").write_text("{not json")
    assert "unreadable" in cache.lookup("m", key).reason


def test_failed_write_leaves_no_temp_file_and_keeps_old_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.store("m", key, b"old")

    class Exploding:
        """A buffer whose conversion to bytes fails half-way through a write."""

        def __bytes__(self) -> bytes:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.store("m", key, Exploding())  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.json"]
    assert cache.read_engine("m") == b"old"

    # A failure inside the atomic write itself (the rename): the temp file is removed.
    def failing_replace(src: str, dst: str) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        cache.store("m", key, b"new")
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # The sidecar was withdrawn before the engine write: the old engine is no longer
    # claimed by any key, so it cannot be mistaken for the new build.
    assert not cache.lookup("m", key).hit


def test_truncated_engine_fails_checksum(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store("m", make_key(), b"0123456789")
    cache.engine_path("m").write_bytes(b"01234")
    with pytest.raises(ValueError, match="checksum mismatch"):
        cache.read_engine("m")


def test_load_or_build_builds_once_then_reuses(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    builds: list[int] = []

    def build() -> bytes:
        builds.append(1)
        return b"ENGINE"

    obj, record = cache.load_or_build("m", key, build, lambda data: data.decode())
    assert (obj, record.built, len(builds)) == ("ENGINE", True, 1)
    assert "no cached engine" in record.reason
    obj, record = cache.load_or_build("m", key, build, lambda data: data.decode())
    assert (obj, record.built, len(builds)) == ("ENGINE", False, 1)
    # A TensorRT upgrade: rebuilt in the same slot, with the reason.
    newer = make_key(tensorrt_version="10.8.0")
    obj, record = cache.load_or_build("m", newer, build, lambda data: data.decode())
    assert record.built and "TensorRT version changed 10.3.0 -> 10.8.0" in record.reason
    assert len(builds) == 2 and cache.lookup("m", newer).hit
    assert (tmp_path / "m.engine.bad").exists()  # the stale engine is kept aside, not loaded


def test_undeserialisable_engine_is_kept_as_bad_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.store("m", key, b"GARBAGE")

    def deserialize(data: bytes) -> str | None:
        return None if data == b"GARBAGE" else data.decode()  # TensorRT returns None on bad data

    with caplog.at_level("WARNING", logger="refinenet_ros"):
        obj, record = cache.load_or_build("m", key, lambda: b"GOOD", deserialize)
    assert obj == "GOOD" and record.built
    assert "deserialisation failed" in record.reason
    assert (tmp_path / "m.engine.bad").read_bytes() == b"GARBAGE"
    assert (tmp_path / "m.json.bad").exists()
    assert cache.read_engine("m") == b"GOOD"
    assert any(
        "cannot be used" in r.getMessage() and "m.engine.bad" in r.getMessage() for r in caplog.records
    )


def test_deserializer_exception_also_marks_bad(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = make_key()
    cache.store("m", key, b"OLD")

    def deserialize(data: bytes) -> str:
        if data == b"OLD":
            raise RuntimeError("Serialization assertion failed: magic tag")
        return data.decode()

    obj, record = cache.load_or_build("m", key, lambda: b"NEW", deserialize)
    assert obj == "NEW" and "magic tag" in record.reason
    assert (tmp_path / "m.engine.bad").exists()


def test_fresh_engine_that_cannot_load_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="could not be deserialised"):
        EngineCache(tmp_path).load_or_build("m", make_key(), lambda: b"x", lambda data: None)


def test_timing_cache_path_is_per_gpu_and_version(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path(make_key())
    assert a != cache.timing_cache_path(make_key(tensorrt_version="10.8.0"))
    assert a != cache.timing_cache_path(make_key(gpu_name="RTX 4090"))
    assert a == cache.timing_cache_path(make_key(precision="fp32", onnx_sha256="f" * 64))


# --- the cache-decision log: which cached file was picked, and why -------------------------


def decisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " cache: " in r.getMessage()]


def test_engine_lookups_log_hit_or_the_differing_key_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = EngineCache(tmp_path)
    caplog.set_level("INFO", logger="refinenet_ros")
    cache.load_or_build("m", make_key(), lambda: b"E1", lambda data: data)
    cache.load_or_build("m", make_key(), lambda: b"E1", lambda data: data)
    cache.load_or_build("m", make_key(tensorrt_version="10.8.0"), lambda: b"E2", lambda data: data)
    first, second, third = decisions(caplog)
    assert first == f"engine cache: miss: no cached file -> {tmp_path / 'm.engine'}"
    assert second == f"engine cache: hit {tmp_path / 'm.engine'}"
    assert "miss: rebuilt because tensorrt_version differed (10.3.0 -> 10.8.0)" in third
    assert "gpu_name" not in third  # only the field that changed is named


def test_differing_fields_names_nested_fields_and_shortens_hashes() -> None:
    diffs = differing_fields(
        {"spec": {"height": 64, "width": 96}, "sha": "a" * 64},
        {"spec": {"height": 128, "width": 96}, "sha": "b" * 64},
    )
    assert diffs == ["sha differed (aaaaaaaaaaaa… -> bbbbbbbbbbbb…)", "spec.height differed (64 -> 128)"]
    assert differing_fields({"a": 1}, {"a": 1}) == []


@pytest.mark.slow
def test_onnx_graph_lookups_log_hit_or_the_differing_field(
    tmp_path: Path, small_model_cfg: object, caplog: pytest.LogCaptureFixture
) -> None:
    from refinenet_ros.backends.onnx_export import ExportSpec, export_cached

    caplog.set_level("INFO", logger="refinenet_ros")
    cfg = small_model_cfg
    first = export_cached(cfg, ExportSpec(64, 64), tmp_path)  # type: ignore[arg-type]
    again = export_cached(cfg, ExportSpec(64, 64), tmp_path)  # type: ignore[arg-type]
    export_cached(cfg, ExportSpec(64, 96), tmp_path)  # type: ignore[arg-type]
    miss, hit, changed = decisions(caplog)
    assert miss == f"ONNX graph cache: miss: no cached file -> {first.path}"
    assert hit == f"ONNX graph cache: hit {again.path}" and again.cached
    assert "miss: rebuilt because network_size differed (64x64 -> 64x96)" in changed
    assert "label_set" not in changed


def test_a_sidecar_without_the_engine_hash_is_not_trusted(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store("m", make_key(), b"0123456789")
    meta = json.loads(cache.meta_path("m").read_text())
    del meta["engine_sha256"]
    cache.meta_path("m").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no engine sha256"):
        cache.read_engine("m")


def _flip_weight_bytes(path: Path) -> None:
    """Bit rot inside the largest initialiser: the protobuf still parses, the numbers differ."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 4096, 4):
        data[i] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "precision"), [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                   ("openvino", "fp32")])  # fmt: skip
def test_a_damaged_or_replaced_cache_entry_is_rebuilt_not_used(
    tmp_path: Path, caplog, backend: str, precision: str
) -> None:
    import hashlib

    import numpy as np

    import refinenet_ros

    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def run() -> tuple[np.ndarray, np.ndarray]:
        seg = refinenet_ros.load("random", backend=backend, device="cpu", network_size=(64, 64),
                                 cache_dir=str(tmp_path), precision=precision)  # fmt: skip
        result = seg(image)
        return result.labels, result.confidence

    good = run()
    folder = tmp_path / "onnx"
    graphs = sorted(folder.glob("*.onnx"), key=lambda p: "_int8_" not in p.name)  # INT8 first
    assert len(graphs) == (2 if precision == "int8" else 1)
    assert all((folder / (g.name + ".sha256")).is_file() for g in graphs)
    entry = graphs[0] if backend == "onnxruntime" else next(folder.glob("*.ovblob"))
    intact = entry.read_bytes()
    damages = {
        "bit rot": lambda: _flip_weight_bytes(entry),
        "another file under this name": lambda: entry.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1])),
    }
    for name, damage in damages.items():
        damage()
        caplog.clear()
        with caplog.at_level("INFO", logger="refinenet_ros"):
            labels, confidence = run()
        assert "content changed since it was written" in caplog.text, name
        assert np.array_equal(labels, good[0]) and np.allclose(confidence, good[1], atol=1e-5), name
        # rebuilt in place, with the hash of what is there now (OpenVINO's export is not byte-stable)
        recorded = (folder / (entry.name + ".sha256")).read_text().strip()
        assert recorded == hashlib.sha256(entry.read_bytes()).hexdigest(), name
        intact = entry.read_bytes()
