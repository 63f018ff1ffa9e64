"""Node building blocks without DDS: encodings, malformed frames, in-place messages,
CameraInfo rescaling and latest-frame scheduling. Fast; the topic-level tests are in
test_node_topics.py / test_node_lifecycle.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import cv2
import numpy as np
import pytest

from refinenet_ros.images.encodings import (
    ENCODINGS,
    MalformedImage,
    bytes_per_pixel,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
)
from refinenet_ros.scheduling import Frame, LatestFrameSlots

H, W = 24, 32


def natural(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H // 8 + 1, W // 8 + 1, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR), (5, 5), 2)


def grey_reference(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma, computed independently of OpenCV's conversion."""
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return np.repeat(np.round(y)[..., None], 3, axis=2)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("bigendian", [False, True])
def test_every_encoding_decodes_to_the_reference(encoding: str, pad: int, bigendian: bool) -> None:
    rgb = natural()
    step = W * bytes_per_pixel(encoding) + pad
    data, step = encode_image(rgb, encoding, step=step, is_bigendian=bigendian)
    out = decode_image(data, encoding, W, H, step, bigendian)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - rgb.astype(int))
    if encoding in ("rgb8", "bgr8", "8UC3", "rgba8", "bgra8"):
        assert err.max() == 0
    elif encoding in ("mono8", "8UC1", "mono16", "16UC1"):
        assert np.abs(out.astype(int) - grey_reference(rgb)).max() <= 1
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    else:  # chroma subsampled (4:2:2) or demosaiced (Bayer): close on a smooth image
        assert err.mean() < 3.0, f"{encoding}: mean error {err.mean():.2f}"
        # a wrong channel order / pattern would swap R and B: far larger errors
        assert np.abs(out[..., ::-1].astype(int) - rgb.astype(int)).mean() > 3 * err.mean()


def test_bayer_patterns_are_distinguished() -> None:
    """Decoding a mosaic with the wrong pattern gives a visibly different image."""
    rgb = natural(1)
    data, step = encode_image(rgb, "bayer_rggb8")
    right = decode_image(data, "bayer_rggb8", W, H, step)
    wrong = decode_image(data, "bayer_bggr8", W, H, step)
    assert np.abs(right.astype(int) - rgb).mean() < np.abs(wrong.astype(int) - rgb).mean() / 2


def test_rgb8_without_padding_is_a_zero_copy_view() -> None:
    rgb = natural()
    buf = bytearray(rgb.tobytes())
    out = decode_image(buf, "rgb8", W, H, W * 3)
    assert np.shares_memory(out, np.frombuffer(buf, np.uint8))


def test_mono16_honours_byte_order() -> None:
    wide = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 50
    little = decode_image(wide.astype("<u2").tobytes(), "mono16", W, H, W * 2, False)
    big = decode_image(wide.astype(">u2").tobytes(), "mono16", W, H, W * 2, True)
    np.testing.assert_array_equal(little, big)
    np.testing.assert_array_equal(little[..., 0], (wide >> 8).astype(np.uint8))


MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "unknown encoding": (dict(encoding="32FC1"), "unsupported encoding"),
    "zero size": (dict(width=0), "zero size"),
    "short data": (dict(data=bytes(W * 3 * H - 1)), "truncated"),
    "step too small": (dict(step=W * 3 - 1), "step"),
    "odd yuv width": (dict(encoding="yuv422", width=W - 1, step=(W - 1) * 2), "even width"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_frames_raise_a_named_problem(kind: str) -> None:
    fields: dict[str, Any] = dict(data=bytes(W * 3 * H), encoding="rgb8", width=W, height=H, step=W * 3)
    override, needle = MALFORMED[kind]
    fields.update(override)
    with pytest.raises(MalformedImage, match=needle) as info:
        decode_image(**fields)
    assert isinstance(info.value, ValueError)


def test_compressed_round_trip_and_garbage() -> None:
    rgb = natural()
    assert np.array_equal(decode_compressed(encode_compressed(rgb, "png"), "png"), rgb)
    jpeg = decode_compressed(encode_compressed(rgb, "jpeg", quality=95), "jpeg")
    assert np.abs(jpeg.astype(int) - rgb).mean() < 4
    with pytest.raises(MalformedImage, match="not a decodable"):
        decode_compressed(b"\xff\xd8\xff\xe0 definitely not a jpeg", "jpeg")
    with pytest.raises(MalformedImage, match="no data"):
        decode_compressed(b"", "jpeg")


def test_outgoing_image_reuses_its_buffer_and_keeps_the_header() -> None:
    pytest.importorskip("sensor_msgs")
    from std_msgs.msg import Header

    from refinenet_ros.ros.messages import OutgoingImage

    out = OutgoingImage()
    header = Header(frame_id="cam")
    v1 = out.view(header, H, W, "rgb8")
    v1[:] = natural()
    data_before = out.msg.data
    v2 = out.view(header, H, W, "rgb8")
    assert out.msg.data is data_before and np.shares_memory(v1, v2)
    assert bytes(out.msg.data) == natural().tobytes()
    assert (out.msg.width, out.msg.height, out.msg.step, out.msg.encoding) == (W, H, W * 3, "rgb8")
    assert out.msg.header.frame_id == "cam"
    labels = out.view(header, H, W, "mono16")
    assert labels.dtype == np.uint16 and out.msg.step == W * 2 and len(out.msg.data) == W * H * 2


def test_camera_info_is_rescaled_to_the_label_image() -> None:
    pytest.importorskip("sensor_msgs")
    from sensor_msgs.msg import CameraInfo

    from refinenet_ros.camera_info import scale_camera_info

    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob")
    info.k = [500.0, 0.0, 320.0, 0.0, 400.0, 240.0, 0.0, 0.0, 1.0]
    info.p = [500.0, 0.0, 320.0, -25.0, 0.0, 400.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    info.roi.x_offset, info.roi.width, info.roi.height = 64, 320, 240
    out = scale_camera_info(info, (480, 640), (240, 160), out=CameraInfo())
    assert (out.width, out.height) == (160, 240)
    np.testing.assert_allclose(out.k, [125.0, 0, 80.0, 0, 200.0, 120.0, 0, 0, 1])
    np.testing.assert_allclose(out.p, [125.0, 0, 80.0, -6.25, 0, 200.0, 120.0, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(out.d, info.d)
    assert (out.roi.x_offset, out.roi.width, out.roi.height) == (16, 80, 120)


def test_latest_frame_slot_keeps_the_newest_and_counts_skips() -> None:
    slots = LatestFrameSlots(1)
    for i in range(5):
        slots.put(Frame(0, i, time.monotonic()))
    frames = slots.take(0.1)
    assert [f.msg for f in frames] == [4]
    assert slots.counters[0].received == 5 and slots.counters[0].skipped == 4
    assert slots.take(0.05) == []


def test_slots_wait_for_the_other_camera_to_batch() -> None:
    slots = LatestFrameSlots(2)
    slots.put(Frame(0, "left", time.monotonic()))
    threading.Timer(0.05, lambda: slots.put(Frame(1, "right", time.monotonic()))).start()
    frames = slots.take(1.0, batch_timeout=2.0)
    assert sorted(f.msg for f in frames) == ["left", "right"]
    slots.put(Frame(0, "alone", time.monotonic()))
    t0 = time.monotonic()
    assert [f.msg for f in slots.take(1.0, batch_timeout=0.1)] == ["alone"]
    assert time.monotonic() - t0 < 1.0
    slots.close()
    assert slots.take(1.0) == []


@pytest.mark.parametrize("preset", ["street", "indoor"])
def test_presets_set_only_declared_parameters_with_valid_values(preset: str) -> None:
    pytest.importorskip("rclpy")
    from pathlib import Path

    import yaml

    from refinenet_ros.labels import LABEL_SET_NAMES
    from refinenet_ros.models import MODEL_NAMES
    from refinenet_ros.ros.params import PARAMETERS, check_value

    path = Path(__file__).resolve().parents[1] / "config" / f"{preset}.yaml"
    params = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    assert set(params) <= set(PARAMETERS), set(params) - set(PARAMETERS)
    assert all(check_value(k, v) is None for k, v in params.items())
    assert params["model"] in MODEL_NAMES and params["labels"] in LABEL_SET_NAMES
    expected = {"street": ("camvid", 360, 480), "indoor": ("indoor", 288, 384)}[preset]
    assert (params["labels"], params["network_height"], params["network_width"]) == expected
