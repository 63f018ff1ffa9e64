"""`refinenet-ros bag`: outputs beside the originals, headers/log times kept, malformed frames
reported and skipped, atomic output, refusals that change nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_images import png_bomb

from refinenet_ros.backends.base import BackendOptions
from refinenet_ros.bag import BagError, BagOptions, run_bag, write_sample_bag
from refinenet_ros.cli import main
from refinenet_ros.config import ModelConfig
from refinenet_ros.images.encodings import decode_image
from refinenet_ros.segmenter import Segmenter, build_segmenter

SIZE = (64, 96)
TOPIC = "/cam/image_raw"


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    cfg = ModelConfig(model="lw_refinenet_mobilenetv2")
    return build_segmenter(cfg, BackendOptions(kind="torch", max_batch=4))


@pytest.fixture(scope="module")
def sample_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_bag(tmp_path_factory.mktemp("in") / "drive", frames=6, size=SIZE, topic=TOPIC)


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list[tuple[int, Any]]] = {}
    with AnyReader([path]) as reader:
        for conn, ts, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ts, reader.deserialize(raw, conn.msgtype)))
    return out


def image_array(msg: Any) -> np.ndarray:
    data = np.asarray(msg.data, dtype=np.uint8)
    if msg.encoding == "mono16":
        return data.view("<u2").reshape(msg.height, msg.width)
    channels = 3 if msg.encoding == "rgb8" else 1
    arr = data.reshape(msg.height, msg.step)[:, : msg.width * channels]
    return arr.reshape(msg.height, msg.width, channels) if channels == 3 else arr


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_outputs_keep_headers_log_times_and_match_segmenter(
    tmp_path: Path, sample_bag: Path, segmenter: Segmenter, storage: str
) -> None:
    out = tmp_path / "out"
    summary = run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), storage=storage, progress=False))
    assert summary.frames == 6 and summary.malformed == 0 and summary.fps > 0
    assert summary.copied == 12  # 6 images + 6 camera_info
    assert (out / f"out.{'mcap' if storage == 'mcap' else 'db3'}").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder gone
    msgs = read_bag(out)
    assert set(msgs) == {
        TOPIC, "/cam/camera_info", f"{TOPIC}/labels", f"{TOPIC}/color", f"{TOPIC}/overlay",
        f"{TOPIC}/confidence", f"{TOPIC}/labels/camera_info",
    }  # fmt: skip
    inputs = msgs[TOPIC]
    for kind in ("labels", "color", "overlay", "confidence", "labels/camera_info"):
        outs = msgs[f"{TOPIC}/{kind}"]
        assert len(outs) == len(inputs)
        for (t_in, m_in), (t_out, m_out) in zip(inputs, outs, strict=True):
            assert t_out == t_in
            assert m_out.header.stamp.sec == m_in.header.stamp.sec
            assert m_out.header.stamp.nanosec == m_in.header.stamp.nanosec
            assert m_out.header.frame_id == m_in.header.frame_id == "camera"
            assert (m_out.height, m_out.width) == SIZE
    # Labels are exactly what the Segmenter gives for the decoded input frame.
    for (_, m_in), (_, lab), (_, col), (_, conf) in zip(
        inputs, msgs[f"{TOPIC}/labels"], msgs[f"{TOPIC}/color"], msgs[f"{TOPIC}/confidence"], strict=True
    ):
        rgb = decode_image(m_in.data, m_in.encoding, m_in.width, m_in.height, m_in.step)
        ref = segmenter(rgb)
        assert lab.encoding == "mono8" and col.encoding == "rgb8" and conf.encoding == "mono8"
        np.testing.assert_array_equal(image_array(lab), ref.labels)
        np.testing.assert_array_equal(image_array(col), ref.color())
        assert np.abs(image_array(conf).astype(int) - ref.confidence_u8().astype(int)).max() <= 1
    info_in = msgs["/cam/camera_info"][0][1]
    info_out = msgs[f"{TOPIC}/labels/camera_info"][0][1]
    np.testing.assert_allclose(info_out.k, info_in.k)  # labels at input resolution: same intrinsics
    np.testing.assert_allclose(info_out.p, info_in.p)
    # The copied originals are byte-identical.
    original = read_bag(sample_bag)[TOPIC][0][1]
    np.testing.assert_array_equal(np.asarray(inputs[0][1].data), np.asarray(original.data))


def test_malformed_frames_reported_skipped_and_counted(
    tmp_path: Path, segmenter: Segmenter, caplog: pytest.LogCaptureFixture
) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    t = ts.types
    path = tmp_path / "bad"
    h, w = SIZE
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        good = ("rgb8", w * 3, h * w * 3)
        frames = [good, ("rgb8", w * 3, 100), good, ("weird9", w, h * w)]
        for i, (encoding, step, nbytes) in enumerate(frames):
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=10 + i, nanosec=0), frame_id="cam"
            )
            msg = t["sensor_msgs/msg/Image"](
                header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                data=np.full(nbytes, 7 * i, np.uint8),
            )  # fmt: skip
            writer.write(conn, (10 + i) * 10**9, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="refinenet_ros"):
        summary = run_bag(path, out, segmenter, BagOptions((TOPIC,), outputs=("labels",), progress=False))
    assert summary.frames == 2 and summary.malformed == 2
    assert summary.malformed_per_topic == {TOPIC: 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{TOPIC} message #1" in m and "truncated" in m for m in warnings)
    assert any(f"{TOPIC} message #3" in m and "weird9" in m for m in warnings)
    labels = read_bag(out)[f"{TOPIC}/labels"]
    assert [m.header.stamp.sec for _, m in labels] == [10, 12]
    assert "2 malformed" in summary.describe()


def test_compressed_input_without_copy(tmp_path: Path, segmenter: Segmenter) -> None:
    src = write_sample_bag(
        tmp_path / "jpeg", frames=3, size=SIZE, topic=TOPIC, compressed=True, storage="sqlite3"
    )
    out = tmp_path / "out"
    summary = run_bag(
        src, out, segmenter, BagOptions((f"{TOPIC}/compressed",), outputs=("labels", "overlay"), copy=False,
                                        progress=False),
    )  # fmt: skip
    assert summary.frames == 3 and summary.copied == 0
    msgs = read_bag(out)
    # Outputs go under the base topic (image_transport naming); originals not copied.
    assert set(msgs) == {f"{TOPIC}/labels", f"{TOPIC}/overlay", f"{TOPIC}/labels/camera_info"}
    assert all(m.encoding == "mono8" for _, m in msgs[f"{TOPIC}/labels"])


def test_refusals_change_nothing(tmp_path: Path, sample_bag: Path, segmenter: Segmenter) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(BagError, match="--force"):
        run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), progress=False))
    with pytest.raises(BagError, match="image topics there: /cam/image_raw"):
        run_bag(sample_bag, tmp_path / "new", segmenter, BagOptions(("/nope",), progress=False))
    with pytest.raises(BagError, match="not Image"):
        run_bag(sample_bag, tmp_path / "new", segmenter, BagOptions(("/cam/camera_info",), progress=False))
    assert sorted(os.listdir(tmp_path)) == before
    assert (out / "keep.txt").read_text() == "mine"
    # CLI: exit 2 with one line, before any model is loaded.
    assert main(["bag", str(sample_bag), str(out), "--image-topic", TOPIC]) == 2
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_interrupted_run_leaves_nothing_and_force_replaces(
    tmp_path: Path, sample_bag: Path, segmenter: Segmenter
) -> None:
    out = tmp_path / "out"

    def interrupt(frames: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), batch=2, progress=False), on_frame=interrupt)
    assert os.listdir(tmp_path) == []  # neither OUTPUT nor the temp folder
    run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), outputs=("labels",), batch=3, progress=False))
    summary = run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), force=True, batch=3, progress=False))
    assert summary.frames == 6
    assert sorted(p.name for p in out.iterdir()) == ["metadata.yaml", "out.mcap"]
    assert f"{TOPIC}/color" in read_bag(out)  # the new bag, not the labels-only one
    assert os.listdir(tmp_path) == ["out"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_never_deletes_what_this_tool_did_not_write(
    tmp_path: Path, sample_bag: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OUTPUT that holds or is inside an input (`bag victim/data/in_bag victim/data --force`)
    is refused with one line; the input bag and the files beside it stay as they were."""
    import shutil

    victim = tmp_path / "victim"
    data = victim / "data"
    data.mkdir(parents=True)
    in_bag = shutil.copytree(sample_bag, data / "in_bag")
    (data / "notes.txt").write_text("field notes")
    (victim / "README").write_text("project")
    project = victim / "project"
    project.mkdir()
    (project / "main.py").write_text("print('mine')")
    recording = write_sample_bag(victim / "recording", frames=2, size=SIZE, topic=TOPIC)  # a user's bag
    (victim / "a_file").write_text("x")
    before = _tree(tmp_path)
    cases = {
        str(data): "contains the input bag",  # the reported case
        str(victim): "contains the input bag",
        str(in_bag): "is the input bag",
        str(in_bag / "sub"): "inside the input bag",
        str(project): "not a rosbag2 folder",
        str(recording): "not an output of this tool",
        str(victim / "a_file"): "is a file",
        str(victim / "a_file" / "out"): "is a file, not a folder",
    }
    for output, reason in cases.items():
        rc = main(["bag", str(in_bag), output, "--image-topic", TOPIC, "--force", "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, (output, err)
        assert reason in err and err.count("\n") == 1 and "Traceback" not in err, (output, err)
        assert _tree(tmp_path) == before, output  # the input, the notes, the project: all intact


def _partials_of(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-"))


@pytest.mark.slow
def test_a_running_run_is_not_raced_and_a_loser_says_what_happened(
    tmp_path: Path, sample_bag: Path, segmenter: Segmenter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run for an output being written is refused up front; a run whose
    output appears meanwhile says truthfully that its result was discarded."""
    import fcntl

    out = tmp_path / "out"
    live = tmp_path / ".out.partial-other"  # what a live run holds: its stage folder, locked
    live.mkdir()
    fd = os.open(live / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        rc = main(["bag", str(sample_bag), str(out), "--image-topic", TOPIC, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and "another refinenet-ros bag run is writing" in err and str(live) in err
        assert live.is_dir() and not out.exists()  # a live run's folder is never removed
    finally:
        os.close(fd)

    def someone_else_finishes_first(frames: int) -> None:
        if not out.exists():
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")

    with pytest.raises(BagError, match=r"created by someone else.*result was discarded"):
        run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), batch=2, progress=False),
                on_frame=someone_else_finishes_first)  # fmt: skip
    assert (out / "theirs.txt").read_text() == "theirs"  # left untouched, as the message says
    assert _partials_of(out) == []  # ours discarded, as said; the dead run's folder removed too


def _bag_cli(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "refinenet_ros", "bag", *args, "--image-topic", TOPIC, "--no-progress",
            "--backend", "torch", "--weights", "random", "--batch", "1", "--threads", "1"]  # fmt: skip


def _wait_for_stage(out: Path, proc: Any, timeout: float = 120.0) -> None:
    """Until the run has opened its output bag inside its stage folder."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((out.parent / p / out.name).is_dir() for p in _partials_of(out)):
            time.sleep(0.3)  # a few frames in
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run never started writing")


@pytest.mark.slow
def test_sigterm_cleans_up_and_the_next_run_removes_a_killed_runs_debris(tmp_path: Path) -> None:
    """SIGTERM cleans up like Ctrl-C (no `.out.partial-*` stage folder is left behind); the
    next run removes the folder of a killed run and says so."""
    import signal
    import subprocess

    big = write_sample_bag(tmp_path / "big", frames=80, size=(240, 320), topic=TOPIC)
    out = tmp_path / "out"
    proc = subprocess.Popen(_bag_cli(str(big), str(out)), stderr=subprocess.PIPE, text=True)
    _wait_for_stage(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "refinenet-ros bag: terminated"
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["big"]  # no output, no stage folder

    proc = subprocess.Popen(_bag_cli(str(big), str(out)), stderr=subprocess.PIPE, text=True)
    _wait_for_stage(out, proc)
    proc.kill()
    proc.communicate(timeout=60)
    stale = _partials_of(out)
    assert len(stale) == 1  # SIGKILL cannot be cleaned up after by the process itself ...
    small = write_sample_bag(tmp_path / "small", frames=2, size=SIZE, topic=TOPIC)
    done = subprocess.run(_bag_cli(str(small), str(out)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"removed {tmp_path / stale[0]}, left behind by an interrupted run" in done.stderr
    assert _partials_of(out) == [] and (out / "metadata.yaml").is_file()  # ... the next run is


def test_input_checked_before_the_model_and_corrupt_bags_are_one_line(
    tmp_path: Path, sample_bag: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty topic is an error, found before any model is loaded; a
    corrupt MCAP (OverflowError inside the reader) is one line and exit 2, not a traceback."""
    import shutil

    empty = write_sample_bag(tmp_path / "empty", frames=0, size=SIZE, topic=TOPIC)
    rc = main(["bag", str(empty), str(tmp_path / "o1"), "--image-topic", TOPIC, "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 2 and f"topic {TOPIC} has no messages" in cap.err
    assert "model" not in cap.err  # refused before loading one
    assert not (tmp_path / "o1").exists()

    corrupt = shutil.copytree(sample_bag, tmp_path / "corrupt")
    mcap = corrupt / f"{sample_bag.name}.mcap"
    data = bytearray(mcap.read_bytes())
    data[97:105] = b"\xff" * 8  # a record length: the reader raises OverflowError
    mcap.write_bytes(bytes(data))
    rc = main(["bag", str(corrupt), str(tmp_path / "o2"), "--image-topic", TOPIC, "--no-progress",
               "--backend", "torch", "--weights", "random"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("refinenet-ros bag: error: ") and "corrupt" in line and str(corrupt) in line
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["corrupt", "empty"]


def test_decompression_bombs_and_broken_camera_info_are_skipped_and_capped(
    tmp_path: Path, segmenter: Segmenter, caplog: pytest.LogCaptureFixture
) -> None:
    """A 16000x16000 PNG is refused from its header (counted malformed,
    never decoded); undecodable camera_info warnings are capped like image ones."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from refinenet_ros import bag as bag_module
    from refinenet_ros.images import encodings
    from refinenet_ros.images.encodings import encode_compressed

    assert bag_module.DEFAULT_MAX_PIXELS == encodings.DEFAULT_MAX_PIXELS
    ts = get_typestore(Stores.LATEST)
    t = ts.types
    path = tmp_path / "bombs"
    good = np.full((*SIZE, 3), 90, np.uint8)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        img = writer.add_connection(f"{TOPIC}/compressed", "sensor_msgs/msg/CompressedImage", typestore=ts)
        info = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        for i, payload in enumerate(
            [encode_compressed(good), png_bomb(16000, 16000), encode_compressed(good)]
        ):
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=i, nanosec=0), frame_id="c"
            )
            msg = t["sensor_msgs/msg/CompressedImage"](
                header=header, format="png", data=np.frombuffer(payload, np.uint8)
            )
            writer.write(img, i * 10**9, ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
        for i in range(50):
            writer.write(info, i * 10**7, b"\x00\x01\x00\x00" + b"\xff" * 7)  # undecodable
    with caplog.at_level("WARNING", logger="refinenet_ros"):
        summary = run_bag(path, tmp_path / "out", segmenter, BagOptions((f"{TOPIC}/compressed",),
                          outputs=("labels",), progress=False))  # fmt: skip
    assert summary.frames == 2 and summary.malformed == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("16000x16000" in m and "--max-image-pixels" in m for m in warnings)
    info_warnings = [m for m in warnings if "camera_info" in m]
    assert 1 <= len(info_warnings) <= 21


def test_cli_end_to_end(tmp_path: Path, sample_bag: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli_out"
    rc = main([
        "bag", str(sample_bag), str(out), "--image-topic", TOPIC, "--backend", "torch",
        "--outputs", "labels,confidence", "--storage", "sqlite3", "--no-progress", "--batch", "3",
    ])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "6 frames segmented" in text and "0 malformed" in text
    msgs = read_bag(out)
    assert len(msgs[f"{TOPIC}/labels"]) == 6 and len(msgs[f"{TOPIC}/confidence"]) == 6
    assert f"{TOPIC}/color" not in msgs


def test_two_cameras_of_different_sizes_in_one_bag(tmp_path: Path, segmenter: Segmenter) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from refinenet_ros.images.encodings import encode_image

    ts = get_typestore(Stores.LATEST)
    t = ts.types
    path = tmp_path / "two"
    sizes = {"/left/image": (64, 96), "/right/image": (48, 64)}
    rng = np.random.default_rng(0)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {
            topic: writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=ts) for topic in sizes
        }
        for i in range(3):
            for k, (topic, (h, w)) in enumerate(sizes.items()):
                data, step = encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "bgr8")
                header = t["std_msgs/msg/Header"](
                    stamp=t["builtin_interfaces/msg/Time"](sec=100 + i, nanosec=k), frame_id=topic[1:]
                )
                msg = t["sensor_msgs/msg/Image"](
                    header=header, height=h, width=w, encoding="bgr8", is_bigendian=0, step=step,
                    data=np.frombuffer(data, np.uint8),
                )  # fmt: skip
                writer.write(
                    conns[topic], (100 + i) * 10**9 + k, ts.serialize_cdr(msg, "sensor_msgs/msg/Image")
                )
    out = tmp_path / "out"
    summary = run_bag(path, out, segmenter, BagOptions(tuple(sizes), outputs=("labels",), progress=False))
    assert summary.frames == 6 and summary.frames_per_topic == {"/left/image": 3, "/right/image": 3}
    msgs = read_bag(out)
    for k, (topic, size) in enumerate(sizes.items()):
        labels = msgs[f"{topic}/labels"]
        assert [(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in labels] == [
            (100 + i, k) for i in range(3)
        ]
        assert all((m.height, m.width) == size and m.header.frame_id == topic[1:] for _, m in labels)


def raw_messages(path: Path) -> list[tuple[str, int, bytes]]:
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        return [(conn.topic, ts, bytes(raw)) for conn, ts, raw in reader.messages()]


@pytest.mark.slow
def test_overlapped_run_writes_the_same_messages_in_the_same_order(
    tmp_path: Path, sample_bag: Path, segmenter: Segmenter
) -> None:
    """Reading and segmenting on threads ahead of the writer changes nothing in the output."""
    from rosbags.typesys import Stores, get_typestore

    def run(name: str, batch: int, overlap: bool) -> list[tuple[str, int, bytes]]:
        opts = BagOptions((TOPIC,), batch=batch, overlap=overlap, progress=False)
        assert run_bag(sample_bag, tmp_path / name, segmenter, opts).frames == 6
        return raw_messages(tmp_path / name)

    threaded = run("threaded", 4, True)  # 6 frames: one full batch and a short one
    serial = run("serial", 4, False)
    single = run("single", 1, False)
    assert len(threaded) == 6 * 2 + 6 * 5  # copies + labels, camera_info, color, overlay, confidence
    assert threaded == serial  # byte for byte, same order
    # Same messages in the same order as a batch-1 run; batching may only move the float
    # confidence by a rounding step.
    assert [(t, ts) for t, ts, _ in threaded] == [(t, ts) for t, ts, _ in single]
    ts = get_typestore(Stores.LATEST)
    for (topic, _, a), (_, _, b) in zip(threaded, single, strict=True):
        if topic.endswith("/confidence"):
            ma: Any = ts.deserialize_cdr(a, "sensor_msgs/msg/Image")
            mb: Any = ts.deserialize_cdr(b, "sensor_msgs/msg/Image")
            assert a[: len(a) - len(ma.data)] == b[: len(b) - len(mb.data)]
            assert np.abs(ma.data.astype(int) - mb.data.astype(int)).max() <= 1
        else:
            assert a == b, topic
    # Pixels rendered straight into the serialised bytes: exactly what rosbags serialises.
    for topic, _, raw in threaded:
        if topic.startswith(f"{TOPIC}/") and not topic.endswith("camera_info"):
            msg = ts.deserialize_cdr(raw, "sensor_msgs/msg/Image")
            assert bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/Image")) == raw, topic


class FailingBackend:
    """The real backend, failing on its ``fail_at``-th call: an error mid-run in the segment stage."""

    def __init__(self, inner: Any, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.name, self.device, self.num_classes = inner.name, inner.device, inner.num_classes
        self.input_size, self.max_batch = inner.input_size, inner.max_batch

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from refinenet_ros.backends.base import BackendError

        self.calls += 1
        if self.calls == self.fail_at:
            raise BackendError("backend lost its device")
        return self.inner.infer(images)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["segment", "write"])
def test_failure_mid_run_fails_cleanly_and_leaves_no_output(
    tmp_path: Path, sample_bag: Path, segmenter: Segmenter, stage: str
) -> None:
    import threading

    from refinenet_ros.backends.base import BackendError

    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    written: list[int] = []

    def disk_full(frames: int) -> None:  # called on the writing thread after each batch
        written.append(frames)
        raise OSError(28, "No space left on device")

    opts = BagOptions((TOPIC,), batch=2, progress=False)
    if stage == "segment":
        failing = Segmenter(FailingBackend(segmenter.backend, fail_at=2), segmenter.label_set)
        with pytest.raises(BackendError, match="lost its device"):
            run_bag(sample_bag, out, failing, opts)
    else:
        with pytest.raises(OSError, match="No space left"):
            run_bag(sample_bag, out, segmenter, opts, on_frame=disk_full)
        assert written == [2]  # stopped at the first failure
    assert os.listdir(work) == []  # neither OUTPUT nor the temp folder
    assert not [t.name for t in threading.enumerate() if t.name.startswith("bag-")]  # stages joined
    # The segmenter is still usable: nothing runs it behind our back.
    assert run_bag(sample_bag, out, segmenter, opts).frames == 6


def test_overlap_is_chosen_only_where_inference_leaves_cpu_time() -> None:
    from refinenet_ros.bag import overlap_helps

    assert overlap_helps("cuda:0", 0, cpus=2)  # accelerator: the CPU only does I/O
    assert not overlap_helps("cpu", 0, cpus=2)  # library default: every core already busy
    assert overlap_helps("cpu", 1, cpus=2)
    assert not overlap_helps("cpu", 2, cpus=2)


@pytest.mark.slow
def test_cli_overlap_on_matches_off(tmp_path: Path, sample_bag: Path) -> None:
    common = [str(sample_bag), "--image-topic", TOPIC, "--backend", "torch", "--no-progress", "--batch", "4"]
    assert main(["bag", common[0], str(tmp_path / "on"), *common[1:], "--overlap", "on"]) == 0
    assert main(["bag", common[0], str(tmp_path / "off"), *common[1:], "--overlap", "off"]) == 0
    assert raw_messages(tmp_path / "on") == raw_messages(tmp_path / "off")
