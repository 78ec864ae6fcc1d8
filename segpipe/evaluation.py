"""What the evaluate stage measures, from predicted class ids and true masks at each image's own size.

Flat metric names: <split>_<score> at threshold 0.5 and <split>_<score>_at_best_threshold (binary), as
`dvc metrics diff` shows them. Score conventions (empty masks, pooling, classes): segpipe/metrics.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from segpipe import metrics as m
from segpipe.image_io import IGNORE_ID


def split_scores(name: str, predictions: list[np.ndarray], truths: list[np.ndarray], *, num_classes: int,
                 class_names: list[str], tolerance: int, suffix: str = "") -> tuple[dict[str, object], list[dict[str, float]]]:
    """Metrics of one split, and per-image IoU, Dice and boundary F1. Void pixels (id 255) are left out.

    Args:
        name: the split (`valid`, `test`), the metrics' prefix.
        predictions: class ids (H, W) per image (`segpipe.inference.to_class_ids`).
        truths: the masks (H, W) as class ids, 255 = void; binary: foreground is id 1.
        num_classes: 1 = binary, else the number of classes.
        class_names: every class's name in id order (`Params.class_names`; binary: background, foreground).
        tolerance: pixels, for the boundary F1.
        suffix: appended to every metric name (`_at_best_threshold`).

    Returns:
        Flat scores (`valid_iou`, ...) and `<split>_class_iou`, `<split>_class_dice`, each {class name: score,
        or None for a class absent from truth and prediction} (binary: background and foreground).
    """
    flat, per_image = {}, []
    labelled = [t != IGNORE_ID for t in truths]
    if num_classes == 1:
        predicted = [p[keep] > 0 for p, keep in zip(predictions, labelled)]
        true = [t[keep] == 1 for t, keep in zip(truths, labelled)]
        counts = [m.confusion_counts(p, t) for p, t in zip(predicted, true)]
        classes = m.class_scores(confusion_matrix(predictions, truths, num_classes=1))
        for prediction, truth, keep, count in zip(predictions, truths, labelled, counts):
            scores = m.scores_from_counts(count)
            per_image.append({"iou": scores["iou"], "dice": scores["dice"],
                              "boundary_f": m.boundary_f_score(prediction > 0, truth == 1, tolerance=tolerance,
                                                               labelled=keep)})
        flat.update({f"{name}_{k}{suffix}": v for k, v in m.scores_from_counts(sum(counts)).items()})
    else:
        matrices = [m.class_confusion(p[keep], t[keep], num_classes=num_classes)
                    for p, t, keep in zip(predictions, truths, labelled)]
        matrix = sum(matrices)
        classes = m.class_scores(matrix)
        flat[f"{name}_pixel_accuracy{suffix}"] = float(np.trace(matrix) / max(1, matrix.sum()))
        flat[f"{name}_mean_dice{suffix}"] = classes["mean_dice"]
        for prediction, truth, keep, image_matrix in zip(predictions, truths, labelled, matrices):
            image_classes = m.class_scores(image_matrix)
            per_image.append({"iou": image_classes["mean_iou"], "dice": image_classes["mean_dice"],
                              "boundary_f": m.boundary_f_score(prediction, truth, tolerance=tolerance, labelled=keep,
                                                               multi_class=True)})
    flat[f"{name}_class_iou{suffix}"] = dict(zip(class_names, classes["iou_per_class"]))
    flat[f"{name}_class_dice{suffix}"] = dict(zip(class_names, classes["dice_per_class"]))
    flat[f"{name}_mean_iou{suffix}"] = classes["mean_iou"]
    flat[f"{name}_frequency_weighted_iou{suffix}"] = classes["frequency_weighted_iou"]
    for key in ("iou", "dice", "boundary_f"):
        flat[f"{name}_image_mean_{key}{suffix}"] = float(np.mean([row[key] for row in per_image]))
    return flat, per_image


def confusion_matrix(predictions: list[np.ndarray], truths: list[np.ndarray], *, num_classes: int) -> np.ndarray:
    """(C, C) pixel counts over all images, rows = true class, void left out (C = 2 for binary)."""
    size = max(2, num_classes)
    return sum(m.class_confusion(p[t != IGNORE_ID], t[t != IGNORE_ID], num_classes=size)
               for p, t in zip(predictions, truths))


def confusion_sample(predictions: list[np.ndarray], truths: list[np.ndarray], *, class_names: list[str], pixels: int,
                     seed: int) -> pd.DataFrame:
    """A seeded sample of labelled pixels (actual, predicted class names) for DVC's confusion template."""
    predicted = np.concatenate([p[t != IGNORE_ID] for p, t in zip(predictions, truths)]).astype(int)
    actual = np.concatenate([t[t != IGNORE_ID] for t in truths]).astype(int)
    index = np.random.default_rng(seed).choice(len(actual), size=min(pixels, len(actual)), replace=False)
    index.sort()
    return pd.DataFrame({"actual": [class_names[i] for i in actual[index]],
                         "predicted": [class_names[i] for i in predicted[index]]})


def per_image_table(rows: pd.DataFrame, per_image: list[dict[str, float]], *, threshold: float) -> pd.DataFrame:
    """id, group, foreground_fraction, threshold, iou, dice, boundary_f per image (plots/evaluate/per_image.csv)."""
    table = rows[["id", "group", "foreground_fraction"]].copy()
    table["threshold"] = threshold
    for key in ("iou", "dice", "boundary_f"):
        table[key] = [round(row[key], 6) for row in per_image]
    return table
