"""Segmenter: the shared preprocess -> backend -> postprocess path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refinenet_ros.backends import BackendError, BackendOptions, create_backend
from refinenet_ros.backends.torch_backend import TorchBackend
from refinenet_ros.config import ModelConfig, load_model
from refinenet_ros.labels import LabelSet, get_label_set
from refinenet_ros.models import IMAGENET_MEAN, IMAGENET_STD
from refinenet_ros.segmenter import Segmenter


def rand_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def segmenter(torch_backend):
    return Segmenter(torch_backend, get_label_set("voc"))


@pytest.mark.parametrize("size", [(37, 53), (64, 96), (101, 67)])
def test_labels_and_confidence_at_input_resolution_for_odd_sizes(segmenter, size):
    result = segmenter(rand_image(*size))
    assert result.labels.shape == size and result.labels.dtype == np.uint8
    assert result.confidence.shape == size and result.confidence.dtype == np.float32
    assert result.labels.max() < 21
    # max softmax over 21 classes lies in [1/21, 1]
    assert result.confidence.min() >= 1 / 21 - 1e-5 and result.confidence.max() <= 1 + 1e-6
    assert set(result.timings_ms) == {"preprocess", "infer", "postprocess"}


def test_logits_are_upsampled_bilinearly_before_argmax(segmenter, small_model_cfg):
    """The labels equal argmax of bilinearly upsampled stride-4 logits, not blocky labels."""
    image = rand_image(45, 62, seed=3)
    result = segmenter(image)
    model = load_model(small_model_cfg)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    with torch.inference_mode():
        logits = model(x)
        assert logits.shape[-2:] == (12, 16)  # ceil(45/4), ceil(62/4)
        up = F.interpolate(logits, size=(45, 62), mode="bilinear", align_corners=False)
        expected = up.argmax(1)[0].numpy()
        conf = torch.softmax(up, 1).max(1).values[0].numpy()
    agreement = (result.labels == expected).mean()
    assert agreement > 0.999
    np.testing.assert_allclose(result.confidence, conf, atol=1e-4)
    # nearest-upsampled stride-4 labels would be constant on 4x4 blocks; these are not
    blocky = np.repeat(np.repeat(logits.argmax(1)[0].numpy(), 4, 0), 4, 1)[:45, :62]
    assert (result.labels != blocky).any()


def test_fixed_network_size_resizes_in_and_back_out(torch_backend):
    seg = Segmenter(torch_backend, get_label_set("voc"), network_size=(64, 96))
    result = seg(rand_image(120, 170))
    assert result.labels.shape == (120, 170) and result.input_size == (120, 170)
    net = Segmenter(torch_backend, get_label_set("voc"), network_size=(64, 96), output_resolution="network")
    assert net(rand_image(120, 170)).labels.shape == (64, 96)
    assert net.output_size_for((480, 640)) == (64, 96)


def test_batch_of_mixed_sizes_keeps_order_and_matches_single_calls(segmenter):
    images = [rand_image(40, 60, 1), rand_image(33, 47, 2), rand_image(40, 60, 3)]
    batch = segmenter.segment_batch(images)
    assert [r.labels.shape for r in batch] == [(40, 60), (33, 47), (40, 60)]
    for image, r in zip(images, batch, strict=True):
        single = segmenter(image)
        assert (single.labels == r.labels).mean() > 0.999


def test_color_overlay_and_confidence_images(segmenter):
    image = rand_image(40, 60)
    result = segmenter(image)
    color = result.color()
    assert color.shape == (40, 60, 3)
    palette = get_label_set("voc").palette
    np.testing.assert_array_equal(color, palette[result.labels])
    overlay = result.overlay(image, alpha=0.0)
    np.testing.assert_array_equal(overlay, image)
    np.testing.assert_array_equal(result.overlay(image, alpha=1.0), color)
    conf = result.confidence_u8()
    assert conf.dtype == np.uint8
    np.testing.assert_allclose(conf, np.round(result.confidence * 255), atol=1)


def test_labels_are_uint16_above_255_classes():
    wide = LabelSet("wide", "synthetic", tuple(f"c{i}" for i in range(300)), np.zeros((300, 3), np.uint8))
    assert wide.label_dtype == np.uint16
    from refinenet_ros.backends.torch_backend import TorchBackend
    from refinenet_ros.models import build_model

    backend = TorchBackend(build_model("lw_refinenet_mobilenetv2", 300, seed=0), 300)
    result = Segmenter(backend, wide)(rand_image(32, 48))
    assert result.labels.dtype == np.uint16 and result.labels.max() < 300


def test_bad_inputs_get_errors_that_name_the_problem(segmenter, torch_backend):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        segmenter(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        segmenter(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"21 classes.*cityscapes.*labels=\.\.\."):
        Segmenter(torch_backend, get_label_set("cityscapes"))
    with pytest.raises(BackendError, match="max_batch"):
        torch_backend.infer(np.zeros((9, 32, 32, 3), np.uint8))


def test_unknown_backend_kind_is_rejected(small_model_cfg):
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend(small_model_cfg, BackendOptions(kind="tflite"))


def test_model_config_defaults_and_description():
    cfg = ModelConfig().resolved()
    assert cfg.model == "lw_refinenet_mobilenetv2" and cfg.labels == "camvid"
    assert ModelConfig().describe() == "lw_refinenet_mobilenetv2 [camvid] weights=camvid"
    assert "random init (seed 0)" in ModelConfig(weights="random").describe()


def test_a_threads_setting_applies_to_its_own_calls_only(small_model_cfg):
    """The torch backend leaves the process-wide thread count alone: a user's `threads=1`
    Segmenter does not slow every other torch call of their process."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's own setting, different from the backend's
    seen: list[int] = []
    try:
        backend = create_backend(small_model_cfg, BackendOptions(kind="torch", device="cpu", threads=1))
        assert torch.get_num_threads() == 2
        # the count inside the call, seen by the network itself
        assert isinstance(backend, TorchBackend)
        hook = backend._pipeline.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
        Segmenter(backend, get_label_set("voc"))(rand_image(32, 48))
        hook.remove()
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_one_segmenter_called_from_four_threads_gives_each_caller_its_own_result(torch_backend):
    from concurrent.futures import ThreadPoolExecutor

    seg = Segmenter(torch_backend, get_label_set("voc"), network_size=(64, 96))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50 + i, 70 + i, 3), dtype=np.uint8) for i in range(12)]
    expected = [seg(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(seg, images * 10))
    for i, result in enumerate(got):
        want = expected[i % len(images)]
        assert np.array_equal(result.labels, want.labels), i
        assert np.allclose(result.confidence, want.confidence, atol=1e-5), i


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"network_size": (0, 0)}, "network size"),
        ({"network_size": (-64, 64)}, "network size"),
        ({"network_size": (64, 100000)}, "32..8192"),
        ({"threads": -1}, "threads"),
    ],
)
def test_load_refuses_bad_sizes_and_threads_at_once(kwargs, named):
    import refinenet_ros

    with pytest.raises(BackendError, match=named):
        refinenet_ros.load("random", backend="torch", **kwargs)


def test_load_caps_threads_to_the_cores_present(caplog):
    import os

    import refinenet_ros

    with caplog.at_level("WARNING", logger="refinenet_ros"):
        seg = refinenet_ros.load("random", backend="torch", network_size=(64, 64), threads=1_000_000)
    cores = len(os.sched_getaffinity(0))
    assert f"using {cores} threads" in caplog.text
    result = seg(np.zeros((40, 40, 3), np.uint8))
    assert result.labels.shape == (40, 40)


@pytest.mark.slow
def test_one_openvino_segmenter_from_four_threads_is_not_busy_and_right():
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    import refinenet_ros

    seg = refinenet_ros.load("random", backend="openvino", device="cpu", network_size=(64, 64))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    expected = [seg(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(seg, images * 5))
    for i, result in enumerate(got):
        assert np.array_equal(result.labels, expected[i % len(images)].labels), i
