"""Lifecycle transitions through the lifecycle services, parameter validation, and two
cameras batched into one backend call: two node processes started once for the module."""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ros_helpers import (
    OUT,
    NodeProcess,
    RosClient,
    diagnostics,
    fresh_stamp,
    image_msg,
    node_args,
    running_nodes,
    send_until_seen,
    smooth_image,
    stamp_ns,
)

pytestmark = [pytest.mark.ros, pytest.mark.slow]
NET = dict(network_height=64, network_width=96, backend="torch")  # eager torch: no export step
PRESETS = Path(__file__).resolve().parents[1] / "config"


def _frame(image: Any, stamp: int, *, frame_id: str) -> Any:
    return image_msg(image, stamp_ns=stamp, frame_id=frame_id)


@pytest.fixture(scope="module")
def nodes(
    ros_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("node_lifecycle")
    procs = {
        # the indoor preset, with a small model and network size on top (later -p wins)
        "lc": NodeProcess(
            [
                "-r",
                "__ns:=/lc",
                "--params-file",
                str(PRESETS / "indoor.yaml"),
                *node_args(autostart=False, model="lw_refinenet_mobilenetv2", **NET),
            ],
            tmp / "lc.log",
        ),
        "multi": NodeProcess(
            ["-r", "__ns:=/multi", *node_args(cameras=["left", "right"], batch_timeout_ms=300.0, **NET)],
            tmp / "multi.log",
        ),
    }
    ready = {"lc": "waiting for lifecycle transitions", "multi": "active: segmenting"}
    yield from running_nodes(procs, ready)


def state(client: RosClient) -> str:
    from lifecycle_msgs.srv import GetState

    return client.call(GetState, f"/lc/{OUT}/get_state", GetState.Request()).current_state.label


def transition(client: RosClient, transition_id: int) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    req = ChangeState.Request(transition=Transition(id=transition_id))
    return bool(client.call(ChangeState, f"/lc/{OUT}/change_state", req, timeout=120).success)


def set_param(client: RosClient, name: str, value: str) -> Any:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    req = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
    return client.call(SetParameters, f"/lc/{OUT}/set_parameters", req).results[0]


def test_lifecycle_transitions_through_the_services(ros_client: RosClient, nodes: dict[str, Any]) -> None:
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image

    lc = nodes["lc"]
    assert state(ros_client) == "unconfigured"
    from rcl_interfaces.srv import GetParameters

    req = GetParameters.Request(names=["labels", "network_height", "max_input_age_ms"])
    values = ros_client.call(GetParameters, f"/lc/{OUT}/get_parameters", req).values
    assert (values[0].string_value, values[1].integer_value) == ("indoor", 64)  # preset + -p override
    assert values[2].double_value == 300.0
    # choices are validated when set; a bad model makes configure fail with a clear log line
    rejected = set_param(ros_client, "backend", "bogus")
    assert not rejected.successful and "backend" in rejected.reason
    assert set_param(ros_client, "model", "no_such_net").successful
    assert not transition(ros_client, Transition.TRANSITION_CONFIGURE)
    assert lc.wait_log("configure failed", 5) and state(ros_client) == "unconfigured"
    assert set_param(ros_client, "model", "lw_refinenet_mobilenetv2").successful

    assert transition(ros_client, Transition.TRANSITION_CONFIGURE)
    # configure built it, and says which precision auto resolved to
    assert state(ros_client) == "inactive" and "backend torch fp32 (auto) on cpu ready" in lc.log()
    labels = ros_client.subscribe(Image, f"/lc/{OUT}/labels")
    pub = ros_client.publisher(Image, "/lc/image")
    img = smooth_image(seed=21)
    inactive_stamp = fresh_stamp()
    pub.publish(image_msg(img, stamp_ns=inactive_stamp))

    assert transition(ros_client, Transition.TRANSITION_ACTIVATE)
    assert state(ros_client) == "active"
    send_until_seen(pub, lambda s: image_msg(img, stamp_ns=s), [labels])
    assert not [m for m in labels.msgs if stamp_ns(m) == inactive_stamp]
    assert max(int(np.frombuffer(m.data, np.uint8).max()) for m in labels.msgs) < 40  # nyud40

    assert transition(ros_client, Transition.TRANSITION_DEACTIVATE)
    assert state(ros_client) == "inactive"
    time.sleep(0.3)
    n = len(labels.msgs)
    for _ in range(3):
        pub.publish(image_msg(img, stamp_ns=fresh_stamp()))
        time.sleep(0.2)
    time.sleep(1.0)
    assert len(labels.msgs) == n, "an inactive node published"

    assert transition(ros_client, Transition.TRANSITION_CLEANUP)
    assert state(ros_client) == "unconfigured"
    # configure again after cleanup, now with reliable QoS: the best-effort camera is refused
    # with a hint, a reliable one is served
    assert set_param(ros_client, "qos", "reliable").successful
    assert transition(ros_client, Transition.TRANSITION_CONFIGURE)
    assert transition(ros_client, Transition.TRANSITION_ACTIVATE)
    assert lc.wait_log("incompatible QoS on subscription /lc/image", 15), lc.log()[-2000:]
    assert "qos:=sensor_data" in lc.log()
    reliable_pub = ros_client.publisher(Image, "/lc/image", reliable=True)
    send_until_seen(reliable_pub, lambda s: image_msg(img, stamp_ns=s), [labels])
    assert transition(ros_client, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert state(ros_client) == "finalized"
    assert lc.proc.poll() is None


def test_two_cameras_are_batched_and_keep_their_headers(ros_client: RosClient, nodes: dict[str, Any]) -> None:
    from sensor_msgs.msg import Image

    cams = ("left", "right")
    subs = {c: ros_client.subscribe(Image, f"/multi/{OUT}/{c}/labels") for c in cams}
    pubs = {c: ros_client.publisher(Image, f"/multi/{c}/image") for c in cams}
    imgs = {c: smooth_image(seed=i) for i, c in enumerate(cams)}
    for c in cams:
        ros_client.wait_publishers(f"/multi/{OUT}/{c}/labels")
        send_until_seen(pubs[c], functools.partial(_frame, imgs[c], frame_id=c), [subs[c]])
    pairs = []
    for _ in range(5):
        stamps = {c: fresh_stamp() for c in cams}
        for c in cams:
            pubs[c].publish(image_msg(imgs[c], stamp_ns=stamps[c], frame_id=f"{c}_optical"))
        pairs.append(stamps)
        time.sleep(0.5)
    for c in cams:

        def seen(msgs: list[Any], last: int = pairs[-1][c]) -> bool:
            return any(stamp_ns(m) == last for m in msgs)

        assert subs[c].wait_for(seen, 20)
        ours = [m for m in subs[c].msgs if stamp_ns(m) in {p[c] for p in pairs}]
        assert ours and all(m.header.frame_id == f"{c}_optical" for m in ours), c
        other = "right" if c == "left" else "left"
        assert not [m for m in subs[c].msgs if stamp_ns(m) in {p[other] for p in pairs}]
    diag = diagnostics(ros_client, "multi")
    assert int(diag["largest_batch"]) == 2, diag
    assert int(diag["backend_calls"]) < int(diag["frames_out"]), diag


def test_signals_end_both_nodes_cleanly(nodes: dict[str, NodeProcess]) -> None:
    for name, sig in (("lc", signal.SIGTERM), ("multi", signal.SIGINT)):
        code, seconds = nodes[name].stop(sig)
        assert code == 0 and seconds < 2.0, (
            f"{name}: exit {code} in {seconds:.2f} s\n{nodes[name].log()[-2000:]}"
        )
        assert "Traceback" not in nodes[name].log(), nodes[name].log()[-3000:]


def test_a_second_node_in_one_process_logs_each_package_line_once(
    ros_env: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    """The package's log goes to the node while it exists; a node destroyed in the same
    process (a test, a component container, a relaunch) no longer repeats every line."""
    import logging

    import rclpy
    from rclpy.context import Context

    from refinenet_ros.ros.node import SegmentationNode

    context = Context()
    rclpy.init(context=context, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    try:
        SegmentationNode(context=context).destroy_node()
        node = SegmentationNode(context=context)
        logging.getLogger("refinenet_ros").warning("one line from the package")
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert capfd.readouterr().err.count("one line from the package") == 1


def test_nodes_sharing_a_process_keep_the_log_and_parameter_words_until_the_last_goes(
    ros_env: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    """Two nodes in one process (a component container): destroying the first leaves the
    second with the package's log and advice in parameter words; after the last, a Python
    caller reads Python words again."""
    import logging

    import rclpy
    from rclpy.context import Context

    from refinenet_ros.errors import option
    from refinenet_ros.ros.node import SegmentationNode

    context = Context()
    rclpy.init(context=context, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    try:
        first = SegmentationNode(context=context)
        second = SegmentationNode(context=context)
        first.destroy_node()
        assert option("device", "cpu") == "-p device:=cpu"
        logging.getLogger("refinenet_ros").warning("said while the second node lives")
        second.destroy_node()
        assert option("device", "cpu") == "device='cpu'"
    finally:
        rclpy.shutdown(context=context)
    assert capfd.readouterr().err.count("said while the second node lives") == 1
