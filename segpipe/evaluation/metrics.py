"""Evaluation metrics in NumPy, independent of the training metrics (segpipe/training/keras_metrics.py).

Conventions (documented because the edge cases decide averages):
- Binary masks are boolean arrays; the positive class is the foreground (class 1).
- A ratio whose denominator is 0 is a case with nothing to get wrong or right: IoU, Dice, precision,
  recall and boundary F are 1.0 when truth and prediction are both empty, and 0.0 when only one of
  them is empty (e.g. precision with no predicted pixels but a non-empty truth: everything was missed).
- Pooled values sum the confusion counts of all pixels of all images, then take the ratio; per-image
  values take the ratio per image (and are averaged by the caller).
- Classes (multi-class): a class absent from both truth and prediction has no IoU (None) and is left out
  of the mean IoU, rather than counted as a perfect 1.0 that would flatter the mean.
- Void pixels (id 255) are removed by the caller (segpipe/evaluation/totals.py) before any count.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SCORES = ("iou", "dice", "precision", "recall", "pixel_accuracy", "specificity")
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))


def confusion_counts(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[tp, fp, fn, tn] of two boolean masks of the same shape, as int64."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction shape {predicted.shape} differs from mask shape {truth.shape}.")
    tp = np.count_nonzero(predicted & truth)
    fp = np.count_nonzero(predicted & ~truth)
    fn = np.count_nonzero(~predicted & truth)
    return np.array([tp, fp, fn, predicted.size - tp - fp - fn], np.int64)


def _ratio(numerator: float, denominator: float, *, empty: float) -> float:
    return float(numerator) / float(denominator) if denominator else empty


def scores_from_counts(counts) -> dict[str, float]:
    """IoU, Dice, precision, recall, pixel accuracy, specificity from [tp, fp, fn, tn] (see conventions)."""
    tp, fp, fn, tn = (int(c) for c in counts)
    nothing_there = tp + fp + fn == 0
    return {
        "iou": _ratio(tp, tp + fp + fn, empty=1.0),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty=1.0),
        "precision": _ratio(tp, tp + fp, empty=1.0 if nothing_there else 0.0),
        "recall": _ratio(tp, tp + fn, empty=1.0 if nothing_there else 0.0),
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn, empty=1.0),
        "specificity": _ratio(tn, tn + fp, empty=1.0),
    }


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that touch a pixel outside it (4-neighbourhood); image borders do not count."""
    mask = np.asarray(mask, bool)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=1)
    return mask & ~eroded


def class_boundary(ids: np.ndarray, *, ignore: int | None = None) -> np.ndarray:
    """Pixels of a class-id map with a 4-neighbour of another class (both sides of every class edge).
    `ignore`: an id (void) whose pixels make no edge, neither theirs nor their neighbours'."""
    ids = np.asarray(ids)
    edge = np.zeros(ids.shape, bool)
    vertical, horizontal = ids[1:] != ids[:-1], ids[:, 1:] != ids[:, :-1]
    if ignore is not None:
        vertical &= (ids[1:] != ignore) & (ids[:-1] != ignore)
        horizontal &= (ids[:, 1:] != ignore) & (ids[:, :-1] != ignore)
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def boundary_f_score(predicted: np.ndarray, truth: np.ndarray, *, tolerance: int,
                     labelled: np.ndarray | None = None, multi_class: bool = False) -> float:
    """Boundary F1 (Csurka et al. 2013): a predicted edge pixel is right if a true edge pixel lies within
    `tolerance` pixels (Euclidean), and vice versa for recall. Empty/empty = 1.0, one empty = 0.0.

    Binary: edges of the foreground (boolean masks). `multi_class`: edges between any two classes (id maps).
    `labelled`: only edge pixels there count (void pixels have no true edge to match)."""
    edges = class_boundary if multi_class else boundary
    predicted_edge, true_edge = edges(predicted), edges(truth)
    if labelled is not None:
        predicted_edge, true_edge = predicted_edge & labelled, true_edge & labelled
    if not predicted_edge.any() or not true_edge.any():
        return 1.0 if not predicted_edge.any() and not true_edge.any() else 0.0
    distance_to_true = ndimage.distance_transform_edt(~true_edge)
    distance_to_predicted = ndimage.distance_transform_edt(~predicted_edge)
    precision = float(np.mean(distance_to_true[predicted_edge] <= tolerance))
    recall = float(np.mean(distance_to_predicted[true_edge] <= tolerance))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def class_confusion(predicted_ids: np.ndarray, true_ids: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) pixel counts, rows = true class, columns = predicted class (void removed first)."""
    predicted_ids, true_ids = np.asarray(predicted_ids).ravel(), np.asarray(true_ids).ravel()
    if predicted_ids.shape != true_ids.shape:
        raise ValueError("prediction and mask have different sizes.")
    return np.bincount(true_ids.astype(np.int64) * num_classes + predicted_ids.astype(np.int64),
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def class_scores(matrix: np.ndarray) -> dict[str, object]:
    """Per-class IoU and Dice (None for a class absent from both truth and prediction), mean IoU and mean
    Dice over the classes that have one (background included; 1.0 when none has: nothing to get wrong),
    and frequency-weighted IoU (weights = true pixel share)."""
    matrix = np.asarray(matrix, np.int64)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    iou = [None if t + p + n == 0 else t / (t + p + n) for t, p, n in zip(tp, fp, fn)]
    dice = [None if t + p + n == 0 else 2 * t / (2 * t + p + n) for t, p, n in zip(tp, fp, fn)]
    frequency = matrix.sum(axis=1) / max(1, matrix.sum())
    scored = [float(v) for v in iou if v is not None]
    return {"iou_per_class": [None if v is None else float(v) for v in iou],
            "dice_per_class": [None if v is None else float(v) for v in dice],
            "mean_iou": float(np.mean(scored)) if scored else 1.0,
            "mean_dice": float(np.mean([v for v in dice if v is not None])) if scored else 1.0,
            "frequency_weighted_iou": float(sum(f * v for f, v in zip(frequency, iou) if v is not None))}


def threshold_sweep(probabilities: list[np.ndarray], truths: list[np.ndarray], labelled: list[np.ndarray] | None = None,
                    thresholds=THRESHOLDS) -> list[dict[str, float]]:
    """Pooled IoU, F1 (= Dice), precision and recall at each threshold, over all images.

    Args:
        probabilities: foreground probability (H, W) per image.
        truths: boolean foreground (H, W) per image.
        labelled: boolean (H, W) per image, False on void pixels (left out); None = all labelled.
    """
    if labelled is not None:
        probabilities = [p[keep] for p, keep in zip(probabilities, labelled)]
        truths = [t[keep] for t, keep in zip(truths, labelled)]
    rows = []
    for threshold in thresholds:
        counts = sum(confusion_counts(p >= threshold, t) for p, t in zip(probabilities, truths))
        scores = scores_from_counts(counts)
        rows.append({"threshold": float(threshold), "iou": scores["iou"], "f1": scores["dice"],
                     "precision": scores["precision"], "recall": scores["recall"]})
    return rows


def best_threshold(sweep: list[dict[str, float]], *, by: str = "iou") -> float:
    """The threshold with the highest `by`; ties go to the one closest to 0.5 (the untuned default)."""
    best = max(row[by] for row in sweep)
    tied = [row["threshold"] for row in sweep if row[by] >= best - 1e-12]
    return min(tied, key=lambda t: (abs(t - 0.5), t))
