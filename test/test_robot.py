"""The robot path, run for real: ``ros2 launch``, ``ros2 param``, ``ros2 run`` after colcon.

``make test-robot`` builds a colcon workspace of this checkout beside the upstream launch,
launch_ros and ros2cli sources (test/robot/workspace.sh) and runs this module with
REFINENET_ROS_ROBOT_WS naming it; without it every test here skips. The test process plays
the camera (640x480 rgb8 + CameraInfo) and reads the node's outputs and /diagnostics, as a
driver and rviz would; the ``ros2`` commands are the ones the README gives a robot's user.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ros_helpers import (
    ROS_ENV,
    LoggedProcess,
    RosClient,
    camera_info_publisher,
    diagnostics,
    image_msg,
    send_until_seen,
    smooth_image,
)

ROOT = Path(__file__).resolve().parents[1]
WS = os.environ.get("REFINENET_ROS_ROBOT_WS", "")
pytestmark = [
    pytest.mark.robot,
    pytest.mark.ros,
    pytest.mark.slow,
    pytest.mark.skipif(not WS, reason="needs the colcon workspace `make test-robot` builds"),
]
VGA = (480, 640)
OUTPUTS = ("labels", "color", "overlay", "confidence")
START_S = 240.0  # a first start exports the ONNX graph and lets auto measure, on 2 busy cores


def ros_environment() -> dict[str, str]:
    env = dict(os.environ, **ROS_ENV)
    env.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    env["ROS_HOME"] = f"{WS}/ros_home"  # launch logs and the node's caches stay in the workspace,
    env["REFINENET_ROS_CACHE"] = f"{WS}/ros_home/refinenet_ros"  # so a rerun skips the ONNX export
    return env


def sourced(command: str) -> list[str]:
    """``command`` in a shell that sourced the workspace, as a robot's user does."""
    return ["bash", "-c", f'set +u; source "{WS}/env.sh" && {command}']


def ros2(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    quoted = " ".join(f"'{a}'" for a in args)
    return subprocess.run(
        sourced(f"ros2 {quoted}"), env=ros_environment(), capture_output=True, text=True, timeout=timeout
    )


def param(node: str, name: str) -> str:
    out = ros2("param", "get", "--no-daemon", "--spin-time", "5", node, name)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


class Launch(LoggedProcess):
    """``ros2 launch refinenet_ros ...`` in the background, its output in a file."""

    poll_s = 0.2

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            sourced("exec ros2 launch refinenet_ros " + " ".join(f"'{a}'" for a in args)),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=ros_environment(),
            start_new_session=True,
        )

    def wait_log(self, text: str, timeout: float = START_S) -> bool:
        return super().wait_log(text, timeout)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """Ctrl-C: SIGINT to ``ros2 launch``; its exit status (None: it had to be killed)."""
        code: int | None = self.proc.poll()
        if code is None:
            self.proc.send_signal(signal.SIGINT)
            code = self.wait(30.0)
            if code is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return code


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    started: list[Launch] = []

    def start(*args: str) -> Launch:
        proc = Launch(tmp_path / f"launch{len(started)}.log", *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[RosClient]:
    saved = {k: os.environ.get(k) for k in ROS_ENV}
    os.environ.update(ROS_ENV)
    client = RosClient("robot_camera")
    yield client
    client.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def camera_until_outputs(client: RosClient, image: str, out: str, leaves: tuple[str, ...] = OUTPUTS) -> None:
    """Play a VGA camera on ``image`` (+ its camera_info) until ``out``/<leaf> all delivered one."""
    from sensor_msgs.msg import CameraInfo, Image

    collectors = [client.subscribe(Image, f"{out}/{leaf}") for leaf in leaves]
    collectors.append(client.subscribe(CameraInfo, f"{out}/labels/camera_info"))
    pub = client.publisher(Image, image)
    assert client.wait_matched(pub, 30.0), f"the node never subscribed to {image}"
    _, info = camera_info_publisher(client, image.rsplit("/", 1)[0] + "/camera_info", VGA, (500.0, 500.0))
    frame = smooth_image(VGA)

    def make(stamp: int) -> Any:
        msg = image_msg(frame, stamp_ns=stamp, frame_id="cam_optical")
        return msg

    seen = send_until_seen(pub, make, collectors, timeout=120.0, companion=info)  # discovery on busy cores
    (messages,) = seen.values()
    assert all(m.header.frame_id == "cam_optical" for m in messages)
    assert messages[0].width == VGA[1] and messages[0].encoding == "mono8"  # labels at camera size


def test_show_args_lists_the_documented_arguments() -> None:
    for launch_file, own in (("segmentation.launch.py", "compressed"), ("multi_camera.launch.py", "cameras")):
        out = ros2("launch", "refinenet_ros", launch_file, "--show-args")
        assert out.returncode == 0, out.stderr
        for name in ("preset", "params_file", "weights", "precision", "network_height", "shm_only", own):
            assert f"'{name}'" in out.stdout, (launch_file, name)


def test_street_preset_end_to_end(launch: Any, client: RosClient) -> None:
    """The README's line on a CPU robot: auto picks a CPU backend, all outputs and
    /diagnostics arrive, parameters are read and set live (bad values refused), Ctrl-C exits 0."""
    run = launch(
        "segmentation.launch.py", "preset:=street", "namespace:=street", "image:=/street/cam/image_raw"
    )
    assert run.wait_log("active: segmenting"), run.log()[-3000:]
    camera_until_outputs(client, "/street/cam/image_raw", "/street/refinenet_segmentation")
    values = diagnostics(client, "street")
    assert values["state"] == "active" and int(values["frames_out"]) >= 1, values
    node = "/street/refinenet_segmentation"
    assert param(node, "network_height") == "Integer value is: 360"
    assert param(node, "backend") == "String value is: auto"
    ok = ros2("param", "set", "--no-daemon", "--spin-time", "5", node, "overlay_alpha", "0.3")
    assert "Set parameter successful" in ok.stdout, ok.stdout + ok.stderr
    bad = ros2("param", "set", "--no-daemon", "--spin-time", "5", node, "overlay_alpha", "7.0")
    assert "Setting parameter failed" in bad.stderr and "overlay_alpha" in bad.stderr, bad.stderr
    assert param(node, "overlay_alpha") == "Double value is: 0.3"
    assert run.stop() == 0, run.log()[-2000:]
    assert "process has finished cleanly" in run.log()


def test_indoor_preset_runs_the_bundled_indoor_model(launch: Any, client: RosClient) -> None:
    """``preset:=indoor`` alone: the bundled indoor weights at 288x384, all outputs arrive."""
    run = launch(
        "segmentation.launch.py", "preset:=indoor", "namespace:=indoor", "image:=/indoor/cam/image_raw",
        "backend:=onnxruntime",
    )  # fmt: skip
    assert run.wait_log("active: segmenting"), run.log()[-3000:]
    node = "/indoor/refinenet_segmentation"
    assert param(node, "weights") == "String value is: indoor"
    assert param(node, "network_width") == "Integer value is: 384"
    camera_until_outputs(client, "/indoor/cam/image_raw", node)
    assert "runs seeded random weights" not in run.log()
    assert run.stop() == 0, run.log()[-2000:]


def test_a_params_file_stands_unless_an_argument_is_given(
    launch: Any, tmp_path: Path, client: RosClient
) -> None:
    params = yaml.safe_load((ROOT / "config" / "street.yaml").read_text())
    params["/**"]["ros__parameters"].update(
        backend="onnxruntime", precision="fp32", input_transport="compressed", batch_timeout_ms=30.0
    )
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(params))
    run = launch(
        "segmentation.launch.py",
        f"params_file:={mine}",
        "namespace:=own",
        "network_height:=240",
        "network_width:=320",
    )
    assert run.wait_log("active: segmenting"), run.log()[-3000:]
    node = "/own/refinenet_segmentation"
    assert param(node, "input_transport") == "String value is: compressed"  # the file's
    assert param(node, "network_height") == "Integer value is: 240"  # the argument's
    multi = launch("multi_camera.launch.py", f"params_file:={mine}", "namespace:=multi", "cameras:=front")
    assert multi.wait_log("active: segmenting"), multi.log()[-3000:]
    assert param("/multi/refinenet_segmentation", "batch_timeout_ms") == "Double value is: 30.0"
    assert run.stop() == 0 and multi.stop() == 0


def test_multi_camera_outputs_per_camera(launch: Any, client: RosClient) -> None:
    run = launch(
        "multi_camera.launch.py", "cameras:=front,left", "namespace:=car", "backend:=onnxruntime",
        "network_height:=240", "network_width:=320",
    )  # fmt: skip
    assert run.wait_log("active: segmenting"), run.log()[-3000:]
    for camera in ("front", "left"):
        camera_until_outputs(
            client, f"/car/{camera}/image", f"/car/refinenet_segmentation/{camera}", ("labels",)
        )
    assert run.stop() == 0, run.log()[-2000:]


def test_a_failed_configure_fails_the_launch(launch: Any, tmp_path: Path) -> None:
    run = launch(
        "segmentation.launch.py",
        "namespace:=broken",
        f"weights:={tmp_path}/missing.pt",
        "backend:=onnxruntime",
    )
    code = run.wait(START_S)
    log = run.log()
    assert code not in (None, 0), log[-3000:]
    assert "missing.pt" in log  # the node's own line says what is wrong
    assert "refinenet_segmentation" in log and "exited with status 2" in log, log[-3000:]
    typo = launch("segmentation.launch.py", "namespace:=typo", "network_width:=wide")
    assert typo.wait(60.0) not in (None, 0)
    assert "launch argument network_width:=wide must be a whole number" in typo.log(), typo.log()[-2000:]


def test_ros2_run_as_the_readme_says(tmp_path: Path) -> None:
    """After colcon the CLI is `ros2 run refinenet_ros refinenet-ros ...` (its script lives in
    lib/refinenet_ros, off PATH), and the node runs without launch from the installed preset."""
    out = ros2("pkg", "executables", "refinenet_ros")
    assert out.stdout.split() == ["refinenet_ros", "refinenet-ros", "refinenet_ros", "segmentation_node"]
    for args in (("--help",), ("build-engine", "--help")):
        done = ros2("run", "refinenet_ros", "refinenet-ros", *args)
        assert done.returncode == 0 and "usage: refinenet-ros" in done.stdout, done.stderr
    log = tmp_path / "run.log"
    with open(log, "wb") as out_file:
        proc = subprocess.Popen(
            sourced(
                "exec ros2 run refinenet_ros segmentation_node --ros-args --params-file "
                "$(ros2 pkg prefix refinenet_ros)/share/refinenet_ros/config/street.yaml -r __ns:=/plain"
            ),
            stdout=out_file,
            stderr=subprocess.STDOUT,
            env=ros_environment(),
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_S
            while "active: segmenting" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches ros2 run and the node, as in a terminal
            assert proc.wait(30) == 0, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
