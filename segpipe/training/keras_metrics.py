"""Metrics tracked during training (Keras stateful metrics, pooled over all pixels of the epoch).

Names are the same for binary and multi-class so `train.monitor: valid_iou` works for both:
- binary (one sigmoid channel): iou, dice, precision, recall of the foreground at `threshold`;
- multi-class (softmax): iou = mean IoU over the classes (background included), dice = mean Dice,
  both from the argmax prediction; a class absent from both truth and prediction in the whole epoch
  is left out of the mean (as evaluate does), not counted as 0 or 1.
Pooled means the confusion counts of every pixel of every batch are summed before the ratio, the
standard definition (per-image averages come from the evaluate stage). Void pixels (id 255) are not
counted. A binary ratio with an empty denominator (e.g. no foreground predicted and none present)
counts as 0 here.
"""
from __future__ import annotations

import keras
from keras import ops

from segpipe.data.image_io import IGNORE_ID


class ConfusionScore(keras.metrics.Metric):
    """One score from per-class confusion counts (tp, fp, fn) accumulated over batches."""

    def __init__(self, score: str, *, num_classes: int, threshold: float = 0.5, name: str | None = None, **kwargs):
        super().__init__(name=name or score, **kwargs)
        if score not in ("iou", "dice", "precision", "recall"):
            raise ValueError(f"unknown score {score!r}; expected iou, dice, precision or recall.")
        self.score, self.num_classes, self.threshold = score, num_classes, threshold
        classes = 1 if num_classes == 1 else num_classes
        self.counts = self.add_variable(shape=(3, classes), initializer="zeros", dtype="float32", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ids = ops.cast(y_true[..., 0], "int32")
        labelled = ops.cast(ops.not_equal(ids, IGNORE_ID), "float32")[..., None]
        ids = ops.where(ops.equal(ids, IGNORE_ID), 0, ids)
        if self.num_classes == 1:
            truth = ops.cast(ids > 0, "float32")[..., None] * labelled
            predicted = ops.cast(y_pred >= self.threshold, "float32") * labelled
        else:
            truth = ops.one_hot(ids, self.num_classes, dtype="float32") * labelled
            predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes, dtype="float32") * labelled
        axes = tuple(range(len(predicted.shape) - 1))
        tp = ops.sum(truth * predicted, axis=axes)
        fp = ops.sum((1.0 - truth) * predicted, axis=axes)
        fn = ops.sum(truth * (1.0 - predicted), axis=axes)
        self.counts.assign_add(ops.stack([tp, fp, fn]))

    def result(self):
        tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
        numerator, denominator = {
            "iou": (tp, tp + fp + fn), "dice": (2.0 * tp, 2.0 * tp + fp + fn),
            "precision": (tp, tp + fp), "recall": (tp, tp + fn)}[self.score]
        ratio = ops.where(denominator > 0, numerator / ops.maximum(denominator, 1.0), 0.0)
        if self.num_classes == 1:
            return ratio[0]
        seen = ops.cast(tp + fp + fn > 0, "float32")  # present in truth or prediction this epoch
        return ops.sum(ratio * seen) / ops.maximum(ops.sum(seen), 1.0)

    def reset_state(self):
        self.counts.assign(ops.zeros_like(self.counts))

    def get_config(self):
        return {**super().get_config(), "score": self.score, "num_classes": self.num_classes,
                "threshold": self.threshold}


def training_metrics(*, num_classes: int, threshold: float) -> list[keras.metrics.Metric]:
    """The metrics compiled into the model: iou, dice (+ precision, recall for binary)."""
    scores = ("iou", "dice", "precision", "recall") if num_classes == 1 else ("iou", "dice")
    return [ConfusionScore(score, num_classes=num_classes, threshold=threshold) for score in scores]
