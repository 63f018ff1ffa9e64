"""ONNX export: graph contract, TensorRT operator coverage, metadata, shapes, agreement with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from refinenet_ros.backends.base import BackendError
from refinenet_ros.backends.onnx_export import (
    ExportSpec,
    cache_key,
    export_cached,
    export_onnx,
    read_metadata,
)
from refinenet_ros.backends.pipeline import InferencePipeline
from refinenet_ros.backends.tensorrt_support import TENSORRT_SUPPORTED_OPS, tensorrt_problems
from refinenet_ros.config import ModelConfig, load_model
from refinenet_ros.models import IMAGENET_MEAN, IMAGENET_STD

H, W = 64, 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, small_model_cfg: ModelConfig) -> dict[str, Path]:
    """One static and one dynamic export of the small model, shared by the tests below."""
    out = tmp_path_factory.mktemp("onnx")
    static = export_onnx(small_model_cfg, ExportSpec(H, W), out / "static.onnx")
    dynamic = export_onnx(small_model_cfg, ExportSpec(H, W, dynamic=True), out / "dynamic.onnx")
    assert static.agreement is not None and static.agreement >= 0.999
    assert dynamic.agreement is not None and dynamic.agreement >= 0.999
    return {"static": static.path, "dynamic": dynamic.path}


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_graph_passes_full_checker_and_uses_only_tensorrt_ops(exported: dict[str, Path], kind: str) -> None:
    model = onnx.load(str(exported[kind]))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert ops <= TENSORRT_SUPPORTED_OPS, ops - TENSORRT_SUPPORTED_OPS
    assert {"Conv", "Resize", "ArgMax", "Cast"} <= ops
    assert tensorrt_problems(model) == []
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)


def test_io_contract_static(exported: dict[str, Path]) -> None:
    model = onnx.load(str(exported["static"]))
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims(inp) == [1, H, W, 3]
    outputs = {o.name: o for o in model.graph.output}
    assert list(outputs) == ["labels", "confidence"]
    assert outputs["labels"].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert outputs["confidence"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(outputs["labels"]) == dims(outputs["confidence"]) == [1, H, W]
    # uint8 enters and is cast before anything else touches it (TensorRT needs that).
    first = next(n for n in model.graph.node if "image" in n.input)
    assert first.op_type == "Cast"
    # A static graph runs only at its size.
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session(exported["static"]).run(None, {"image": np.zeros((1, H + 8, W, 3), np.uint8)})


def test_dynamic_graph_has_symbolic_nhw_and_runs_other_sizes(exported: dict[str, Path]) -> None:
    model = onnx.load(str(exported["dynamic"]))
    assert dims(model.graph.input[0]) == ["N", "H", "W", 3]
    assert [dims(o) for o in model.graph.output] == [["N", "H", "W"]] * 2
    labels, conf = session(exported["dynamic"]).run(None, {"image": np.zeros((2, 72, 40, 3), np.uint8)})
    assert labels.shape == conf.shape == (2, 72, 40)


def test_metadata_records_model_labels_normalisation_and_weights(exported: dict[str, Path]) -> None:
    meta = read_metadata(exported["static"])
    assert meta["model_name"] == "lw_refinenet_mobilenetv2"
    assert meta["label_set"] == "voc" and meta["num_classes"] == "21"
    names = json.loads(meta["label_names"])
    assert len(names) == 21 and names[15] == "person"
    assert json.loads(meta["mean"]) == pytest.approx(IMAGENET_MEAN)
    assert json.loads(meta["std"]) == pytest.approx(IMAGENET_STD)
    assert meta["network_size"] == f"{H}x{W}"
    assert meta["checkpoint_sha256"] == "" and "random init" in meta["weights"]
    assert read_metadata(exported["dynamic"])["network_size"] == "dynamic"


def test_checkpoint_sha256_is_recorded(tmp_path: Path, small_model_cfg: ModelConfig) -> None:
    import hashlib

    from refinenet_ros.models import save_checkpoint

    ckpt = tmp_path / "w.pth"
    save_checkpoint(
        ckpt, load_model(small_model_cfg), model_name="lw_refinenet_mobilenetv2", label_set="voc",
        num_classes=21, mean=IMAGENET_MEAN, std=IMAGENET_STD, network_size=(H, W),
    )  # fmt: skip
    cfg = ModelConfig(weights=str(ckpt))
    result = export_onnx(cfg, ExportSpec(H, W), tmp_path / "w.onnx", verify=False)
    assert result.metadata["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert result.metadata["weights"] == "w.pth"
    assert result.metadata["model_name"] == "lw_refinenet_mobilenetv2"


def test_onnxruntime_agrees_with_torch_on_natural_images(
    exported: dict[str, Path], small_model_cfg: ModelConfig
) -> None:
    """>= 99.9 % identical labels and close confidence on real pictures, static and dynamic."""
    import cv2

    from refinenet_ros.samples import sample_images

    images = np.stack([cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA) for _, img in sample_images()])
    pipeline = InferencePipeline(load_model(small_model_cfg), IMAGENET_MEAN, IMAGENET_STD).eval()
    with torch.inference_mode():
        ref_labels, ref_conf = (t.numpy() for t in pipeline(torch.from_numpy(images)))
    static = session(exported["static"])
    for i in range(len(images)):
        labels, conf = static.run(None, {"image": images[i : i + 1]})
        assert labels.dtype == np.int32 and conf.dtype == np.float32
        assert (labels[0] == ref_labels[i]).mean() >= 0.999
        assert np.abs(conf[0] - ref_conf[i]).max() < 1e-3
    labels, conf = session(exported["dynamic"]).run(None, {"image": images})
    assert (labels == ref_labels).mean() >= 0.999
    assert np.abs(conf - ref_conf).max() < 1e-3
    assert ((conf > 0) & (conf <= 1.0 + 1e-6)).all()


def test_tensorrt_problems_flags_unsupported_graphs() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["h"]), helper.make_node("Unique", ["h"], ["y"])], "g", [x], [y]
    )
    problems = tensorrt_problems(helper.make_model(graph))
    assert len(problems) == 1 and "Unique" in problems[0]
    resize = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])
    problems = tensorrt_problems(helper.make_model(helper.make_graph([resize], "g", [x, s], [y])))
    assert any("cubic" in p for p in problems)


def test_export_cache_reuses_and_keys_by_content(tmp_path: Path, small_model_cfg: ModelConfig) -> None:
    spec = ExportSpec(H, W)
    first = export_cached(small_model_cfg, spec, tmp_path)
    assert not first.cached and first.path.parent == tmp_path
    mtime = first.path.stat().st_mtime_ns
    again = export_cached(small_model_cfg, spec, tmp_path)
    assert again.cached and again.path == first.path and again.path.stat().st_mtime_ns == mtime
    assert again.sha256 == first.sha256
    # Every input of the export changes the key: seed (weights), size, opset, batch mode.
    keys = {
        cache_key(small_model_cfg, spec),
        cache_key(ModelConfig(model="lw_refinenet_mobilenetv2", labels="voc", seed=1), spec),
        cache_key(small_model_cfg, ExportSpec(H, W + 32)),
        cache_key(small_model_cfg, ExportSpec(H, W, opset=18)),
        cache_key(small_model_cfg, ExportSpec(H, W, dynamic_batch=True)),
        cache_key(ModelConfig(model="lw_refinenet_mobilenetv2", labels="cityscapes"), spec),
    }
    assert len(keys) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_specs_fail_with_the_fix() -> None:
    with pytest.raises(BackendError, match=">= 32"):
        ExportSpec(16, 96)
    with pytest.raises(BackendError, match="opset"):
        ExportSpec(H, W, opset=21)


@pytest.mark.slow
def test_export_cli_writes_verified_graph(tmp_path: Path) -> None:
    from refinenet_ros.cli import main

    out = tmp_path / "m.onnx"
    args = [
        "export",
        "--model",
        "lw_refinenet_mobilenetv2",
        "--labels",
        "voc",
        "--network-size",
        "64",
        "64",
    ]
    assert main([*args, "--batch", "2", "--out", str(out)]) == 0
    model = onnx.load(str(out))
    assert dims(model.graph.input[0]) == [2, 64, 64, 3]
    assert main([*args, "--dynamic", "--no-verify", "--out", str(out)]) == 0
    assert dims(onnx.load(str(out)).graph.input[0]) == ["N", "H", "W", 3]
    with pytest.raises(SystemExit) as refused:  # sides below 32 are refused while parsing
        main([*args[:-3], "--network-size", "8", "64", "--out", str(out)])
    assert refused.value.code == 2
