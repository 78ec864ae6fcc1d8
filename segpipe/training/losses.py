"""Segmentation losses, and their weighted sum from params (`train.loss: {bce: 1.0, dice: 1.0}`).

Every loss takes `y_true` as class ids (batch, H, W, 1), any int or float dtype, and `y_pred` as
probabilities (batch, H, W, C) from the model's float32 head: C = 1 (sigmoid, binary) or
C = num_classes (softmax). Binary losses are about the foreground (class 1); multi-class losses
one-hot the ids and average over the classes. Void pixels (id 255, segpipe.data.image_io.IGNORE_ID) take
no part in any loss: they weigh 0 in the per-pixel means and are left out of the Dice/Jaccard sums.

Class weights (`train.class_weights`) scale each pixel's cross-entropy and focal term by the weight of
its true class; per-pixel means still divide by the number of labelled pixels, so weights whose
pixel-weighted mean is 1 (as `class_weights_from_frequencies` makes them) keep the loss's scale. Dice
and Jaccard already average over classes, so a rare class counts as much as a common one there.

Cross-entropy and focal loss are Keras' own. Dice and Jaccard are ours: Keras' Dice smooths by 1e-7
and pools all classes into one ratio (a rare class then hardly counts), and Keras has no Jaccard loss.

Dice and Jaccard are "soft" (computed on probabilities) and pooled over the whole batch and all
pixels before the ratio, with a smoothing of 1: pooling keeps them defined and stable when an image
has no foreground, which per-image ratios are not.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from segpipe.core.schema import LOSSES
from segpipe.data.image_io import IGNORE_ID

SMOOTH = 1.0


def _ids(y_true):
    """(class ids with void as 0, int32 (B, H, W); labelled-pixel mask, float32 (B, H, W))."""
    ids = ops.cast(y_true[..., 0], "int32")
    void = ops.equal(ids, IGNORE_ID)
    return ops.where(void, 0, ids), ops.cast(ops.logical_not(void), "float32")


def _one_hot(ids, y_pred):
    """Class ids (B, H, W) -> float targets of y_pred's shape (binary: the ids themselves as 0/1)."""
    channels = y_pred.shape[-1]
    if channels == 1:
        return ops.cast(ids, y_pred.dtype)[..., None]
    return ops.one_hot(ids, channels, dtype=y_pred.dtype)


def _pixel_mean(per_pixel, ids, labelled, class_weights):
    """Mean of a per-pixel loss (B, H, W) over the labelled pixels, each scaled by its class's weight."""
    weights = labelled if class_weights is None else labelled * ops.take(class_weights, ids)
    return ops.sum(ops.cast(per_pixel, "float32") * weights) / ops.maximum(ops.sum(labelled), 1.0)


def cross_entropy(y_true, y_pred, *, class_weights=None):
    """Keras' binary cross-entropy for one sigmoid channel, its sparse categorical one for softmax outputs;
    both use the logits behind the model's sigmoid/softmax, which is more exact than clipped probabilities."""
    ids, labelled = _ids(y_true)
    if y_pred.shape[-1] == 1:
        per_pixel = keras.losses.binary_crossentropy(_one_hot(ids, y_pred), y_pred)
    else:
        per_pixel = keras.losses.sparse_categorical_crossentropy(ids, y_pred)
    return _pixel_mean(per_pixel, ids, labelled, class_weights)


def _overlaps(y_true, y_pred):
    """Per-class (intersection, sum of truth, sum of prediction) over labelled pixels, pooled over batch and pixels."""
    p = ops.cast(y_pred, "float32")
    ids, labelled = _ids(y_true)
    t = _one_hot(ids, p) * labelled[..., None]
    p = p * labelled[..., None]
    axes = tuple(range(len(p.shape) - 1))
    return ops.sum(t * p, axis=axes), ops.sum(t, axis=axes), ops.sum(p, axis=axes)


def dice_loss(y_true, y_pred):
    """1 - soft Dice; multi-class: mean over classes of (1 - Dice of that class)."""
    intersection, truth, predicted = _overlaps(y_true, y_pred)
    dice = (2.0 * intersection + SMOOTH) / (truth + predicted + SMOOTH)
    return 1.0 - ops.mean(dice)


def jaccard_loss(y_true, y_pred):
    """1 - soft IoU (Jaccard); multi-class: mean over classes."""
    intersection, truth, predicted = _overlaps(y_true, y_pred)
    iou = (intersection + SMOOTH) / (truth + predicted - intersection + SMOOTH)
    return 1.0 - ops.mean(iou)


def focal_loss(y_true, y_pred, *, gamma: float = 2.0, class_weights=None):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)**gamma, so confidently right pixels
    count less and hard ones (thin structures, borders) more. Keras' focal losses with alpha = 1 (class
    weighting, if any, comes from `class_weights`); the categorical one wants one-hot targets."""
    ids, labelled = _ids(y_true)
    if y_pred.shape[-1] == 1:
        per_pixel = keras.losses.binary_focal_crossentropy(_one_hot(ids, y_pred), y_pred, gamma=gamma)
    else:
        per_pixel = keras.losses.categorical_focal_crossentropy(_one_hot(ids, y_pred), y_pred, alpha=1.0, gamma=gamma)
    return _pixel_mean(per_pixel, ids, labelled, class_weights)


def class_weights_from_frequencies(pixels_per_class) -> list[float]:
    """`train.class_weights: auto`: weight_c proportional to 1 / sqrt(frequency_c), scaled so that the
    pixel-weighted mean weight is 1 (the loss keeps its scale).

    The square root is the middle ground between no weighting and inverse frequency (median-frequency
    balancing), whose weights for a class at 0.1% of the pixels reach hundreds and make training noisy.
    A class with no training pixel gets the largest weight of the others (it cannot contribute anyway)."""
    counts = np.asarray(pixels_per_class, np.float64)
    if counts.sum() <= 0:
        raise ValueError("class weights: the training masks have no labelled pixel.")
    frequency = counts / counts.sum()
    present = frequency > 0
    weights = np.zeros_like(frequency)
    weights[present] = 1.0 / np.sqrt(frequency[present])
    weights[~present] = weights[present].max()
    weights /= float(np.sum(frequency * weights))
    return [round(float(w), 6) for w in weights]


def resolve_class_weights(setting, *, pixels_per_class, num_classes: int) -> list[float] | None:
    """`train.class_weights` as a list (None = unweighted): `auto` from the training pixels per class for
    multi-class tasks and none for binary ones (their Dice term already balances the foreground, and the
    binary recipe was measured without weights); a given list is checked to have one weight per class
    (binary: background, foreground)."""
    expected = max(2, num_classes)
    if setting is None or (setting == "auto" and num_classes == 1):
        return None
    if setting == "auto":
        return class_weights_from_frequencies(list(pixels_per_class)[:expected])
    if len(setting) != expected:
        raise ValueError(f"param 'train.class_weights' has {len(setting)} weight(s) but there are {expected} classes"
                         + (" (background, foreground)" if num_classes == 1 else "") + "; give one per class, "
                         "null or auto.")
    return [float(w) for w in setting]


def make_loss(*, weights: dict[str, float], focal_gamma: float = 2.0, class_weights: list[float] | None = None):
    """The weighted sum of named losses, e.g. {"bce": 1.0, "dice": 1.0}.

    Names: bce (binary cross-entropy, or categorical for num_classes > 1), dice, jaccard, focal.
    `class_weights`: one per class (binary: background, foreground), applied to bce and focal.
    """
    unknown = sorted(set(weights) - set(LOSSES))
    if not weights or unknown:
        raise ValueError(f"param 'train.loss' must map loss names to weights, e.g. {{bce: 1.0, dice: 1.0}}; "
                         f"unknown {unknown or 'none given'}, valid names: {list(LOSSES)}.")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"param 'train.loss.{name}' must be a non-negative number, got {weight!r}.")
    table = None if class_weights is None else ops.convert_to_tensor(np.asarray(class_weights, np.float32))
    functions = {"bce": lambda t, p: cross_entropy(t, p, class_weights=table), "dice": dice_loss,
                 "jaccard": jaccard_loss, "focal": lambda t, p: focal_loss(t, p, gamma=focal_gamma,
                                                                           class_weights=table)}
    terms = [(functions[name], float(weight)) for name, weight in sorted(weights.items()) if weight > 0]
    if not terms:
        raise ValueError("param 'train.loss' has only zero weights; give at least one loss a positive weight.")

    def loss(y_true, y_pred):
        return sum(weight * function(y_true, y_pred) for function, weight in terms)

    loss.__name__ = "_".join(name for name in sorted(weights) if weights[name] > 0) + "_loss"
    return loss
