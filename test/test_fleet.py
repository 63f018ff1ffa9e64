"""`refinenet-ros fleet`: many bags on Ray, each output byte-identical to
`refinenet-ros bag`, a manifest that makes reruns skip what is done and redo what changed,
per-bag failures reported while the run goes on, and a worker killed mid-bag costing only
that bag's retry. One embedded Ray for the whole module (its start-up is the slow part)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'refinenet_ros[fleet]')")

from refinenet_ros.bag import write_sample_bag  # noqa: E402
from refinenet_ros.cli import main  # noqa: E402
from refinenet_ros.fleet import (  # noqa: E402
    MANIFEST_NAME,
    SUMMARY_NAME,
    BagInput,
    FleetError,
    FleetProgress,
    FleetSettings,
    discover,
    run_fleet,
)

pytestmark = pytest.mark.timeout(900)

TOPIC = "/cam/image_raw"
SIZE = (32, 48)
MODEL = ["--weights", "random", "--network-size", "32", "32", "--backend", "torch"]
BAG_ARGS = ["--image-topic", TOPIC, "--no-progress", *MODEL]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One embedded Ray (2 CPUs) for every fleet test; shut down so no raylet outlives them.

    Ray gives its raylet a fixed 30 s to register; on a machine busy with training that can
    pass, so the start is tried up to three times, and the raylet waits longer for its agent."""
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    for attempt in range(3):
        try:
            ray.init(
                num_cpus=2, include_dashboard=False, object_store_memory=128 << 20, log_to_driver=False,
                # no idle Python workers started with the node: they would compete with its start-up
                _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False},
            )  # fmt: skip
            break
        except Exception as exc:
            ray.shutdown()
            _kill_ray_children()  # a failed start leaves its GCS server running
            if attempt == 2:  # Ray's own start-up, not our code: say so rather than fail
                pytest.skip(f"embedded Ray did not start in 3 tries on this busy machine: {exc}")
    try:
        yield
    finally:
        ray.shutdown()
        _kill_ray_children()


def _kill_ray_children() -> None:
    """SIGKILL this process's own Ray daemons (gcs_server, raylet) that outlived shutdown."""
    ray_dir = str(Path(ray.__file__).parent)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            exe = os.readlink(proc / "exe")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and exe.startswith(ray_dir):
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module", autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The serial references run `bag --threads 1` in this process (the workers' setting);
    the tests after this module get torch's thread count back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def reference(bag: Path, out: Path, *extra: str) -> Path:
    """What serial `refinenet-ros bag` writes for ``bag`` (one thread, as each fleet worker)."""
    assert main(["bag", str(bag), str(out), *BAG_ARGS, "--threads", "1", *extra]) == 0
    return out


def same_files(a: Path, b: Path) -> None:
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)), (a, b)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{b / name} differs from {a / name}"


def no_debris(root: Path) -> None:
    leftovers = [p for p in root.rglob(".*") if ".partial-" in p.name]
    assert not leftovers, leftovers


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def test_discover_maps_folders_files_and_lists_to_relative_outputs(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    write_sample_bag(root / "robot1" / "mon", frames=1, size=SIZE, topic=TOPIC)
    tue = write_sample_bag(tmp_path / "tue", frames=1, size=SIZE, topic=TOPIC)
    (root / "robot2").mkdir(parents=True)
    shutil.copy(tue / "tue.mcap", root / "robot2" / "tue.mcap")  # a bare file
    (root / ".hidden").mkdir()
    shutil.copy(tue / "tue.mcap", root / ".hidden" / "x.mcap")
    out = root / "seg"  # DIR inside the searched folder: never taken for inputs
    write_sample_bag(out / "robot1" / "mon", frames=1, size=SIZE, topic=TOPIC)
    listing = tmp_path / "bags.txt"
    listing.write_text("# one a line\ntue\n\n")

    bags = discover([root, listing], out)
    assert [(b.rel, b.path) for b in bags] == [
        ("robot1/mon", root / "robot1" / "mon"),
        ("robot2/tue", root / "robot2" / "tue.mcap"),
        ("tue", tmp_path / "tue"),
    ]
    assert bags[0].output(out) == out / "robot1" / "mon"
    with pytest.raises(FleetError, match="would both be written"):
        discover([root / "robot2" / "tue.mcap", tue], out)
    with pytest.raises(FleetError, match="does not exist"):
        discover([tmp_path / "nope"], out)
    with pytest.raises(FleetError, match="inside the input bag"):
        discover([tue], tue / "out")


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sample_bag(tmp_path / "b", frames=1, size=SIZE, topic=TOPIC)
    for flags, text in [
        (["--threads-per-worker", "0"], "--threads-per-worker 0"),
        (["--gpus-per-worker", "1.5"], "--gpus-per-worker 1.5"),
        (["--threads", "2"], "--threads-per-worker"),
    ]:
        assert main(["fleet", str(bag), "--out", str(tmp_path / "o"), *BAG_ARGS, *flags]) == 2
        assert text in capsys.readouterr().err
    assert main(["fleet", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *BAG_ARGS]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_byte_identical_resumable_and_failures_reported(
    tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outputs = serial `bag`; a corrupt bag is reported by path while the others finish;
    a rerun skips what is done; a changed input is redone, and only it."""
    src = tmp_path / "in"
    d1 = write_sample_bag(src / "a" / "d1", frames=4, size=SIZE, topic=TOPIC)
    d2 = write_sample_bag(src / "a" / "d2", frames=3, size=SIZE, topic=TOPIC, storage="sqlite3")
    raw = src / "b" / "loose.mcap"
    raw.parent.mkdir()
    shutil.copy(write_sample_bag(tmp_path / "loose", frames=2, size=SIZE, topic=TOPIC) / "loose.mcap", raw)
    corrupt = shutil.copytree(d1, src / "bad")
    data = bytearray((corrupt / "d1.mcap").read_bytes())
    data[97:105] = b"\xff" * 8  # a record length: the reader fails mid-file
    (corrupt / "d1.mcap").write_bytes(bytes(data))
    refs = tmp_path / "ref"
    expected = {
        "a/d1": reference(d1, refs / "d1"),
        "a/d2": reference(d2, refs / "d2"),
        "b/loose": reference(raw, refs / "loose"),
    }
    out = tmp_path / "out"
    fleet = ["fleet", str(src), "--out", str(out), *BAG_ARGS, "--workers", "2"]

    capsys.readouterr()
    assert main(fleet) == 1  # one bag failed
    cap = capsys.readouterr()
    assert f"FAILED {corrupt}" in cap.out and "corrupt" in cap.out
    for rel, ref in expected.items():
        same_files(ref, out / rel)
    assert not (out / "bad").exists()
    no_debris(out)
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["done"], summary["skipped"], summary["frames"]) == (3, 0, 9)
    assert [f["input"] for f in summary["failed"]] == [str(corrupt)]
    stamps = {rel: (out / rel / "metadata.yaml").stat().st_mtime_ns for rel in expected}

    shutil.rmtree(corrupt)
    assert main(fleet) == 0  # nothing to do: Ray is not even asked for a worker
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 3, [])
    assert {rel: (out / rel / "metadata.yaml").stat().st_mtime_ns for rel in expected} == stamps

    shutil.rmtree(d2)
    write_sample_bag(d2, frames=5, size=SIZE, topic=TOPIC, storage="sqlite3")  # re-recorded
    assert main(fleet) == 0
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["done"], summary["skipped"], summary["frames"]) == (1, 2, 5)
    same_files(reference(d2, refs / "new" / "d2"), out / "a" / "d2")
    assert (out / "a" / "d1" / "metadata.yaml").stat().st_mtime_ns == stamps["a/d1"]
    records = {r["output"]: r for r in manifest_lines(out)}  # compacted: one line per output
    assert len(manifest_lines(out)) == len(records) == 4
    assert records["a/d2"]["frames"] == 5 and records["bad"]["status"] == "failed"


def test_a_worker_killed_mid_bag_loses_and_duplicates_nothing(tmp_path: Path, ray_local: None) -> None:
    """SIGKILL the process segmenting a bag: Ray restarts the worker and retries that bag;
    every output is complete, identical to serial `bag`, and recorded once."""
    from refinenet_ros.bag import BagOptions
    from refinenet_ros.cli import backend_options_from_args, build_parser, model_config_from_args
    from refinenet_ros.fleet import FleetJob

    bags = [
        BagInput(write_sample_bag(tmp_path / "in" / f"d{i}", frames=24, size=SIZE, topic=TOPIC), f"d{i}")
        for i in range(3)
    ]
    refs = {b.rel: reference(b.path, tmp_path / "ref" / b.rel, "--batch", "1") for b in bags}
    args = build_parser().parse_args(["bag", "x", "y", *BAG_ARGS, "--threads", "1", "--batch", "1"])
    job = FleetJob(
        model_config_from_args(args),
        backend_options_from_args(args),
        BagOptions((TOPIC,), batch=1, progress=False),
    )
    killed: list[tuple[str, int]] = []

    def kill_one(p: FleetProgress) -> None:
        for rel, (_, pid, frames) in p.active.items():
            if not killed and 2 <= frames <= 16:
                os.kill(pid, signal.SIGKILL)
                killed.append((rel, pid))

    out = tmp_path / "out"
    settings = FleetSettings(workers=2, progress=False, poll_s=0.1)
    summary = run_fleet(bags, out, job, settings, on_progress=kill_one)
    assert killed, "no bag was caught mid-run"
    assert summary.ok and len(summary.done) == 3 and summary.frames == 72
    assert str(tmp_path / "in" / killed[0][0]) in summary.retried
    for rel, ref in refs.items():
        same_files(ref, out / rel)
    no_debris(out)
    lines = manifest_lines(out)
    assert sorted(r["output"] for r in lines) == ["d0", "d1", "d2"]
    assert all(r["status"] == "done" for r in lines)


def test_damaged_outputs_are_redone_not_counted_done(
    tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a complete run: a truncated output .mcap, a deleted one and one overwritten with
    garbage are segmented again (metadata.yaml's message counts alone still matched)."""
    src = tmp_path / "in"
    bags = [write_sample_bag(src / f"d{i}", frames=2, size=SIZE, topic=TOPIC) for i in range(4)]
    refs = {b.name: reference(b, tmp_path / "ref" / b.name) for b in bags}
    out = tmp_path / "out"
    fleet = ["fleet", str(src), "--out", str(out), *BAG_ARGS, "--workers", "1"]
    assert main(fleet) == 0
    (out / "d0" / "d0.mcap").write_bytes((out / "d0" / "d0.mcap").read_bytes()[:-100])  # truncated
    (out / "d1" / "d1.mcap").unlink()  # deleted
    size = (out / "d2" / "d2.mcap").stat().st_size
    (out / "d2" / "d2.mcap").write_bytes(b"\x00garbage" * (size // 8))  # overwritten
    capsys.readouterr()
    assert main(fleet) == 0
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["done"], summary["skipped"]) == (3, 1)
    for name, ref in refs.items():
        same_files(ref, out / name)


def test_out_equal_to_an_input_folder_and_an_unreachable_address_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    src = tmp_path / "in"
    write_sample_bag(src / "d0", frames=1, size=SIZE, topic=TOPIC)
    assert main(["fleet", str(src), "--out", str(src), *BAG_ARGS]) == 2
    assert "is the input folder" in capsys.readouterr().err
    t0 = time.monotonic()
    assert main(["fleet", str(src), "--out", str(tmp_path / "o"), *BAG_ARGS, "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--address 127.0.0.1:1" in err and "ray start --head" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert time.monotonic() - t0 < 60  # seconds, not Ray's minutes of retries
    # weights whose metadata lies: one line from the driver, before any worker starts
    import torch

    from refinenet_ros.models import build_model, save_checkpoint

    lying = tmp_path / "lying.pt"
    save_checkpoint(lying, build_model("lw_refinenet_mobilenetv2", 11), model_name="lw_refinenet_mobilenetv2",
                    label_set="camvid", num_classes=11, mean=(0.5,) * 3, std=(0.5,) * 3,
                    network_size=None)  # fmt: skip
    obj = torch.load(lying, weights_only=True)
    obj["metadata"]["network_size"] = "big"
    torch.save(obj, lying)
    flags = ["--image-topic", TOPIC, "--no-progress", "--backend", "torch", "--weights", str(lying)]
    assert main(["fleet", str(src), "--out", str(tmp_path / "o2"), *flags]) == 2
    err = capsys.readouterr().err
    assert "network size" in err and "Traceback" not in err, err


def test_sigterm_to_the_fleet_driver_is_terminated_143(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    src = tmp_path / "in"
    write_sample_bag(src / "d0", frames=30, size=SIZE, topic=TOPIC)
    out = tmp_path / "out"
    env = {**os.environ, "RAY_agent_register_timeout_ms": "120000"}
    proc = subprocess.Popen([sys.executable, "-m", "refinenet_ros", "fleet", str(src), "--out", str(out),
                             *BAG_ARGS, "--workers", "1"], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / ".fleet.lock").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # Ray starting or running: both must end as "terminated"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: Ray daemons it may have left
    assert proc.returncode == 143, err[-2000:]
    assert "terminated" in err and "Traceback" not in err, err[-2000:]


def test_the_summary_prints_the_malformed_frame_count(
    tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    t = ts.types
    h, w = SIZE
    with Writer(tmp_path / "in" / "bad", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        for i, nbytes in enumerate([h * w * 3, 100, h * w * 3]):  # the middle frame is truncated
            header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=10 + i, nanosec=0),
                                              frame_id="cam")  # fmt: skip
            msg = t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8",
                                             is_bigendian=0, step=w * 3,
                                             data=np.full(nbytes, 7, np.uint8))  # fmt: skip
            writer.write(conn, (10 + i) * 10**9, ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    capsys.readouterr()
    out = str(tmp_path / "out")
    assert main(["fleet", str(tmp_path / "in"), "--out", out, *BAG_ARGS, "--workers", "1"]) == 0
    assert "1 malformed frames skipped" in capsys.readouterr().out
