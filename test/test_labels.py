from __future__ import annotations

import numpy as np
import pytest

from refinenet_ros.labels import (
    CITYSCAPES_ID_TO_TRAINID,
    IGNORE_INDEX,
    LABEL_SET_NAMES,
    colorize,
    get_label_set,
)

EXPECTED_SIZES = {
    "camvid": 11,
    "indoor": 14,
    "cityscapes": 19,
    "voc": 21,
    "nyud40": 40,
    "sunrgbd": 37,
    "ade20k": 150,
    "pascal_context": 60,
    "person_part": 7,
}


def test_every_label_set_has_its_class_count():
    assert set(LABEL_SET_NAMES) == set(EXPECTED_SIZES)
    for name, size in EXPECTED_SIZES.items():
        ls = get_label_set(name)
        assert ls.num_classes == size == ls.palette.shape[0]
        assert len(set(ls.classes)) == size, f"{name} has duplicate class names"


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_palette_colours_are_distinct_and_not_black_for_real_classes(name):
    ls = get_label_set(name)
    colours = {tuple(c) for c in ls.palette}
    assert len(colours) == ls.num_classes
    if ls.classes[0] != "background":
        assert (0, 0, 0) not in colours, "black is reserved for background / ignore"


def test_cityscapes_keeps_official_palette_and_trainid_map():
    ls = get_label_set("cityscapes")
    assert ls.classes[0] == "road" and tuple(ls.palette[0]) == (128, 64, 128)
    assert tuple(ls.palette[ls.classes.index("car")]) == (0, 0, 142)
    assert sorted(CITYSCAPES_ID_TO_TRAINID.values()) == list(range(19))


def test_unknown_label_set_error_lists_the_choices():
    with pytest.raises(ValueError, match=r"cityscapes.*voc"):
        get_label_set("kitti")


def test_colorize_maps_classes_and_blacks_out_ignore():
    ls = get_label_set("voc")
    labels = np.array([[0, 15], [IGNORE_INDEX, 200]], dtype=np.uint8)
    rgb = colorize(labels, ls)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == tuple(ls.palette[15])
    assert tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)


def test_colorize_fills_a_given_buffer_in_place():
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = np.zeros((3, 4, 3), np.uint8)
    assert colorize(labels, "cityscapes", out=out) is out
    assert tuple(out[0, 0]) == (128, 64, 128)


def test_colorize_rejects_non_2d_labels():
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 2), np.uint8), "voc")


def test_colorize_uint8_labels_with_a_label_set_above_255_classes():
    from refinenet_ros.labels import LabelSet

    palette = np.stack([np.arange(300) % 256, np.arange(300) // 256, np.full(300, 7)], 1).astype(np.uint8)
    wide = LabelSet("wide", "synthetic", tuple(f"c{i}" for i in range(300)), palette)
    rgb = colorize(np.array([[3, 200]], dtype=np.uint8), wide)
    assert tuple(rgb[0, 0]) == (3, 0, 7) and tuple(rgb[0, 1]) == (200, 0, 7)
