"""What the evaluate stage measures, from predicted class ids and true masks at each image's own size.

Flat metric names: <split>_<score> at threshold 0.5 and <split>_<score>_at_best_threshold (binary), as
`dvc metrics diff` shows them. Score conventions (empty masks, pooling, classes): segpipe/metrics.py.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from segpipe import metrics as m


def split_scores(name: str, predictions: list[np.ndarray], truths: list[np.ndarray], *, num_classes: int,
                 tolerance: int, suffix: str = "") -> tuple[dict[str, float], list[dict[str, float]]]:
    """Flat metrics of one split, and per-image IoU, Dice and boundary F1.

    Args:
        name: the split (`valid`, `test`), the metrics' prefix.
        predictions: class ids (H, W) per image (`segpipe.inference.to_class_ids`).
        truths: the masks (H, W) as class ids; binary: foreground is any non-zero value.
        num_classes: 1 = binary, else the number of classes.
        tolerance: pixels, for the boundary F1.
        suffix: appended to every metric name (`_at_best_threshold`).
    """
    flat, per_image = {}, []
    if num_classes == 1:
        predicted = [p > 0 for p in predictions]
        truths = [t > 0 for t in truths]
        counts = [m.confusion_counts(p, t) for p, t in zip(predicted, truths)]
        classes = m.class_scores(sum(m.class_confusion(p, t, num_classes=2) for p, t in zip(predicted, truths)))
        for prediction, truth, count in zip(predicted, truths, counts):
            scores = m.scores_from_counts(count)
            per_image.append({"iou": scores["iou"], "dice": scores["dice"],
                              "boundary_f": m.boundary_f_score(prediction, truth, tolerance=tolerance)})
        flat.update({f"{name}_{k}{suffix}": v for k, v in m.scores_from_counts(sum(counts)).items()})
    else:
        matrix = sum(m.class_confusion(p, t, num_classes=num_classes) for p, t in zip(predictions, truths))
        classes = m.class_scores(matrix)
        flat[f"{name}_pixel_accuracy{suffix}"] = float(np.trace(matrix) / max(1, matrix.sum()))
        for k, (iou, dice) in enumerate(zip(classes["iou_per_class"], classes["dice_per_class"])):
            flat[f"{name}_iou_class_{k}{suffix}"] = iou
            flat[f"{name}_dice_class_{k}{suffix}"] = dice
        for prediction, truth in zip(predictions, truths):
            image_classes = m.class_scores(m.class_confusion(prediction, truth, num_classes=num_classes))
            per_image.append({"iou": image_classes["mean_iou"], "dice": float(np.mean(image_classes["dice_per_class"])),
                              "boundary_f": m.boundary_f_score(prediction > 0, truth > 0, tolerance=tolerance)})
    flat[f"{name}_mean_iou{suffix}"] = classes["mean_iou"]
    flat[f"{name}_frequency_weighted_iou{suffix}"] = classes["frequency_weighted_iou"]
    for key in ("iou", "dice", "boundary_f"):
        flat[f"{name}_image_mean_{key}{suffix}"] = float(np.mean([row[key] for row in per_image]))
    return flat, per_image


def confusion_sample(predictions: list[np.ndarray], truths: list[np.ndarray], *, num_classes: int, pixels: int,
                     seed: int) -> pd.DataFrame:
    """A seeded sample of pixels (actual, predicted class names) for DVC's confusion template."""
    names = ["background", "foreground"] if num_classes == 1 else [f"class_{k}" for k in range(num_classes)]
    predicted = np.concatenate([p.ravel() for p in predictions]).astype(int)
    actual = np.concatenate([(t > 0).astype(int).ravel() if num_classes == 1 else t.ravel() for t in truths])
    index = np.random.default_rng(seed).choice(len(actual), size=min(pixels, len(actual)), replace=False)
    index.sort()
    return pd.DataFrame({"actual": [names[i] for i in actual[index]], "predicted": [names[i] for i in predicted[index]]})


def per_image_table(rows: pd.DataFrame, per_image: list[dict[str, float]], *, threshold: float) -> pd.DataFrame:
    """id, group, foreground_fraction, threshold, iou, dice, boundary_f per image (plots/evaluate/per_image.csv)."""
    table = rows[["id", "group", "foreground_fraction"]].copy()
    table["threshold"] = threshold
    for key in ("iou", "dice", "boundary_f"):
        table[key] = [round(row[key], 6) for row in per_image]
    return table
