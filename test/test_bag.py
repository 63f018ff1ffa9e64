"""`refinenet-ros bag`: outputs beside the originals, headers/log times kept, malformed frames
reported and skipped, atomic output, refusals that change nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from refinenet_ros.backends.factory import BackendOptions
from refinenet_ros.bag import BagError, BagOptions, run_bag, write_sample_bag
from refinenet_ros.cli import main
from refinenet_ros.config import ModelConfig
from refinenet_ros.ros.encodings import decode_image
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


def test_interrupted_run_leaves_nothing_and_force_replaces(
    tmp_path: Path, sample_bag: Path, segmenter: Segmenter
) -> None:
    out = tmp_path / "out"

    def interrupt(frames: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), batch=2, progress=False), on_frame=interrupt)
    assert os.listdir(tmp_path) == []  # neither OUTPUT nor the temp folder
    out.mkdir()
    (out / "old.txt").write_text("old")
    summary = run_bag(sample_bag, out, segmenter, BagOptions((TOPIC,), force=True, batch=3, progress=False))
    assert summary.frames == 6
    assert sorted(p.name for p in out.iterdir()) == ["metadata.yaml", "out.mcap"]
    assert os.listdir(tmp_path) == ["out"]


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

    from refinenet_ros.ros.encodings import encode_image

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


def test_cli_overlap_on_matches_off(tmp_path: Path, sample_bag: Path) -> None:
    common = [str(sample_bag), "--image-topic", TOPIC, "--backend", "torch", "--no-progress", "--batch", "4"]
    assert main(["bag", common[0], str(tmp_path / "on"), *common[1:], "--overlap", "on"]) == 0
    assert main(["bag", common[0], str(tmp_path / "off"), *common[1:], "--overlap", "off"]) == 0
    assert raw_messages(tmp_path / "on") == raw_messages(tmp_path / "off")
