"""The pilot of `train.input: auto` (segpipe/input_mode.py): when resizing and patches are both possible, a
short run of each, scored the way evaluate scores, decides which one the rest of the training goes on with.

Each candidate gets the same share of the training: `train.input_pilot` x the time budget (or x the epochs,
without one), split evenly. The score is evaluate's headline at native resolution, without test-time
augmentation: the IoU of the positive class at threshold 0.5 (binary) or the mean IoU over the classes,
void excluded (multi-class), pooled over the validation images (a seeded sample of at most
PILOT_VALIDATION_IMAGES). The network-size validation of each epoch cannot decide: resized predictions
lose most between the network's output and the native mask (small objects, thin structures).
A tie goes to resize, the cheaper input to train and to predict.
"""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from segpipe.image_io import IGNORE_ID, read_png
from segpipe.inference import predict_files, to_class_ids
from segpipe.metrics import class_confusion, class_scores
from segpipe.parallel import read_ahead

PILOT_VALIDATION_IMAGES = 64
PILOT_TILE_OVERLAP = 0.5  # evaluate.tile_overlap's default


def pilot_length(*, pilot: float, candidates: int, max_minutes: float, epochs: int) -> tuple[float, int]:
    """(minutes, epochs) of each candidate's pilot: with a time budget `pilot` x max_minutes split evenly
    (epochs: the budget plans them); without one, `pilot` x epochs split evenly, at least one epoch."""
    if max_minutes:
        return max_minutes * pilot / candidates, epochs
    return 0.0, max(1, round(epochs * pilot / candidates))


def native_score(model: keras.Model, rows: pd.DataFrame, *, input_mode: str, num_classes: int, batch_size: int,
                 seed: int) -> tuple[float, int]:
    """(score, images scored): the model's pooled IoU (binary, threshold 0.5) or mean IoU (multi-class) on
    `rows` at native resolution, as evaluate predicts them (module docstring)."""
    if len(rows) > PILOT_VALIDATION_IMAGES:
        rows = rows.sample(n=PILOT_VALIDATION_IMAGES, random_state=seed).sort_values("id")
    classes = max(2, num_classes)
    matrix = np.zeros((classes, classes), np.int64)
    predictions = predict_files(model, list(rows["image_path"]), input_mode=input_mode, batch_size=batch_size,
                                tile_overlap=PILOT_TILE_OVERLAP, tta="none", desc=f"pilot {input_mode}: scoring")
    for (_, probabilities), truth in zip(predictions, read_ahead(read_png, rows["mask_path"]), strict=True):
        labelled = truth != IGNORE_ID
        predicted = to_class_ids(probabilities, threshold=0.5)
        matrix += class_confusion(predicted[labelled], truth[labelled], num_classes=classes)
    scores = class_scores(matrix)
    if num_classes == 1:
        foreground = scores["iou_per_class"][1]
        return (1.0 if foreground is None else foreground), len(rows)
    return scores["mean_iou"], len(rows)


def pick(scores: dict[str, float]) -> str:
    """The candidate with the highest score; a tie goes to resize (module docstring)."""
    best = max(scores.values())
    return "resize" if scores.get("resize") == best else max(scores, key=scores.get)
