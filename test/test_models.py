"""Tests for the RefineNet model family: sizes, shapes, names, seeding, multi-scale.

Kept fast: parameter counts are checked on models built on the ``meta`` device (same
modules and shapes, no memory or init cost), forward passes use ResNet-50/MobileNetV2
models with few classes on tiny odd-sized inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refinenet_ros.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAMES,
    MODEL_SPECS,
    PAPER_SCALES,
    CascadedRefineNet,
    LWRefineNet,
    LWRefineNetMobileNetV2,
    RefineNet,
    build_model,
    count_parameters,
    fold_batchnorm,
    predict_probs,
)
from refinenet_ros.models.blocks import ChainedResidualPooling, RCUChain, upsample_to
from refinenet_ros.models.resnet import ResNet

ODD_SIZES = [(65, 97), (33, 50)]
FORWARD_MODELS = ["refinenet_resnet50", "lw_refinenet_resnet50", "lw_refinenet_mobilenetv2"]


def ceil4(n: int) -> int:
    return math.ceil(n / 4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from threads, and oversubscribed OpenMP threads
    (other jobs on a 2-core CI machine) make them 5-10x slower; restore afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def meta_models() -> Iterator[dict[str, nn.Module]]:
    """Every model for 21 classes, built once per module on the meta device."""
    with torch.device("meta"):
        models = {name: build_model(name, 21) for name in MODEL_NAMES}
    yield models


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    """Real (CPU) models with 3 classes for forward tests, built once."""
    return {name: build_model(name, 3, seed=0) for name in FORWARD_MODELS}


@pytest.fixture(scope="module")
def cascaded_model() -> nn.Module:
    return build_model("refinenet_resnet50", 3, seed=0, cascaded=True)


# ---------------------------------------------------------------------------- sizes and specs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_published(meta_models: dict[str, nn.Module], name: str) -> None:
    count = count_parameters(meta_models[name])
    published = MODEL_SPECS[name].params_m_21
    assert abs(count / 1e6 - published) < 0.005, f"{name}: {count / 1e6:.4f} M vs published {published} M"


def test_parameter_count_on_cpu_equals_meta(meta_models: dict[str, nn.Module]) -> None:
    model = build_model("lw_refinenet_mobilenetv2", 21)
    assert count_parameters(model) == count_parameters(meta_models["lw_refinenet_mobilenetv2"]) == 3_284_565


def test_count_parameters_counts_each_parameter_once() -> None:
    shared = nn.Linear(3, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(2))
    assert count_parameters(model) == 3 * 2 + 2 + 2 + 2  # BN running stats are buffers


def test_specs_are_consistent() -> None:
    assert tuple(MODEL_SPECS) == MODEL_NAMES
    for name, spec in MODEL_SPECS.items():
        assert spec.name == name
        assert spec.family == ("lw_refinenet" if name.startswith("lw_") else "refinenet")
        assert name.endswith(spec.backbone)
        assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
        assert spec.code_url.startswith("https://github.com/DrSleep/")
        assert "arXiv" in spec.paper
        assert spec.supports_cascaded == (spec.family == "refinenet")


def test_model_classes(meta_models: dict[str, nn.Module]) -> None:
    assert isinstance(meta_models["refinenet_resnet101"], RefineNet)
    assert isinstance(meta_models["lw_refinenet_resnet152"], LWRefineNet)
    assert isinstance(meta_models["lw_refinenet_mobilenetv2"], LWRefineNetMobileNetV2)
    assert all(getattr(m, "num_classes", None) == 21 for m in meta_models.values())


# ---------------------------------------------------------------------------- reference key names


def test_full_refinenet_keys_follow_reference(meta_models: dict[str, nn.Module]) -> None:
    sd = meta_models["refinenet_resnet101"].state_dict()
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer3.22.conv3.weight",
        "layer4.2.bn3.bias",
        "adapt_stage1_b.0.1_conv.bias",
        "adapt_stage1_b.0.2_conv_relu_varout_dimred.weight",
        "mflow_conv_g1_pool.0.4_outvar_dimred.weight",
        "mflow_conv_g1_b.0.3_conv_relu_varout_dimred.weight",
        "adapt_stage4_b2_joint_varout_dimred.weight",
        "mflow_conv_g3_b3_joint_varout_dimred.weight",
        "clf_conv.bias",
    ]:
        assert key in sd, key
    assert "adapt_stage1_b2_joint_varout_dimred.weight" not in sd
    assert "mflow_conv_g4_b3_joint_varout_dimred.weight" not in sd
    assert "adapt_stage1_b.0.1_conv_relu_varout_dimred.bias" not in sd  # second RCU conv: no bias
    assert sd["p_ims1d2_outl1_dimred.weight"].shape == (512, 2048, 3, 3)
    assert sd["p_ims1d2_outl4_dimred.weight"].shape == (256, 256, 3, 3)
    assert sd["mflow_conv_g1_b3_joint_varout_dimred.weight"].shape == (256, 512, 3, 3)
    assert sd["clf_conv.weight"].shape == (21, 256, 3, 3)
    assert "layer2.0.conv2.weight" in sd and sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)


def test_lw_keys_follow_reference(meta_models: dict[str, nn.Module]) -> None:
    sd = meta_models["lw_refinenet_resnet50"].state_dict()
    assert not any(k.startswith(("adapt_stage1_b", "mflow_conv_g1_b.")) for k in sd)
    assert not any("_conv.bias" in k for k in sd if not k.startswith("clf_conv"))  # no RCUs
    assert sd["p_ims1d2_outl1_dimred.weight"].shape == (512, 2048, 1, 1)
    assert sd["mflow_conv_g2_pool.0.3_outvar_dimred.weight"].shape == (256, 256, 1, 1)
    assert sd["adapt_stage2_b2_joint_varout_dimred.weight"].shape == (256, 256, 1, 1)
    assert sd["clf_conv.weight"].shape == (21, 256, 3, 3)

    mb = meta_models["lw_refinenet_mobilenetv2"].state_dict()
    for key in [
        "layer1.0.weight",
        "layer1.1.running_mean",
        "layer2.0.output.0.0.weight",
        "layer8.0.output.2.1.running_var",
        "conv8.weight",
        "conv3.weight",
        "crp4.0.1_outvar_dimred.weight",
        "crp1.0.4_outvar_dimred.weight",
        "conv_adapt2.weight",
        "segm.bias",
    ]:
        assert key in mb, key
    assert mb["layer3.0.output.1.0.weight"].shape == (96, 1, 3, 3)  # depthwise, stride 2
    assert mb["segm.weight"].shape == (21, 256, 3, 3)


# ---------------------------------------------------------------------------- forward shapes


@pytest.mark.slow
@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("name", FORWARD_MODELS)
def test_output_shape_any_size(small_models: dict[str, nn.Module], name: str, size: tuple[int, int]) -> None:
    h, w = size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = small_models[name](x)
    assert out.shape == (2, 3, ceil4(h), ceil4(w))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_tiny_input_still_works(small_models: dict[str, nn.Module]) -> None:
    with torch.inference_mode():
        out = small_models["lw_refinenet_mobilenetv2"](torch.randn(1, 3, 7, 5))
    assert out.shape == (1, 3, 2, 2)


def test_resnet_stage_sizes_follow_ceil_chain() -> None:
    encoder = ResNet(50).eval()
    with torch.inference_mode():
        feats = encoder(torch.randn(1, 3, 65, 97))
    sizes = [tuple(f.shape[-2:]) for f in feats]
    assert sizes == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]


@pytest.mark.parametrize("size", ODD_SIZES)
def test_cascaded_output_shape(cascaded_model: nn.Module, size: tuple[int, int]) -> None:
    h, w = size
    assert isinstance(cascaded_model, CascadedRefineNet)
    with torch.inference_mode():
        out = cascaded_model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 3, ceil4(h), ceil4(w))
    assert torch.isfinite(out).all()


def test_cascaded_structure(cascaded_model: nn.Module) -> None:
    assert isinstance(cascaded_model, CascadedRefineNet)
    assert cascaded_model.scales == (1.2, 0.6)
    sd = cascaded_model.state_dict()
    # Two independent ResNets.
    assert not torch.equal(sd["encoders.0.conv1.weight"], sd["encoders.1.conv1.weight"])
    # RefineNet-4 has 2 inputs (both layer4s), the others 2 backbone inputs + previous block.
    assert len(cascaded_model.refine4.paths) == 2 and cascaded_model.refine4.prev_fuse is None
    assert len(cascaded_model.refine1.paths) == 2 and cascaded_model.refine1.prev_fuse is not None
    assert sd["refine4.paths.0.adapt.weight"].shape == (512, 2048, 3, 3)
    assert sd["refine3.prev_fuse.weight"].shape == (256, 512, 3, 3)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if not MODEL_SPECS[n].supports_cascaded])
def test_cascaded_unsupported_names_raise(name: str) -> None:
    with pytest.raises(ValueError, match="no cascaded") as info:
        build_model(name, 3, cascaded=True)
    assert "refinenet_resnet101" in str(info.value)


def test_build_returns_eval_mode_and_dropout_only_in_train(small_models: dict[str, nn.Module]) -> None:
    model = small_models["refinenet_resnet50"]
    assert not model.training
    x = torch.randn(1, 3, 33, 50)
    with torch.inference_mode():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            c = model(x)
    finally:
        model.eval()
    assert not torch.allclose(a, c)  # dropout (0.5) is active in train mode


# ---------------------------------------------------------------------------- seeding and errors


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seed_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_model("lw_refinenet_mobilenetv2", 5, seed=7)
    b = build_model("lw_refinenet_mobilenetv2", 5, seed=7)
    c = build_model("lw_refinenet_mobilenetv2", 5, seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_seed_none_uses_global_rng() -> None:
    torch.manual_seed(123)
    a = build_model("lw_refinenet_mobilenetv2", 5, seed=None)
    torch.manual_seed(123)
    b = build_model("lw_refinenet_mobilenetv2", 5, seed=None)
    c = build_model("lw_refinenet_mobilenetv2", 5, seed=None)
    assert _same_weights(a, b)
    assert not _same_weights(b, c)


def test_unknown_name_lists_all_names() -> None:
    with pytest.raises(ValueError, match="unknown model name 'refinenet_vgg16'") as info:
        build_model("refinenet_vgg16", 21)
    for name in MODEL_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_classes(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("lw_refinenet_mobilenetv2", bad)  # type: ignore[arg-type]


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        build_model("lw_refinenet_mobilenetv2", 3, dropout=0.1)


def test_dropout_option() -> None:
    with torch.device("meta"):
        model = build_model("refinenet_resnet50", 3, dropout=0.1)
    assert isinstance(model, RefineNet) and model.do.p == 0.1


# ---------------------------------------------------------------------------- blocks


def test_rcu_matches_formula() -> None:
    torch.manual_seed(0)
    rcu = RCUChain(4, 4, 1)
    x = torch.randn(1, 4, 6, 5)
    first = rcu.get_submodule("1_conv")
    second = rcu.get_submodule("1_conv_relu_varout_dimred")
    assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
    assert first.bias is not None and second.bias is None
    expected = x + second(F.relu(first(F.relu(x))))
    assert torch.allclose(rcu(x), expected)


def test_crp_matches_formula() -> None:
    torch.manual_seed(0)
    crp = ChainedResidualPooling(4, 4, 2, kernel_size=3)
    x = torch.randn(1, 4, 7, 6)
    c1, c2 = crp.get_submodule("1_outvar_dimred"), crp.get_submodule("2_outvar_dimred")
    pool = nn.MaxPool2d(5, stride=1, padding=2)
    t1 = c1(pool(x))
    t2 = c2(pool(t1))
    assert torch.allclose(crp(x), x + t1 + t2)


def test_upsample_to_uses_explicit_size_and_align_corners() -> None:
    x = torch.arange(4.0).view(1, 1, 2, 2)
    out = upsample_to(x, (3, 5))
    assert out.shape == (1, 1, 3, 5)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, -1, -1] == 3  # corners preserved
    assert upsample_to(x, (2, 2)) is x


# ---------------------------------------------------------------------------- multi-scale


def test_predict_probs_sums_to_one_at_input_size(small_models: dict[str, nn.Module]) -> None:
    model = small_models["lw_refinenet_mobilenetv2"]
    x = torch.randn(2, 3, 33, 50)
    probs = predict_probs(model, x, scales=PAPER_SCALES, flip=True)
    assert PAPER_SCALES == (0.4, 0.6, 0.8, 1.0, 1.2)
    assert probs.shape == (2, 3, 33, 50)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 33, 50), atol=1e-5)
    assert (probs >= 0).all()


def test_predict_probs_single_scale_is_softmax_of_upsampled_logits(
    small_models: dict[str, nn.Module],
) -> None:
    model = small_models["lw_refinenet_mobilenetv2"]
    x = torch.randn(1, 3, 29, 41)
    with torch.inference_mode():
        logits = F.interpolate(model(x), size=(29, 41), mode="bilinear", align_corners=True)
        flipped = F.interpolate(model(x.flip(-1)), size=(29, 41), mode="bilinear", align_corners=True)
    assert torch.allclose(predict_probs(model, x), logits.softmax(1), atol=1e-6)
    both = (logits.softmax(1) + flipped.softmax(1).flip(-1)) / 2
    assert torch.allclose(predict_probs(model, x, flip=True), both, atol=1e-6)


def test_predict_probs_restores_mode_and_validates(small_models: dict[str, nn.Module]) -> None:
    model = small_models["lw_refinenet_mobilenetv2"]
    model.train()
    try:
        predict_probs(model, torch.randn(1, 3, 16, 16))
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="scales"):
        predict_probs(model, torch.randn(1, 3, 16, 16), scales=())
    with pytest.raises(ValueError, match="scales"):
        predict_probs(model, torch.randn(1, 3, 16, 16), scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="NCHW"):
        predict_probs(model, torch.randn(3, 16, 16))


# ---------------------------------------------------------------------------- BN folding
@pytest.mark.slow
@pytest.mark.parametrize("name", [*FORWARD_MODELS, "cascaded"])
def test_fold_batchnorm_folds_every_bn_and_keeps_the_output(name: str) -> None:
    """Every BatchNorm of every architecture is recognised, and the folded model computes
    the same logits (BN statistics made non-trivial, else folding is a near no-op)."""
    model = (
        build_model("refinenet_resnet50", 3, seed=0, cascaded=True)
        if name == "cascaded"
        else build_model(name, 3, seed=0)
    )
    gen = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        n = bn.num_features
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    x = torch.randn(1, 3, 45, 61, generator=gen)
    with torch.inference_mode():
        reference = model(x)
        assert fold_batchnorm(model) == len(bns) > 0
        folded = model(x)
    assert not [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
