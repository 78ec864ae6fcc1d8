"""Evaluation metrics against values computed by hand, including the empty-mask conventions."""
from __future__ import annotations

import numpy as np
import pytest

from segpipe.evaluation.metrics import (
    best_threshold,
    boundary,
    boundary_f_score,
    class_confusion,
    class_scores,
    confusion_counts,
    scores_from_counts,
    threshold_sweep,
)


def masks(*rows):
    return np.array([[c == "1" for c in row] for row in rows])


def test_scores_by_hand():
    predicted = masks("1100", "0110")
    truth = masks("1000", "0111")
    counts = confusion_counts(predicted, truth)
    assert counts.tolist() == [3, 1, 1, 3]  # tp, fp, fn, tn
    assert scores_from_counts(counts) == pytest.approx({
        "iou": 3 / 5, "dice": 6 / 8, "precision": 3 / 4, "recall": 3 / 4, "pixel_accuracy": 6 / 8,
        "specificity": 3 / 4})


@pytest.mark.parametrize("predicted, truth, expected", [
    ("0000", "0000", dict(iou=1, dice=1, precision=1, recall=1, pixel_accuracy=1, specificity=1)),
    ("0000", "0110", dict(iou=0, dice=0, precision=0, recall=0, pixel_accuracy=0.5, specificity=1)),
    ("0110", "0000", dict(iou=0, dice=0, precision=0, recall=0, pixel_accuracy=0.5, specificity=0.5)),
    ("1111", "1111", dict(iou=1, dice=1, precision=1, recall=1, pixel_accuracy=1, specificity=1)),
])
def test_empty_prediction_and_empty_truth_conventions(predicted, truth, expected):
    assert scores_from_counts(confusion_counts(masks(predicted), masks(truth))) == pytest.approx(expected)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"prediction shape \(1, 3\) differs from mask shape \(1, 4\)"):
        confusion_counts(masks("000"), masks("0000"))


def test_boundary_is_the_inner_edge():
    square = np.zeros((5, 5), bool)
    square[1:4, 1:4] = True
    expected = square.copy()
    expected[2, 2] = False
    assert (boundary(square) == expected).all()


def test_boundary_f_score_with_tolerance():
    truth = np.zeros((12, 12), bool)
    truth[2:8, 2:8] = True
    shifted = np.roll(truth, 2, axis=1)  # the same square two pixels to the right
    assert boundary_f_score(truth, truth, tolerance=0) == 1.0
    assert boundary_f_score(shifted, truth, tolerance=2) == 1.0
    # With tolerance 1 only the top/bottom edge pixels within 1 px match: count by hand.
    edge_t, edge_p = boundary(truth), boundary(shifted)
    from scipy import ndimage

    precision = np.mean(ndimage.distance_transform_edt(~edge_t)[edge_p] <= 1)
    recall = np.mean(ndimage.distance_transform_edt(~edge_p)[edge_t] <= 1)
    assert 0 < precision < 1
    assert boundary_f_score(shifted, truth, tolerance=1) == pytest.approx(2 * precision * recall / (precision + recall))
    empty = np.zeros_like(truth)
    assert boundary_f_score(empty, empty, tolerance=1) == 1.0
    assert boundary_f_score(empty, truth, tolerance=1) == 0.0


def test_multiclass_scores_by_hand():
    true_ids = np.array([0, 0, 0, 1, 1, 2])
    predicted_ids = np.array([0, 0, 1, 1, 2, 2])
    matrix = class_confusion(predicted_ids, true_ids, num_classes=4)
    assert matrix[:3, :3].tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = class_scores(matrix)
    iou = [2 / 3, 1 / 3, 1 / 2]  # class 3 absent from both truth and prediction: no score, not in the mean
    assert scores["iou_per_class"][:3] == pytest.approx(iou) and scores["iou_per_class"][3] is None
    assert scores["mean_iou"] == pytest.approx(np.mean(iou))
    assert scores["mean_dice"] == pytest.approx(np.mean([4 / 5, 2 / 4, 2 / 3]))
    assert scores["frequency_weighted_iou"] == pytest.approx(3 / 6 * 2 / 3 + 2 / 6 * 1 / 3 + 1 / 6 * 1 / 2)
    assert scores["dice_per_class"][:3] == pytest.approx([4 / 5, 2 / 4, 2 / 3])


def test_threshold_sweep_picks_the_threshold_that_separates_the_classes():
    # Foreground pixels have probability 0.7, background 0.45 or 0.2: only thresholds in (0.45, 0.7] are perfect.
    truth = np.array([[1, 1, 0, 0, 0]], bool)
    probabilities = np.array([[0.7, 0.7, 0.45, 0.2, 0.45]])
    sweep = threshold_sweep([probabilities], [truth])
    perfect = [row["threshold"] for row in sweep if row["iou"] == 1.0]
    assert perfect == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7])
    assert best_threshold(sweep) == 0.5  # ties go to the one closest to 0.5
    at_04 = next(row for row in sweep if row["threshold"] == pytest.approx(0.4))
    assert at_04 == pytest.approx({"threshold": 0.4, "iou": 2 / 4, "f1": 4 / 6, "precision": 2 / 4, "recall": 1.0})
    shifted = threshold_sweep([probabilities + 0.2], [truth])
    assert best_threshold(shifted) == pytest.approx(0.7)


def test_overlay_colours_the_right_pixels():
    from segpipe.evaluation.overlays import FALSE_NEGATIVE, FALSE_POSITIVE, TRUE_POSITIVE, overlay

    image = np.full((1, 4), 100, np.uint8)
    predicted = np.array([[1, 1, 0, 0]], bool)
    truth = np.array([[1, 0, 1, 0]], bool)
    out = overlay(image, predicted, truth, alpha=1.0).astype(int)
    assert out[0, 0].tolist() == list(TRUE_POSITIVE)
    assert out[0, 1].tolist() == list(FALSE_POSITIVE)
    assert out[0, 2].tolist() == list(FALSE_NEGATIVE)
    assert out[0, 3].tolist() == [100, 100, 100]  # true negative: the gray image, untouched
    half = overlay(image, predicted, truth, alpha=0.5).astype(int)
    assert half[0, 0].tolist() == [50, 150, 50]


def test_evaluate_split_scores_binary_and_multiclass():
    from segpipe.evaluation.totals import SplitTotals

    # binary: one image, probabilities over 4 pixels, truth ids
    totals = SplitTotals(num_classes=1, tolerance=1)
    totals.add(np.array([[0.9, 0.6, 0.3, 0.1]], np.float32)[..., None], np.array([[1, 0, 1, 0]], np.uint8))
    binary = dict(class_names=["background", "foreground"])
    flat, rows = totals.scores("valid", **binary, threshold=0.5)
    assert flat["valid_iou"] == pytest.approx(1 / 3) and flat["valid_precision"] == pytest.approx(1 / 2)
    # mean over background (iou 1/3: tp1 fp1 fn1) and foreground (1/3)
    assert flat["valid_mean_iou"] == pytest.approx(1 / 3)
    assert rows[0]["iou"] == pytest.approx(1 / 3)
    flat, _ = totals.scores("valid", **binary, threshold=0.25, suffix="_at_best_threshold")
    assert flat["valid_iou_at_best_threshold"] == pytest.approx(2 / 3)  # 0.9, 0.6, 0.3 predicted: tp 2, fp 1

    # multi-class: argmax per pixel
    totals = SplitTotals(num_classes=3, tolerance=1)
    totals.add(np.eye(3, dtype=np.float32)[np.array([[0, 1, 2, 2]])], np.array([[0, 1, 1, 2]], np.uint8))
    flat, rows = totals.scores("test", class_names=["sky", "road", "car"])
    assert flat["test_class_iou"] == pytest.approx({"sky": 1.0, "road": 1 / 2, "car": 1 / 2})
    assert flat["test_mean_iou"] == pytest.approx(2 / 3) and flat["test_pixel_accuracy"] == pytest.approx(3 / 4)
    assert rows[0]["iou"] == pytest.approx(2 / 3)
