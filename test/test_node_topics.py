"""The segmentation node over real topics: three node processes started once for the module.

- ``/main``: network 64x96, outputs at input resolution, overlay_alpha 0 (so ``~/overlay``
  echoes the decoded input and every encoding can be checked against a reference).
- ``/net``: configured from a params file: network 48x64, outputs at network resolution.
- ``/comp``: started through ``refinenet-ros node --ros-args``, compressed input.
"""

from __future__ import annotations

import array
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from ros_helpers import (
    CLI_CMD,
    OUT,
    SMALL,
    Collector,
    NodeProcess,
    RosClient,
    camera_info_publisher,
    diagnostics,
    fresh_stamp,
    image_msg,
    msg_array,
    node_args,
    running_nodes,
    send_until_seen,
    smooth_image,
    stamp_ns,
)

from refinenet_ros.images.encodings import ENCODINGS, bytes_per_pixel, encode_compressed

pytestmark = [pytest.mark.ros, pytest.mark.slow]
EXACT = ("rgb8", "bgr8", "8UC3", "rgba8", "bgra8")
GREY = ("mono8", "8UC1", "mono16", "16UC1")


@pytest.fixture(scope="module")
def nodes(
    ros_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("node_topics")
    params = tmp / "net.yaml"
    params.write_text(
        f"/net/{OUT}:\n  ros__parameters:\n    network_height: 48\n    network_width: 64\n"
        "    output_resolution: network\n    backend: torch\n    overlay_alpha: 0.5\n"
        "    publish_confidence: false\n"
    )
    procs = {
        "main": NodeProcess(
            [
                "-r",
                "__ns:=/main",
                *node_args(network_height=64, network_width=96, overlay_alpha=0.0, backend="torch"),
            ],
            tmp / "main.log",
        ),
        "net": NodeProcess(["-r", "__ns:=/net", "--params-file", str(params)], tmp / "net.log"),
        "comp": NodeProcess(
            [
                "-r",
                "__ns:=/comp",
                *node_args(input_transport="compressed", overlay_alpha=0.0, backend="torch"),
            ],
            tmp / "comp.log",
            cmd=[*CLI_CMD, "node"],
        ),
    }
    yield from running_nodes(procs)


@pytest.fixture(scope="module")
def out(ros_client: RosClient, nodes: dict[str, NodeProcess]) -> Callable[[str, str], Collector]:
    """out(ns, leaf): a collector on /ns/refinenet_segmentation/leaf (created once)."""
    from sensor_msgs.msg import CameraInfo, Image

    cache: dict[tuple[str, str], Collector] = {}

    def get(ns: str, leaf: str) -> Collector:
        if (ns, leaf) not in cache:
            msg_type = CameraInfo if leaf.endswith("camera_info") else Image
            topic = f"/{ns}/{OUT}/{leaf}"
            cache[(ns, leaf)] = ros_client.subscribe(msg_type, topic)
            ros_client.wait_publishers(topic)
        return cache[(ns, leaf)]

    return get


def test_outputs_carry_the_input_header_at_input_resolution(ros_client: RosClient, out: Any) -> None:
    from sensor_msgs.msg import Image

    info, send_info = camera_info_publisher(ros_client, "/main/camera_info", (80, 120), (100.0, 100.0))
    img = smooth_image((80, 120), seed=3)
    leaves = ["labels", "color", "overlay", "confidence", "labels/camera_info"]
    collectors = [out("main", leaf) for leaf in leaves]
    pub = ros_client.publisher(Image, "/main/image")
    seen = send_until_seen(
        pub,
        lambda s: image_msg(img, "rgb8", stamp_ns=s, frame_id="cam_optical"),
        collectors,
        companion=send_info,
    )
    [(stamp, msgs)] = seen.items()
    for leaf, msg in zip(leaves, msgs, strict=True):
        assert msg.header.frame_id == "cam_optical", leaf
        assert stamp_ns(msg) == stamp, leaf
        assert (msg.height, msg.width) == (80, 120), leaf
    labels, color, overlay, confidence, cam_info = msgs
    assert (labels.encoding, color.encoding, overlay.encoding, confidence.encoding) == (
        "mono8", "rgb8", "rgb8", "mono8",
    )  # fmt: skip
    lab = msg_array(labels)
    assert lab.max() < 11  # the default: the bundled camvid model, 11 classes
    np.testing.assert_array_equal(msg_array(overlay), img)  # overlay_alpha 0 echoes the input
    from refinenet_ros.labels import get_label_set

    np.testing.assert_array_equal(msg_array(color), get_label_set("camvid").palette[lab])
    assert msg_array(confidence).max() > 0
    np.testing.assert_allclose(cam_info.k, info.k)
    # /diagnostics: the share of unsure pixels (confidence below 0.5) of the frames just segmented
    unsure = float(np.mean(msg_array(confidence) < 128))
    reported = diagnostics(ros_client, "main")["low_confidence_fraction"]
    assert abs(float(reported) - unsure) < 0.02, (reported, unsure)


@pytest.mark.parametrize("pad", [0, 6])
def test_every_encoding_against_a_converted_reference(ros_client: RosClient, out: Any, pad: int) -> None:
    from sensor_msgs.msg import Image

    img = smooth_image(SMALL, seed=5)
    grey = np.round(img @ np.array([0.299, 0.587, 0.114]))[..., None].repeat(3, axis=2)
    pub = ros_client.publisher(Image, "/main/image")
    overlay, labels = out("main", "overlay"), out("main", "labels")
    reference_labels = None
    for encoding in ENCODINGS:
        bigendian = encoding in ("mono16", "16UC1") and pad > 0  # exercise both byte orders
        step = SMALL[1] * bytes_per_pixel(encoding) + pad

        def make(s: int, enc: str = encoding, st: int = step, be: bool = bigendian) -> Any:
            return image_msg(img, enc, stamp_ns=s, step=st, is_bigendian=be)

        [(_, (got, lab))] = send_until_seen(pub, make, [overlay, labels]).items()
        decoded = msg_array(got).astype(int)
        if encoding in EXACT:
            np.testing.assert_array_equal(decoded, img, err_msg=encoding)
            if reference_labels is None:
                reference_labels = msg_array(lab).copy()
            np.testing.assert_array_equal(msg_array(lab), reference_labels, err_msg=encoding)
        elif encoding in GREY:
            assert np.abs(decoded - grey).max() <= 1, encoding
        else:
            err = np.abs(decoded - img).mean()
            assert err < 4.0, f"{encoding}: mean error {err:.2f}"
            assert np.abs(decoded[..., ::-1] - img).mean() > 2 * err, f"{encoding}: R and B swapped"


def _bad(**fields: Any) -> Callable[[int], Any]:
    from sensor_msgs.msg import Image

    def make(stamp: int) -> Any:
        msg = Image(height=SMALL[0], width=SMALL[1], encoding="rgb8", step=SMALL[1] * 3)
        msg.data = array.array("B", bytes(SMALL[0] * SMALL[1] * 3))
        for k, v in fields.items():
            setattr(msg, k, array.array("B", v) if k == "data" else v)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return msg

    return make


MALFORMED = {
    "unsupported encoding": _bad(encoding="32FC1"),
    "zero size": _bad(width=0, height=0, step=0, data=b""),
    "truncated": _bad(data=bytes(100)),
    "is smaller than width": _bad(step=SMALL[1] * 3 - 2),
    "even width": _bad(encoding="yuv422", width=SMALL[1] - 1, step=(SMALL[1] - 1) * 2),
}


def test_each_malformed_frame_is_reported_and_the_next_good_one_processed(
    ros_client: RosClient, out: Any, nodes: dict[str, NodeProcess]
) -> None:
    from sensor_msgs.msg import Image

    pub = ros_client.publisher(Image, "/main/image")
    labels = out("main", "labels")
    good = smooth_image(SMALL, seed=7)
    before = int(diagnostics(ros_client, "main")["malformed"])
    bad_stamps = []
    for problem, make in MALFORMED.items():
        stamp = fresh_stamp()
        bad_stamps.append(stamp)
        pub.publish(make(stamp))
        time.sleep(0.3)  # let the idle worker take it before the good frame replaces it
        send_until_seen(pub, lambda s: image_msg(good, stamp_ns=s), [labels])
        assert nodes["main"].wait_log(problem, 5), f"no error logged for {problem!r}"
    assert not [m for m in labels.msgs if stamp_ns(m) in bad_stamps]
    assert nodes["main"].proc.poll() is None
    log = nodes["main"].log()
    assert log.count("unsupported encoding '32FC1'") == 1  # one clear message, not a flood
    assert int(diagnostics(ros_client, "main")["malformed"]) >= before + len(MALFORMED)


def test_stale_frames_are_dropped_with_max_input_age(ros_client: RosClient, out: Any) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from sensor_msgs.msg import Image

    def set_age(ms: float) -> None:
        value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=ms)
        req = SetParameters.Request(parameters=[Parameter(name="max_input_age_ms", value=value)])
        res = ros_client.call(SetParameters, f"/main/{OUT}/set_parameters", req)
        assert res.results[0].successful, res.results[0].reason

    pub = ros_client.publisher(Image, "/main/image")
    labels = out("main", "labels")
    img = smooth_image(SMALL, seed=9)
    send_until_seen(pub, lambda s: image_msg(img, stamp_ns=s), [labels])  # matched and warm
    stale_before = int(diagnostics(ros_client, "main")["dropped_stale"])
    set_age(500.0)
    try:
        old = time.time_ns() - 10_000_000_000
        pub.publish(image_msg(img, stamp_ns=old))
        time.sleep(1.5)
        assert not [m for m in labels.msgs if stamp_ns(m) == old]
        assert int(diagnostics(ros_client, "main")["dropped_stale"]) > stale_before
        send_until_seen(pub, lambda s: image_msg(img, stamp_ns=s), [labels])  # fresh ones pass
    finally:
        set_age(0.0)


def test_a_burst_is_served_latest_first_and_skips_are_counted(ros_client: RosClient, out: Any) -> None:
    from sensor_msgs.msg import Image

    pub = ros_client.publisher(Image, "/main/image")
    labels = out("main", "labels")
    img = smooth_image(SMALL, seed=11)
    send_until_seen(pub, lambda s: image_msg(img, stamp_ns=s), [labels])
    skipped_before = int(diagnostics(ros_client, "main")["dropped_skipped"])
    stamps = []
    for _ in range(30):
        stamps.append(fresh_stamp())
        pub.publish(image_msg(img, stamp_ns=stamps[-1]))
        time.sleep(0.003)
    assert labels.wait_for(lambda msgs: any(stamp_ns(m) == stamps[-1] for m in msgs), 20), "newest frame lost"
    served = [stamp_ns(m) for m in labels.msgs if stamp_ns(m) in stamps]
    assert served == sorted(served) and len(served) < len(stamps)
    assert int(diagnostics(ros_client, "main")["dropped_skipped"]) > skipped_before


def test_incompatible_qos_is_logged_with_the_fix(
    ros_client: RosClient, nodes: dict[str, NodeProcess]
) -> None:
    from sensor_msgs.msg import Image

    ros_client.subscribe(Image, f"/main/{OUT}/color", reliable=True)  # node publishes best effort
    assert nodes["main"].wait_log("incompatible QoS on publisher", 15), nodes["main"].log()[-2000:]
    assert "qos:=reliable" in nodes["main"].log()


def test_nothing_is_computed_without_subscribers(ros_client: RosClient, nodes: dict[str, Any]) -> None:
    """/net has no output subscriber yet (the next test makes them): frames are counted, not segmented."""
    from sensor_msgs.msg import Image

    pub = ros_client.publisher(Image, "/net/image")
    assert ros_client.wait_matched(pub)
    diag: dict[str, str] = {}
    for _ in range(20):  # repeat: the first frames can go out before the node's reader matched
        pub.publish(image_msg(smooth_image(SMALL), stamp_ns=fresh_stamp()))
        time.sleep(0.2)
        diag = diagnostics(ros_client, "net")
        if int(diag["no_subscriber"]) >= 1:
            break
    assert int(diag["no_subscriber"]) >= 1 and diag["backend_calls"] == "0", diag


def test_params_file_network_resolution_and_camera_info_rescaling(ros_client: RosClient, out: Any) -> None:
    from sensor_msgs.msg import Image

    _, send_info = camera_info_publisher(ros_client, "/net/camera_info", (96, 128), (100.0, 90.0))
    img = smooth_image((96, 128), seed=13)
    leaves = ["labels", "color", "overlay", "labels/camera_info"]
    confidence = out("net", "confidence")
    pub = ros_client.publisher(Image, "/net/image")
    [(_, msgs)] = send_until_seen(
        pub, lambda s: image_msg(img, stamp_ns=s), [out("net", x) for x in leaves], companion=send_info
    ).items()
    labels, color, overlay, cam_info = msgs
    for msg in (labels, color, overlay, cam_info):
        assert (msg.height, msg.width) == (48, 64)
    np.testing.assert_allclose(cam_info.k, [50.0, 0, 32.0, 0, 45.0, 24.0, 0, 0, 1])
    np.testing.assert_allclose(cam_info.p[:8], [50.0, 0, 32.0, 0, 0, 45.0, 24.0, 0])
    small = cv2.resize(img, (64, 48), interpolation=cv2.INTER_LINEAR).astype(float)
    expected = 0.5 * small + 0.5 * msg_array(color)
    assert np.abs(msg_array(overlay) - expected).max() <= 1.0  # params file's overlay_alpha 0.5
    time.sleep(0.5)
    assert confidence.msgs == []  # publish_confidence: false in the params file


def test_compressed_input_through_the_cli(
    ros_client: RosClient, out: Any, nodes: dict[str, NodeProcess]
) -> None:
    from sensor_msgs.msg import CompressedImage

    img = smooth_image(SMALL, seed=15)
    pub = ros_client.publisher(CompressedImage, "/comp/image/compressed")
    overlay, labels = out("comp", "overlay"), out("comp", "labels")

    def make(stamp: int, fmt: str = "png", data: bytes | None = None) -> Any:
        msg = CompressedImage(format=fmt)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.data = array.array("B", encode_compressed(img, fmt) if data is None else data)
        return msg

    [(_, (got, lab))] = send_until_seen(pub, make, [overlay, labels]).items()
    np.testing.assert_array_equal(msg_array(got), img)  # png is lossless
    assert (lab.height, lab.width) == SMALL
    [(_, (got, _))] = send_until_seen(pub, lambda s: make(s, "jpeg"), [overlay, labels]).items()
    assert np.abs(msg_array(got).astype(int) - img).mean() < 4
    bad = fresh_stamp()
    pub.publish(make(bad, "jpeg", b"\xff\xd8\xff\xe0 not really a jpeg"))
    time.sleep(0.3)
    send_until_seen(pub, make, [labels])
    assert not [m for m in labels.msgs if stamp_ns(m) == bad]
    assert nodes["comp"].wait_log("not a decodable", 5)


def test_sigint_and_sigterm_exit_cleanly_within_2_s(nodes: dict[str, NodeProcess]) -> None:
    for name, sig in (("main", signal.SIGINT), ("net", signal.SIGTERM), ("comp", signal.SIGINT)):
        code, seconds = nodes[name].stop(sig)
        assert code == 0, f"{name}: exit {code} after {signal.Signals(sig).name}\n{nodes[name].log()[-2000:]}"
        assert seconds < 2.0, f"{name}: took {seconds:.2f} s to exit on {signal.Signals(sig).name}"
        assert "Traceback" not in nodes[name].log(), nodes[name].log()[-3000:]
