"""What the evaluate stage measures, accumulated one image at a time, so memory does not grow with the split.

`SplitTotals` takes each image's probabilities and true mask once and keeps only running totals: pooled
confusion counts (binary: at every threshold of the sweep; multi-class: the exact (C, C) matrix) and a few
numbers per image (IoU, Dice and boundary F1; binary: at every threshold, so the best threshold, chosen after
the last image, needs no second pass). The numbers equal those of scoring every image's prediction at once.

Flat metric names: <split>_<score> at threshold 0.5 and <split>_<score>_at_best_threshold (binary), as
`dvc metrics diff` shows them. Score conventions (empty masks, pooling, classes): segpipe/evaluation/metrics.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from segpipe.data.image_io import IGNORE_ID
from segpipe.evaluation import metrics as m
from segpipe.evaluation.intervals import count_columns


def threshold_levels(probabilities: np.ndarray, thresholds=m.THRESHOLDS) -> np.ndarray:
    """uint8 (H, W): how many of the (ascending) `thresholds` each foreground probability reaches, so the
    prediction at thresholds[k] is `levels > k`, exactly as `probabilities >= thresholds[k]`."""
    levels = np.zeros(probabilities.shape, np.uint8)
    for threshold in thresholds:
        levels += probabilities >= threshold
    return levels


def _counts_by_threshold(levels: np.ndarray, truth: np.ndarray, labelled: np.ndarray, steps: int) -> np.ndarray:
    """(steps, 4) int64 [tp, fp, fn, tn] of `levels > k` against `truth`, labelled pixels only."""
    foreground = np.bincount(levels[labelled & truth], minlength=steps + 1)
    background = np.bincount(levels[labelled & ~truth], minlength=steps + 1)
    # pixels predicted at threshold k: level > k, i.e. the tail of the level histogram after k
    fg_above = foreground[::-1].cumsum()[::-1][1:]
    bg_above = background[::-1].cumsum()[::-1][1:]
    return np.stack([fg_above, bg_above, foreground.sum() - fg_above, background.sum() - bg_above], axis=1)


def _interval_counts(starts: np.ndarray, stops: np.ndarray, steps: int) -> np.ndarray:
    """How many of the integer intervals [start, stop) hold each k in 0..steps-1 (start >= stop: none)."""
    starts, stops = starts[starts < stops], stops[starts < stops]
    opened = np.bincount(np.clip(starts, 0, steps), minlength=steps + 1)
    closed = np.bincount(np.clip(stops, 0, steps), minlength=steps + 1)
    return (opened - closed).cumsum()[:steps]


def boundary_f_by_threshold(levels: np.ndarray, truth: np.ndarray, labelled: np.ndarray, *, tolerance: int,
                            steps: int) -> np.ndarray:
    """(steps,) float64: `metrics.boundary_f_score(levels > k, truth, labelled=labelled)` for every k, in one pass.

    A pixel is on the predicted edge at k when it is predicted (level > k) and an in-image 4-neighbour is
    not (its level <= k): for k in [lowest neighbour level, own level), an interval, so edge counts at every
    threshold come from one histogram of interval ends."""
    height, width = levels.shape
    padded = np.pad(levels.astype(np.int16), 1, constant_values=np.iinfo(np.int16).max)  # the outside is no edge
    lowest = np.minimum.reduce([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    start = np.where(labelled, lowest, steps).astype(np.int64)  # void pixels are never edge pixels
    stop = levels.astype(np.int64)
    true_edge = m.boundary(truth) & labelled
    predicted_edges = _interval_counts(start.ravel(), stop.ravel(), steps)
    if not true_edge.any():
        return np.where(predicted_edges == 0, 1.0, 0.0)
    near = ndimage.distance_transform_edt(~true_edge) <= tolerance
    matched_predicted = _interval_counts(start[near], stop[near], steps)
    # recall: a true edge pixel is matched at k if a predicted edge pixel at k lies within `tolerance`
    ys, xs = np.nonzero(true_edge)
    ks = np.arange(steps)
    matched = np.zeros((len(ys), steps), bool)
    for dy in range(-tolerance, tolerance + 1):
        for dx in range(-tolerance, tolerance + 1):
            if dy * dy + dx * dx > tolerance * tolerance:
                continue
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            lo = np.full(len(ys), steps, np.int64)
            hi = np.zeros(len(ys), np.int64)
            lo[inside], hi[inside] = start[y[inside], x[inside]], stop[y[inside], x[inside]]
            matched |= (lo[:, None] <= ks) & (ks < hi[:, None])
    matched_true = matched.sum(axis=0)
    scores = np.zeros(steps)
    for k in range(steps):
        if predicted_edges[k] == 0:
            continue  # a true edge and no predicted one: 0.0
        precision = float(matched_predicted[k]) / float(predicted_edges[k])
        recall = float(matched_true[k]) / float(len(ys))
        scores[k] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return scores


class SplitTotals:
    """Running totals of one split's scores (module docstring). Binary models give foreground probabilities
    (H, W, 1) and are scored at every threshold of `segpipe.evaluation.metrics.THRESHOLDS`; multi-class models (H, W, C)
    by argmax."""

    def __init__(self, *, num_classes: int, tolerance: int, thresholds=m.THRESHOLDS):
        self.num_classes, self.tolerance, self.thresholds = num_classes, tolerance, tuple(thresholds)
        steps = len(self.thresholds)
        self.counts = np.zeros((steps, 4), np.int64)            # binary: pooled [tp, fp, fn, tn] per threshold
        self.matrix = np.zeros((max(2, num_classes),) * 2, np.int64)  # multi-class: rows = true class
        self.image_scores = []  # per image: (3, steps) binary [iou, dice, boundary_f]; (3,) multi-class
        self.image_counts = []  # per image: (steps, 4) binary [tp, fp, fn, tn]; (C, 3) multi-class [tp, fp, fn]

    @classmethod
    def merged(cls, parts: list[SplitTotals]) -> SplitTotals:
        """The totals of all images of `parts` together, in their order (the out-of-fold set from its folds)."""
        first = parts[0]
        whole = cls(num_classes=first.num_classes, tolerance=first.tolerance, thresholds=first.thresholds)
        for part in parts:
            whole.counts += part.counts
            whole.matrix += part.matrix
            whole.image_scores += part.image_scores
            whole.image_counts += part.image_counts
        return whole

    def add(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """One image: probabilities (H, W, K) float32, truth (H, W) uint8 class ids (255 = void)."""
        if probabilities.shape[:2] != truth.shape:
            raise ValueError(f"prediction shape {probabilities.shape[:2]} differs from mask shape {truth.shape}.")
        labelled = truth != IGNORE_ID
        if self.num_classes == 1:
            steps = len(self.thresholds)
            levels = threshold_levels(probabilities[..., 0], self.thresholds)
            counts = _counts_by_threshold(levels, truth == 1, labelled, steps)
            self.counts += counts
            self.image_counts.append(counts)
            tp, fp, fn = (counts[:, i].astype(np.float64) for i in range(3))
            wrong = fp + fn  # IoU and Dice are 1 where there is nothing to find and nothing found (metrics.py)
            self.image_scores.append(np.array([
                np.where(tp + wrong > 0, tp / np.maximum(tp + wrong, 1), 1.0),
                np.where(tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 1.0),
                boundary_f_by_threshold(levels, truth == 1, labelled, tolerance=self.tolerance, steps=steps)]))
        else:
            predicted = np.argmax(probabilities, axis=-1).astype(np.uint8)
            matrix = m.class_confusion(predicted[labelled], truth[labelled], num_classes=self.num_classes)
            self.matrix += matrix
            hits = np.diag(matrix)
            self.image_counts.append(np.stack([hits, matrix.sum(axis=0) - hits, matrix.sum(axis=1) - hits], axis=1))
            classes = m.class_scores(matrix)
            self.image_scores.append(np.array([
                classes["mean_iou"], classes["mean_dice"],
                m.boundary_f_score(predicted, truth, tolerance=self.tolerance, labelled=labelled, multi_class=True)]))

    def sweep(self) -> list[dict[str, float]]:
        """Binary: pooled IoU, F1 (= Dice), precision and recall at each threshold (`metrics.threshold_sweep`)."""
        rows = []
        for threshold, counts in zip(self.thresholds, self.counts):
            scores = m.scores_from_counts(counts)
            rows.append({"threshold": float(threshold), "iou": scores["iou"], "f1": scores["dice"],
                         "precision": scores["precision"], "recall": scores["recall"]})
        return rows

    def confusion_matrix(self, *, threshold: float = 0.5) -> np.ndarray:
        """(C, C) pixel counts, rows = true class, void left out (binary: C = 2, at `threshold`)."""
        if self.num_classes > 1:
            return self.matrix.copy()
        tp, fp, fn, tn = self.counts[self._index(threshold)]
        return np.array([[tn, fp], [fn, tp]], np.int64)

    def scores(self, name: str, *, class_names: list[str], threshold: float = 0.5, suffix: str = ""
               ) -> tuple[dict[str, object], list[dict[str, float]]]:
        """Flat scores (`valid_iou`, ..., `<split>_class_iou`, `<split>_class_dice` as {class name: score, or
        None for a class absent from truth and prediction}) and per-image iou, dice, boundary_f, binary at
        `threshold` (one of the sweep's). Every name gets `name` before and `suffix` after it."""
        flat = {}
        if self.num_classes == 1:
            index = self._index(threshold)
            flat.update({f"{name}_{k}{suffix}": v for k, v in m.scores_from_counts(self.counts[index]).items()})
        else:
            flat[f"{name}_pixel_accuracy{suffix}"] = float(np.trace(self.matrix) / max(1, self.matrix.sum()))
        classes = m.class_scores(self.confusion_matrix(threshold=threshold))
        if self.num_classes > 1:
            flat[f"{name}_mean_dice{suffix}"] = classes["mean_dice"]
        flat[f"{name}_class_iou{suffix}"] = dict(zip(class_names, classes["iou_per_class"]))
        flat[f"{name}_class_dice{suffix}"] = dict(zip(class_names, classes["dice_per_class"]))
        flat[f"{name}_mean_iou{suffix}"] = classes["mean_iou"]
        flat[f"{name}_frequency_weighted_iou{suffix}"] = classes["frequency_weighted_iou"]
        rows = [dict(zip(("iou", "dice", "boundary_f"), map(float, row))) for row in self._image_scores(threshold)]
        for key in ("iou", "dice", "boundary_f"):
            flat[f"{name}_image_mean_{key}{suffix}"] = float(np.mean([row[key] for row in rows]))
        return flat, rows

    def per_image(self, *, class_names: list[str], threshold: float = 0.5) -> pd.DataFrame:
        """iou, dice, boundary_f and the counts behind the pooled scores (intervals.count_columns) per image,
        binary at `threshold`: what bootstrap intervals and paired comparisons resample."""
        binary = self.num_classes == 1
        index = self._index(threshold) if binary else None
        counts = np.array([c[index] if binary else c.ravel() for c in self.image_counts], np.int64)
        columns = count_columns(class_names, binary=binary)
        frame = pd.DataFrame(self._image_scores(threshold), columns=["iou", "dice", "boundary_f"])
        return pd.concat([frame, pd.DataFrame(counts.reshape(len(frame), len(columns)), columns=columns)], axis=1)

    def _image_scores(self, threshold: float) -> np.ndarray:
        """(N, 3) float64 [iou, dice, boundary_f] per image, binary at `threshold`."""
        if self.num_classes == 1:
            index = self._index(threshold)
            return np.array([scores[:, index] for scores in self.image_scores]).reshape(-1, 3)
        return np.array(self.image_scores).reshape(-1, 3)

    def _index(self, threshold: float) -> int:
        for index, value in enumerate(self.thresholds):
            if abs(value - threshold) < 1e-9:
                return index
        raise ValueError(f"threshold {threshold} is not one of the sweep's {list(self.thresholds)}.")


def per_image_table(rows: pd.DataFrame, totals: SplitTotals, *, class_names: list[str],
                    threshold: float) -> pd.DataFrame:
    """plots/evaluate/per_image.csv: id, group, foreground_fraction, threshold, then iou, dice, boundary_f and
    the counts (SplitTotals.per_image) at `threshold`, and for binary models the same again at 0.5 as
    `<column>_at_0.5`: the per-image parts of both the plain and the _at_best_threshold metrics, which the
    report pairs image by image (by id) with another run's."""
    table = rows[["id", "group", "foreground_fraction"]].reset_index(drop=True)
    table.insert(3, "threshold", threshold)
    scored = [totals.per_image(class_names=class_names, threshold=threshold)]
    if totals.num_classes == 1:
        scored.append(totals.per_image(class_names=class_names, threshold=0.5).add_suffix("_at_0.5"))
    table = pd.concat([table, *scored], axis=1)
    for column in table:
        if column.split("_at_")[0] in ("iou", "dice", "boundary_f"):
            table[column] = table[column].round(6)
    return table
