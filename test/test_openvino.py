"""OpenVINO backend and the measured ``auto``: agreement with ONNX Runtime on real frames,
precision refusals with the reason, compiled-model and decision caches.

No timing is asserted (speed goals live in ``bench``); ``auto`` tests inject cheap or
deliberately broken candidates so they check the decision logic, not this machine's speed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from refinenet_ros.backends import (
    Backend,
    BackendError,
    BackendOptions,
    CalibrationSpec,
    admission,
    auto_select,
    create_backend,
)
from refinenet_ros.backends.auto_select import Candidate, select_backend
from refinenet_ros.backends.calibration import preprocess
from refinenet_ros.backends.factory import onnx_for, with_weights_size
from refinenet_ros.config import ModelConfig
from refinenet_ros.machine import cpu_flags, cpu_has_native_bf16
from refinenet_ros.samples import sample_images

SIZE = (96, 128)  # (H, W): small, so ORT, OpenVINO and calibration stay quick


@pytest.fixture(scope="module")
def trained_cfg() -> ModelConfig:
    """The bundled trained CamVid model: real labels, so agreement on real frames means something."""
    return ModelConfig().resolved()


@pytest.fixture(scope="module")
def frames() -> npt.NDArray[np.uint8]:
    return np.stack([preprocess(image, SIZE) for _, image in sample_images()])


def _options(engine_dir: Path, **kw: object) -> BackendOptions:
    base = BackendOptions(device="cpu", input_size=SIZE, max_batch=1, engine_dir=str(engine_dir))
    return replace(base, **kw)  # type: ignore[arg-type]


def _labels(backend: object, frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.integer]:
    return np.concatenate([backend.infer(f[None])[0] for f in frames])  # type: ignore[attr-defined]


@pytest.mark.slow
def test_openvino_agrees_with_onnxruntime_on_real_frames(
    trained_cfg: ModelConfig, frames: npt.NDArray[np.uint8], tmp_path: Path
) -> None:
    ort = create_backend(trained_cfg, _options(tmp_path, kind="onnxruntime"))
    ov = create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    assert (ov.name, ov.device, ov.input_size, ov.num_classes) == ("openvino", "cpu", SIZE, ort.num_classes)
    labels, confidence = ov.infer(frames[:1])
    assert labels.shape == (1, *SIZE) and confidence.dtype == np.float32
    assert float(confidence.min()) > 0.0 and float(confidence.max()) <= 1.0 + 1e-5
    agreement = float(np.mean(_labels(ov, frames) == _labels(ort, frames)))
    assert agreement >= 0.999, f"OpenVINO fp32 vs ONNX Runtime fp32: {agreement:.4%}"


@pytest.mark.slow
def test_compiled_model_is_cached_beside_the_graph_and_reused(
    trained_cfg: ModelConfig, frames: npt.NDArray[np.uint8], tmp_path: Path
) -> None:
    first = create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    blobs = list((tmp_path / "onnx").glob("*.cpu.fp32.*.ovblob"))
    assert len(blobs) == 1 and blobs[0].with_suffix(".json").is_file()
    key = json.loads(blobs[0].with_suffix(".json").read_text())
    assert {"graph_sha256", "openvino", "device", "precision", "cpu_flags"} <= set(key)
    assert "compiled and cached" in first.cache_state  # type: ignore[attr-defined]
    again = create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    assert "from cache" in again.cache_state  # type: ignore[attr-defined]
    np.testing.assert_array_equal(_labels(again, frames[:2]), _labels(first, frames[:2]))
    blobs[0].write_bytes(b"truncated")  # a broken blob is compiled again, not fatal
    healed = create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    assert "compiled and cached" in healed.cache_state  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_compiled_model_miss_names_the_key_field_that_differed(
    trained_cfg: ModelConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log says why a cached compiled model was not used."""
    create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    caplog.set_level("INFO", logger="refinenet_ros")
    blob = next((tmp_path / "onnx").glob("*.cpu.fp32.*.ovblob"))
    record = blob.with_suffix(".json")
    stale = json.loads(record.read_text())
    stale["openvino"] = "2025.0.0"  # as if compiled by the previous OpenVINO release
    record.with_name(record.name.replace(".fp32.", ".fp32.0ld")).write_text(json.dumps(stale))
    blob.unlink()
    record.unlink()  # only the older release's entry is left
    create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    assert (
        "OpenVINO compiled-model cache: miss: rebuilt because openvino differed (2025.0.0 ->" in caplog.text
    )


@pytest.mark.slow
@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU has AVX512-BF16/AMX: bf16 runs here")
def test_bf16_is_refused_with_the_reason_without_the_units(trained_cfg: ModelConfig, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"bf16 needs AVX-512-BF16 or AMX-BF16.*precision='fp32'"):
        create_backend(trained_cfg, _options(tmp_path, kind="openvino", precision="bf16"))
    with pytest.raises(BackendError, match="bf16 runs on backend='openvino'"):
        create_backend(trained_cfg, _options(tmp_path, kind="onnxruntime", precision="bf16"))


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="no AVX512-BF16/AMX-BF16 on this CPU: bf16 is refused")
def test_bf16_runs_and_mostly_agrees_where_the_cpu_has_it(
    trained_cfg: ModelConfig, frames: npt.NDArray[np.uint8], tmp_path: Path
) -> None:
    """bf16 flips labels only where FP32 itself is unsure: the sample photographs are not
    street scenes, so many pixels are close calls and overall agreement is lower."""
    fp32 = create_backend(trained_cfg, _options(tmp_path, kind="openvino"))
    bf16 = create_backend(trained_cfg, _options(tmp_path, kind="openvino", precision="bf16"))
    ref = [fp32.infer(f[None]) for f in frames]
    labels = np.concatenate([r[0] for r in ref])
    sure = np.concatenate([r[1] for r in ref]) >= 0.7
    same = _labels(bf16, frames) == labels
    assert sure.mean() > 0.3 and float(same[sure].mean()) >= 0.99, (sure.mean(), same[sure].mean())
    assert float(same.mean()) >= 0.85


@pytest.mark.slow
@pytest.mark.skipif(
    not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(),
    reason="no VNNI/AMX-INT8 on this CPU: int8 would be emulated, not worth a test",
)
def test_int8_runs_the_calibrated_qdq_graph(
    trained_cfg: ModelConfig, frames: npt.NDArray[np.uint8], tmp_path: Path
) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    import cv2

    for i, f in enumerate(frames):
        cv2.imwrite(str(calib / f"{i}.png"), f[..., ::-1])
    calibration = CalibrationSpec(images=str(calib), count=4)
    options = _options(tmp_path, kind="openvino", precision="int8", calibration=calibration)
    int8 = create_backend(trained_cfg, options)
    assert int8.name == "openvino" and int8.precision == "int8"  # type: ignore[attr-defined]
    assert list((tmp_path / "onnx").glob("*_int8_*.cpu.int8.*.ovblob")), "int8 compiled model not cached"
    labels = _labels(int8, frames)
    assert labels.shape == (len(frames), *SIZE)
    assert int(labels.min()) >= 0 and int(labels.max()) < int8.num_classes
    # No agreement bar here: at this tiny size with 4 calibration pictures the int8 labels
    # of both runtimes are far from fp32 (and from each other); at the model's 360x480
    # OpenVINO int8 and ORT int8 agreed on 96.4 % (docs/benchmarks.md). `auto` is what
    # keeps such a graph from being chosen.


@pytest.mark.slow
def test_int8_refuses_an_unquantised_graph_and_cuda(trained_cfg: ModelConfig, tmp_path: Path) -> None:
    from refinenet_ros.backends.openvino_backend import OpenVinoBackend

    graph = onnx_for(trained_cfg, _options(tmp_path))
    with pytest.raises(BackendError, match="not a quantised graph"):
        OpenVinoBackend(graph, precision="int8")
    with pytest.raises(BackendError, match=r"not .cuda.*backend='onnxruntime'"):
        OpenVinoBackend(graph, device="cuda")


# -- auto ------------------------------------------------------------------------------------


class _Broken:
    """Fast and wrong: the labels of a real backend, shifted by one class."""

    name = "broken"
    device = "cpu"

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.num_classes = inner.num_classes  # type: ignore[attr-defined]
        self.input_size = inner.input_size  # type: ignore[attr-defined]
        self.max_batch = 1

    def infer(self, images: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.float32]]:
        labels = np.zeros(images.shape[:3], dtype=np.int32) + 1
        return labels, np.ones(images.shape[:3], dtype=np.float32)


class _Counting:
    """Builds real backends (ORT / OpenVINO fp32 only, cheap) and counts the builds."""

    def __init__(self, cfg: ModelConfig, options: BackendOptions) -> None:
        self.cfg, self.options = cfg, options
        self.built: list[str] = []

    def __call__(self, cand: Candidate) -> Backend:
        self.built.append(cand.label)
        if cand.kind == "broken":
            return _Broken(create_backend(self.cfg, replace(self.options, kind="onnxruntime")))
        return create_backend(self.cfg, replace(self.options, kind=cand.kind, precision=cand.precision))


CHEAP = (Candidate("onnxruntime", "fp32"), Candidate("openvino", "fp32"))


@pytest.mark.slow
def test_auto_caches_its_decision_and_reuses_it_without_measuring(
    trained_cfg: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auto_select, "BUSY_LOAD", float("inf"))  # a busy test machine's decision stands
    options = _options(tmp_path, kind="auto")
    graph = onnx_for(trained_cfg, options)
    build = _Counting(trained_cfg, options)
    backend, decision = select_backend(trained_cfg, options, graph, candidates=CHEAP, build=build)
    assert not decision.cached and len(decision.table) == 2
    assert sum(m.status.startswith("chosen") for m in decision.table) == 1
    assert (backend.name, decision.kind) in {("onnxruntime", "onnxruntime"), ("openvino", "openvino")}
    saved = json.loads(auto_select.decision_path(graph).read_text())
    assert saved["chosen"] == {"kind": decision.kind, "precision": "fp32"}
    assert saved["key"]["graph_sha256"] and saved["key"]["versions"]["openvino"]

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached decision should have been reused")

    monkeypatch.setattr(auto_select, "measure", no_measuring)
    build.built.clear()
    again, reused = select_backend(trained_cfg, options, graph, candidates=CHEAP, build=build)
    assert reused.cached and (reused.kind, reused.precision) == (decision.kind, decision.precision)
    assert build.built == [next(m.label for m in decision.table if m.status.startswith("chosen"))]
    assert again.name == backend.name


@pytest.mark.slow
def test_auto_measures_again_when_the_runtime_or_the_graph_changes(
    trained_cfg: ModelConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = _options(tmp_path, kind="auto")
    graph = onnx_for(trained_cfg, options)
    build = _Counting(trained_cfg, options)
    select_backend(trained_cfg, options, graph, candidates=CHEAP, build=build)
    real = auto_select.runtime_versions
    monkeypatch.setattr(auto_select, "runtime_versions", lambda: {**real(), "openvino": "2099.1"})
    _, decision = select_backend(trained_cfg, options, graph, candidates=CHEAP, build=build)
    assert not decision.cached and decision.key["versions"]["openvino"] == "2099.1"
    monkeypatch.setattr(auto_select, "runtime_versions", real)
    other = tmp_path / "other.onnx"  # same graph, one byte of metadata more: another sha256
    other.write_bytes(graph.read_bytes())
    select_backend(trained_cfg, options, other, candidates=CHEAP, build=build)
    import onnx

    proto = onnx.load(str(other))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "changed"})
    onnx.save(proto, str(other))
    _, changed = select_backend(trained_cfg, options, other, candidates=CHEAP, build=build)
    assert not changed.cached


@pytest.mark.slow
def test_auto_builds_only_what_could_be_chosen(trained_cfg: ModelConfig, tmp_path: Path) -> None:
    """An fp32 configure measures only the candidates it can choose: no INT8 candidate is
    calibrated (calibrating them would take most of the measurement's time)."""
    options = _options(tmp_path, kind="auto", precision="fp32")
    graph = onnx_for(trained_cfg, options)
    build = _Counting(trained_cfg, options)
    everything = (*CHEAP, Candidate("onnxruntime", "int8"), Candidate("openvino", "int8"))
    _, decision = select_backend(trained_cfg, options, graph, candidates=everything, build=build)
    assert sorted(build.built) == ["onnxruntime fp32", "openvino fp32"]
    assert "int8" not in decision.table_text()
    assert auto_select.choosable(everything, "int8") == (CHEAP[0], *everything[2:])


@pytest.mark.slow
def test_a_path_below_the_agreement_bar_is_never_chosen(trained_cfg: ModelConfig, tmp_path: Path) -> None:
    options = _options(tmp_path, kind="auto")
    graph = onnx_for(trained_cfg, options)
    candidates = (Candidate("onnxruntime", "fp32"), Candidate("broken", "fp32"))
    backend, decision = select_backend(
        trained_cfg, options, graph, candidates=candidates, build=_Counting(trained_cfg, options)
    )
    rows = {m.label: m for m in decision.table}
    broken = rows["broken fp32"]
    assert broken.status.startswith("rejected: agrees on") and broken.agreement is not None
    assert broken.agreement < admission.AGREEMENT_BAR
    # it was the fastest by far, and still not chosen
    assert broken.ms is not None and rows["onnxruntime fp32"].ms is not None
    assert (decision.kind, backend.name) == ("onnxruntime", "onnxruntime")


@pytest.mark.slow
def test_a_path_losing_more_than_half_a_miou_point_is_never_chosen(
    trained_cfg: ModelConfig, tmp_path: Path
) -> None:
    options = _options(tmp_path, kind="auto", precision="fp32")
    graph = onnx_for(trained_cfg, options)
    admission.record_accuracy(graph, "onnxruntime", "fp32", 60.0, "camvid val", frames=60)
    admission.record_accuracy(graph, "openvino", "fp32", 58.5, "camvid val", frames=60)
    _, decision = select_backend(
        trained_cfg, options, graph, candidates=CHEAP, build=_Counting(trained_cfg, options)
    )
    rows = {m.label: m for m in decision.table}
    assert rows["openvino fp32"].status.startswith("rejected: loses 1.50 mIoU points")
    assert decision.kind == "onnxruntime"


@pytest.mark.slow
def test_create_backend_auto_measures_on_a_cpu_and_logs_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ModelConfig(model="lw_refinenet_mobilenetv2", labels="voc", weights="random")
    monkeypatch.setattr(auto_select, "DEFAULT_CANDIDATES", CHEAP)
    monkeypatch.setenv("REFINENET_ROS_AUTO", "measure")  # the suite runs with "fixed" (conftest)
    options = with_weights_size(cfg, _options(tmp_path, kind="auto"))
    with caplog.at_level("INFO", logger="refinenet_ros"):
        backend = create_backend(cfg, options)
    assert backend.name in ("onnxruntime", "openvino")
    assert "auto: chose" in caplog.text and "verdict" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="refinenet_ros"):
        again = create_backend(cfg, options)
    assert again.name == backend.name and "measured before" in caplog.text
    assert "auto: measuring" not in caplog.text
