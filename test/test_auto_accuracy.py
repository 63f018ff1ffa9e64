"""``auto`` decides by accuracy: weights that carry their INT8 ranges and val mIoU per path,
``evaluate --record`` for a user's own data, the pixel-agreement rule without a record, and
``precision: auto`` as the default everywhere.

Everything runs the bundled CamVid model at a small network size, so graphs, INT8 graphs
and measurements stay quick; the weights are packed the way a maintainer packs them
(``refinenet-ros weights --pack``). No speed is asserted (that is ``bench``'s job): the
tests check which rule admitted or rejected each candidate, not which one was faster.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime is needed for the INT8 graph")

from refinenet_ros.backends import BackendOptions, admission, auto_select, create_backend
from refinenet_ros.backends.auto_select import Candidate, select_backend
from refinenet_ros.backends.factory import candidate_builder, onnx_for
from refinenet_ros.cli import main
from refinenet_ros.cli.weights import pack
from refinenet_ros.config import ModelConfig
from refinenet_ros.samples import sample_images
from refinenet_ros.weights import get_weights
from refinenet_ros.weights.records import (
    ACCURACY_KEY,
    MIN_RECORD_FRAMES,
    weights_accuracy,
    weights_int8_ranges,
)

SIZE = (96, 128)  # (H, W) the packed test weights record: small, so everything stays quick
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
needs_camvid = pytest.mark.skipif(
    not (CAMVID / "val").is_dir(), reason="CamVid is read from ../shared/data (not in a fresh clone)"
)
INT8_PAIR = (Candidate("onnxruntime", "fp32"), Candidate("onnxruntime", "int8"))


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of real pictures to calibrate on (the bundled samples as files)."""
    folder = tmp_path_factory.mktemp("calib")
    for name, image in sample_images():
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, calib_folder: Path) -> Path:
    """The bundled weights packed at SIZE with INT8 ranges, through the maintainers' command."""
    out = tmp_path_factory.mktemp("packed") / "camvid_small.pt"
    rc = main(["weights", "--pack", str(get_weights("camvid").path), "--out", str(out),
               "--network-size", str(SIZE[0]), str(SIZE[1]),
               "--calib-images", str(calib_folder), "--calib-count", "4"])  # fmt: skip
    assert rc == 0
    return out


def _with_accuracy(src: Path, dst: Path, miou: dict[str, float], size: tuple[int, int] = SIZE) -> ModelConfig:
    """``src`` re-packed with a given accuracy record (as ``--pack`` would write one)."""
    record = {"miou": miou, "dataset": "camvid val", "frames": 101, "network_size": list(size)}
    pack(src, dst, None, None, {ACCURACY_KEY: record})
    return ModelConfig(weights=str(dst)).resolved()


def _options(engine_dir: Path, **kw: object) -> BackendOptions:
    base = BackendOptions(device="cpu", input_size=SIZE, max_batch=1, engine_dir=str(engine_dir))
    return replace(base, **kw)  # type: ignore[arg-type]


def _verdicts(cfg: ModelConfig, options: BackendOptions) -> dict[str, str]:
    graph = onnx_for(cfg, options)
    build = candidate_builder(cfg, options)
    _, decision = select_backend(cfg, options, graph, candidates=INT8_PAIR, build=build)
    return {m.label: m.status for m in decision.table}


@pytest.mark.slow
def test_packed_weights_carry_int8_ranges_and_stay_small(packed: Path) -> None:
    ranges = weights_int8_ranges(packed)
    assert ranges is not None and ranges["frames"] == 4 and ranges["network_size"] == list(SIZE)
    assert len(ranges["ranges"]) > 100  # one (low, high) per activation tensor
    assert all(lo <= hi for lo, hi in ranges["ranges"].values())
    assert packed.stat().st_size < 10e6
    # the tensors are the bundled file's, bit for bit (fp16 -> fp32 -> fp16 is lossless)
    import torch

    a = torch.load(get_weights("camvid").path, weights_only=True)["state_dict"]
    b = torch.load(packed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_int8_graph_is_built_from_the_shipped_ranges_without_frames(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from refinenet_ros.backends import ort_quantize

    def no_frames(*args: object, **kwargs: object) -> None:
        raise AssertionError("INT8 from shipped ranges must not read calibration frames")

    monkeypatch.setattr(ort_quantize, "calibration_batches", no_frames)
    cfg = ModelConfig(weights=str(packed)).resolved()
    with caplog.at_level(logging.INFO, logger="refinenet_ros"):
        backend = create_backend(cfg, _options(tmp_path, kind="onnxruntime", precision="int8"))
    assert "shipped ranges" in caplog.text and "no frames" in caplog.text
    assert "first start of" in caplog.text and "INT8 graph" in caplog.text  # what was built, how long
    labels, _ = backend.infer(next(iter(_frames()))[None])
    assert labels.shape == (1, *SIZE)


def _frames() -> list:
    from refinenet_ros.backends.auto_select import agreement_frames

    return agreement_frames(SIZE, 1)


@pytest.mark.slow
def test_a_record_within_half_a_point_admits_int8_one_losing_two_rejects_it(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auto_select, "SANITY_AGREEMENT", 0.0)  # judge by the record alone here
    close = _with_accuracy(
        packed, tmp_path / "close.pt", {"onnxruntime fp32": 69.4, "onnxruntime int8": 69.1}
    )
    verdicts = _verdicts(close, _options(tmp_path / "a"))
    assert "admitted: -0.30 mIoU vs FP32 by the weights' record" in verdicts["onnxruntime int8"]

    worse = _with_accuracy(
        packed, tmp_path / "worse.pt", {"onnxruntime fp32": 69.4, "onnxruntime int8": 67.4}
    )
    verdicts = _verdicts(worse, _options(tmp_path / "b"))
    assert verdicts["onnxruntime int8"].startswith("rejected: loses 2.00 mIoU points by the weights' record")
    assert verdicts["onnxruntime fp32"].startswith("chosen")


@pytest.mark.slow
def test_without_a_record_the_pixel_agreement_rule_decides(packed: Path, tmp_path: Path) -> None:
    verdicts = _verdicts(ModelConfig(weights=str(packed)).resolved(), _options(tmp_path))
    int8 = verdicts["onnxruntime int8"]
    assert "agrees on" in int8 and "no" in int8 and "record" in int8
    assert int8.startswith(("rejected", "admitted", "chosen"))


@pytest.mark.slow
def test_a_record_for_another_network_size_falls_back_to_agreement(packed: Path, tmp_path: Path) -> None:
    other = _with_accuracy(packed, tmp_path / "vga.pt", {"onnxruntime fp32": 69.4, "onnxruntime int8": 69.3},
                           size=(480, 640))  # fmt: skip
    verdicts = _verdicts(other, _options(tmp_path))
    assert (
        "weights' record" not in verdicts["onnxruntime int8"] and "agrees on" in verdicts["onnxruntime int8"]
    )


def test_a_decision_measured_on_a_busy_machine_is_measured_again_when_it_is_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    busy, quiet = {"load_average_1m": 8.3}, {"load_average_1m": 0.9}
    monkeypatch.setattr(auto_select, "load_average", lambda: 1.1)  # 2 CPUs, quiet now
    assert "busy machine (load 8.3 on 2 CPUs" in (auto_select.measured_when_busy(busy, 2) or "")
    assert auto_select.measured_when_busy(quiet, 2) is None
    monkeypatch.setattr(auto_select, "load_average", lambda: 6.0)  # still busy: keep it
    assert auto_select.measured_when_busy(busy, 2) is None


@pytest.mark.slow
def test_the_users_record_wins_over_the_weights_record(packed: Path, tmp_path: Path) -> None:
    cfg = _with_accuracy(packed, tmp_path / "w.pt", {"onnxruntime fp32": 69.4, "onnxruntime int8": 69.3})
    options = _options(tmp_path)
    graph = onnx_for(cfg, options)
    admission.record_accuracy(graph, "onnxruntime", "fp32", 55.0, "my robot", frames=MIN_RECORD_FRAMES)
    admission.record_accuracy(graph, "onnxruntime", "int8", 52.0, "my robot", frames=MIN_RECORD_FRAMES)
    build = candidate_builder(cfg, options)
    _, decision = select_backend(cfg, options, graph, candidates=INT8_PAIR, build=build)
    rows = {m.label: m.status for m in decision.table}
    assert rows["onnxruntime int8"].startswith("rejected: loses 3.00 mIoU points by your evaluate --record")


@pytest.mark.slow
def test_precision_auto_chooses_among_precisions_and_logs_auto(
    packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _with_accuracy(packed, tmp_path / "w.pt", {"onnxruntime fp32": 69.4, "onnxruntime int8": 69.3})
    monkeypatch.setenv("REFINENET_ROS_AUTO", "measure")  # the suite runs with "fixed" (conftest)
    monkeypatch.setattr(auto_select, "DEFAULT_CANDIDATES", INT8_PAIR)
    monkeypatch.setattr(auto_select, "BUSY_LOAD", float("inf"))  # a busy test machine's decision stands
    options = _options(tmp_path)
    assert options.kind == "auto" and options.precision == "auto"  # the defaults
    with caplog.at_level(logging.INFO, logger="refinenet_ros"):
        backend = create_backend(cfg, options)
    text = caplog.text
    assert "onnxruntime fp32, onnxruntime int8" in text  # both precisions were candidates
    assert "accuracy: the weights' record" in text and "verdict" in text
    assert "asked for" not in text
    chosen = [line for line in text.splitlines() if "backend: onnxruntime" in line and "(auto:" in line]
    assert chosen
    # the measured choice is said once: not also the fixed order's "ONNX Runtime with <provider>"
    assert not any("ONNX Runtime with" in line for line in chosen)
    assert getattr(backend, "precision", None) in ("fp32", "int8")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="refinenet_ros"):
        create_backend(cfg, options)
    assert "measured before" in caplog.text and "auto: measuring" not in caplog.text


@pytest.mark.slow
def test_precision_auto_without_measuring_says_so(packed: Path, tmp_path: Path, caplog) -> None:
    cfg = ModelConfig(weights=str(packed)).resolved()
    with caplog.at_level(logging.INFO, logger="refinenet_ros"):
        create_backend(cfg, _options(tmp_path, kind="torch"))
    assert "backend: torch fp32" in caplog.text and "precision auto:" in caplog.text


def test_bench_model_measures_what_the_node_runs_by_default(tmp_path: Path) -> None:
    from refinenet_ros.cli import build_parser
    from refinenet_ros.cli.bench import _network_sizes
    from refinenet_ros.ros.params import NodeConfig

    args = build_parser().parse_args(["bench", "model"])
    node = NodeConfig()
    assert args.backend == [node.backend] and args.precision == [node.precision] == ["auto"]
    cfg = ModelConfig().resolved()
    assert _network_sizes(args, cfg) == (cfg.network_size,) == ((360, 480),)
    assert args.calib_images is None and args.calib_bag is None  # the weights' ranges, as the node
    for command in (["segment", "x.png"], ["bag", "a", "b", "--image-topic", "/cam"], ["evaluate"]):
        assert build_parser().parse_args(command).precision == "auto"


@pytest.mark.slow
@needs_camvid
def test_evaluate_without_record_changes_no_decision_and_record_needs_enough_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["evaluate", "--dataset", "camvid", "--root", str(CAMVID), "--split", "val",
              "--backend", "onnxruntime", "--precision", "fp32", "--network-size", str(SIZE[0]), str(SIZE[1]),
              "--engine-dir", str(tmp_path), "--no-progress",
              "--report", str(tmp_path / "r.json")]  # fmt: skip
    assert main([*common, "--limit", "3"]) == 0
    graph = onnx_for(ModelConfig().resolved(), _options(tmp_path, precision="fp32"))
    assert not admission.accuracy_path(graph).exists()  # evaluating alone records nothing

    assert main([*common, "--limit", "3", "--record"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--record" in err[0] and str(MIN_RECORD_FRAMES) in err[0]

    assert main([*common, "--limit", str(MIN_RECORD_FRAMES), "--record"]) == 0
    saved = json.loads(admission.accuracy_path(graph).read_text())
    assert saved["frames"] == MIN_RECORD_FRAMES and "onnxruntime fp32" in saved["miou"]
    record = admission.user_accuracy(graph)
    assert record is not None and record.source == "your evaluate --record"


def test_bundled_weights_record_accuracy_and_int8_ranges() -> None:
    path = get_weights("camvid").path
    record = weights_accuracy(path)
    assert record is not None and record.frames >= MIN_RECORD_FRAMES and record.network_size == (360, 480)
    assert {"onnxruntime fp32", "onnxruntime int8", "openvino int8"} <= set(record.miou)
    ranges = weights_int8_ranges(path)
    assert ranges is not None and ranges["network_size"] == [360, 480]


@pytest.mark.slow
def test_tensorrt_gets_a_symmetric_int8_graph_from_the_same_ranges(packed: Path, tmp_path: Path) -> None:
    """TensorRT's explicit quantisation takes Q/DQ pairs with zero points of 0 (signed INT8);
    the graph is built here, on a CPU, from the weights' ranges (TensorRT itself needs a GPU)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from refinenet_ros.backends.ort_quantize import TENSORRT_QUANT, quantized_cached

    cfg = ModelConfig(weights=str(packed)).resolved()
    options = _options(tmp_path, precision="int8")
    ranges = weights_int8_ranges(packed)
    graph = quantized_cached(onnx_for(cfg, options), options, TENSORRT_QUANT, ranges=ranges)
    model = onnx.load(str(graph))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [
        consts[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    meta = {p.key: p.value for p in model.metadata_props}
    # the TensorRT backend builds any graph with this record as explicitly quantised
    assert json.loads(meta["quantization"])["symmetric"] is True


@pytest.mark.slow
@needs_camvid
def test_pack_records_the_val_miou_of_each_path_with_the_shipped_ranges(packed: Path, tmp_path: Path) -> None:
    out = tmp_path / "recorded.pt"
    rc = main(["weights", "--pack", str(packed), "--out", str(out), "--no-progress",
               "--dataset", "camvid", "--root", str(CAMVID), "--split", "val", "--limit", "3",
               "--paths", "onnxruntime fp32", "onnxruntime int8"])  # fmt: skip
    assert rc == 0
    record = weights_accuracy(out)
    assert record is not None and set(record.miou) == {"onnxruntime fp32", "onnxruntime int8"}
    assert record.frames == 3 and record.network_size == SIZE
    assert str(CAMVID) not in record.dataset and "val" in record.dataset  # no machine paths shipped
    assert weights_int8_ranges(out) == weights_int8_ranges(packed)  # the input's ranges stay
