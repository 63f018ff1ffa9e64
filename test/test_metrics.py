"""Confusion-matrix metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refinenet_ros.labels import IGNORE_INDEX
from refinenet_ros.training.metrics import ConfusionMatrix, SegmentationMetrics


def test_hand_computed_three_classes() -> None:
    # gt:   0 0 1 1 2 255     pred: 0 1 1 1 0 2  (the 255 pixel is ignored entirely)
    gt = np.array([[0, 0, 1], [1, 2, IGNORE_INDEX]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 0, 2]], dtype=np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(gt, pred)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = cm.compute()
    # IoU: c0 = 1/(2+2-1) = 1/3, c1 = 2/(2+3-2) = 2/3, c2 = 0/(1+0-0) = 0
    assert m.iou == pytest.approx((1 / 3, 2 / 3, 0.0))
    assert m.miou == pytest.approx(1 / 3)
    assert m.pixel_accuracy == pytest.approx(3 / 5)
    assert m.class_accuracy == pytest.approx((0.5, 1.0, 0.0))
    assert m.mean_class_accuracy == pytest.approx(0.5)
    assert m.fw_iou == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3 + 0)
    assert m.num_pixels == 5
    assert m.class_pixels == (2, 2, 1)


def test_absent_class_is_excluded_from_means() -> None:
    cm = ConfusionMatrix(4)
    gt = np.array([0, 0, 1, 1])
    cm.update(gt, gt)
    m = cm.compute()
    assert m.miou == 1.0 and m.mean_class_accuracy == 1.0 and m.fw_iou == 1.0
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[3])
    d = m.to_dict(["a", "b", "c", "d"])
    assert d["per_class"]["c"]["iou"] is None  # NaN -> null: valid JSON
    json.dumps(d, allow_nan=False)
    table = m.table(["a", "b", "c", "d"])
    assert "mIoU" in table and "100.00" in table


def test_false_positive_only_class_counts_as_zero() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.zeros(4, np.uint8), np.array([0, 0, 0, 1], np.uint8))
    m = cm.compute()
    assert m.iou == pytest.approx((0.75, 0.0))
    assert m.miou == pytest.approx(0.375)


def test_accumulates_over_images_not_per_image_mean() -> None:
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]))
    a.update(np.array([1]), np.array([0]))
    b.update(np.array([1]), np.array([0]))
    b.merge(a)
    assert b.matrix.tolist() == [[4, 0], [2, 0]]
    assert b.compute().miou == pytest.approx((4 / 6 + 0) / 2)


def test_random_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    c = 5
    gt = rng.integers(0, c, (40, 30))
    gt[rng.random(gt.shape) < 0.1] = IGNORE_INDEX
    pred = np.where(rng.random(gt.shape) < 0.6, gt % c, rng.integers(0, c, gt.shape))
    cm = ConfusionMatrix(c)
    cm.update(gt, pred)
    keep = gt != IGNORE_INDEX
    ious = []
    for k in range(c):
        inter = np.sum((gt == k) & (pred == k) & keep)
        union = np.sum(((gt == k) | (pred == k)) & keep)
        ious.append(inter / union)
    m = cm.compute()
    assert m.iou == pytest.approx(tuple(ious))
    assert m.pixel_accuracy == pytest.approx(np.mean(gt[keep] == pred[keep]))
    assert SegmentationMetrics.from_matrix(cm.matrix) == m


def test_errors_name_the_problem() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"outside 0\.\.2.*--labels"):
        cm.update(np.array([0, 7]), np.array([0, 0]))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.array([0, 1]), np.array([0, 3]))
    assert cm.matrix.sum() == 0  # failed updates change nothing
