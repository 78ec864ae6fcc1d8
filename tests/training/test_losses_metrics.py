"""Losses and training metrics against values computed by hand on tiny masks."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from segpipe.training.keras_metrics import ConfusionScore
from segpipe.training.losses import cross_entropy, dice_loss, focal_loss, jaccard_loss, make_loss


def as_batch(truth, prob):
    """(1, 1, N, 1) class ids and (1, 1, N, C) probabilities from flat lists."""
    y_true = np.asarray(truth, np.uint8).reshape(1, 1, -1, 1)
    y_pred = np.asarray(prob, np.float32)
    return y_true, y_pred.reshape(1, 1, len(truth), -1)


def value(tensor) -> float:
    return float(keras.ops.convert_to_numpy(tensor))


# truth 1,1,0,0 / prediction 1,0,0,0 (hard): intersection 1, |truth| 2, |pred| 1
HARD = as_batch([1, 1, 0, 0], [1.0, 0.0, 0.0, 0.0])


def test_dice_and_jaccard_by_hand():
    assert value(dice_loss(*HARD)) == pytest.approx(1 - (2 * 1 + 1) / (2 + 1 + 1))  # smooth 1: 0.25
    assert value(jaccard_loss(*HARD)) == pytest.approx(1 - (1 + 1) / (2 + 1 - 1 + 1))  # 1/3


def test_soft_dice_uses_probabilities():
    y_true, y_pred = as_batch([1, 0], [0.5, 0.5])
    assert value(dice_loss(y_true, y_pred)) == pytest.approx(1 - (2 * 0.5 + 1) / (1 + 1 + 1))


def test_dice_of_empty_truth_and_empty_prediction_is_zero_loss():
    assert value(dice_loss(*as_batch([0, 0, 0], [0.0, 0.0, 0.0]))) == pytest.approx(0.0)


def test_binary_cross_entropy_by_hand():
    y_true, y_pred = as_batch([1, 0], [0.8, 0.4])
    assert value(cross_entropy(y_true, y_pred)) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-5)


def test_focal_down_weights_easy_pixels():
    y_true, y_pred = as_batch([1, 0], [0.9, 0.4])
    expected = -((0.1 ** 2) * math.log(0.9) + (0.4 ** 2) * math.log(0.6)) / 2
    assert value(focal_loss(y_true, y_pred, gamma=2.0)) == pytest.approx(expected, rel=1e-5)
    assert value(focal_loss(y_true, y_pred, gamma=0.0)) == pytest.approx(value(cross_entropy(y_true, y_pred)), rel=1e-5)


def test_multiclass_losses_average_over_classes():
    # 3 classes, 2 pixels with ids 0 and 2, perfect one-hot prediction except pixel 2 split 0.5/0.5 over classes 1, 2
    y_true, y_pred = as_batch([0, 2], [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    assert value(cross_entropy(y_true, y_pred)) == pytest.approx(-math.log(0.5) / 2, rel=1e-5)
    dice = [(2 * 1 + 1) / (1 + 1 + 1), (0 + 1) / (0 + 0.5 + 1), (2 * 0.5 + 1) / (1 + 0.5 + 1)]
    assert value(dice_loss(y_true, y_pred)) == pytest.approx(1 - np.mean(dice), rel=1e-5)


def test_weighted_sum_and_bad_names():
    loss = make_loss(weights={"bce": 2.0, "dice": 0.5})
    y_true, y_pred = as_batch([1, 0], [0.8, 0.4])
    expected = 2.0 * value(cross_entropy(y_true, y_pred)) + 0.5 * value(dice_loss(y_true, y_pred))
    assert value(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"unknown \['dcie'\], valid names: \['bce', 'dice', 'jaccard', 'focal'\]"):
        make_loss(weights={"dcie": 1.0})
    with pytest.raises(ValueError, match="train.loss.bce' must be a non-negative number"):
        make_loss(weights={"bce": -1})
    with pytest.raises(ValueError, match="only zero weights"):
        make_loss(weights={"bce": 0})


def scores(y_true, y_pred, *, num_classes, threshold=0.5):
    out = {}
    for score in ("iou", "dice", "precision", "recall"):
        metric = ConfusionScore(score, num_classes=num_classes, threshold=threshold)
        metric.update_state(y_true, y_pred)
        out[score] = value(metric.result())
    return out


def test_binary_metrics_by_hand_and_threshold():
    # truth 1,1,1,0,0 ; prob .9,.6,.2,.7,.1 -> at 0.5: tp 2, fp 1, fn 1
    y_true, y_pred = as_batch([1, 1, 1, 0, 0], [0.9, 0.6, 0.2, 0.7, 0.1])
    assert scores(y_true, y_pred, num_classes=1) == pytest.approx(
        {"iou": 2 / 4, "dice": 4 / 6, "precision": 2 / 3, "recall": 2 / 3})
    assert scores(y_true, y_pred, num_classes=1, threshold=0.65)["iou"] == pytest.approx(1 / 4)  # tp 1, fp 1, fn 2


def test_metrics_accumulate_over_batches_and_reset():
    metric = ConfusionScore("iou", num_classes=1)
    metric.update_state(*as_batch([1, 0], [0.9, 0.1]))  # tp 1
    metric.update_state(*as_batch([1, 0], [0.1, 0.9]))  # fn 1, fp 1
    assert value(metric.result()) == pytest.approx(1 / 3)  # pooled, not the mean of 1.0 and 0.0
    metric.reset_state()
    assert value(metric.result()) == 0.0


def test_multiclass_iou_is_the_mean_over_classes():
    # ids 0,1,2,2 ; argmax 0,2,2,2 -> class0 1/1, class1 0/1, class2 2/3
    y_true, y_pred = as_batch([0, 1, 2, 2], [[.8, .1, .1], [.1, .2, .7], [0, 0, 1], [.2, .2, .6]])
    assert scores(y_true, y_pred, num_classes=3)["iou"] == pytest.approx((1 + 0 + 2 / 3) / 3)
