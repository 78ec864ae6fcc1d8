"""Segmentation losses, and their weighted sum from params (`train.loss: {bce: 1.0, dice: 1.0}`).

Every loss takes `y_true` as class ids (batch, H, W, 1), any int or float dtype, and `y_pred` as
probabilities (batch, H, W, C) from the model's float32 head: C = 1 (sigmoid, binary) or
C = num_classes (softmax). Binary losses are about the foreground (class 1); multi-class losses
one-hot the ids and average over the classes.

Cross-entropy and focal loss are Keras' own. Dice and Jaccard are ours: Keras' Dice smooths by 1e-7
and pools all classes into one ratio (a rare class then hardly counts), and Keras has no Jaccard loss.

Dice and Jaccard are "soft" (computed on probabilities) and pooled over the whole batch and all
pixels before the ratio, with a smoothing of 1: pooling keeps them defined and stable when an image
has no foreground, which per-image ratios are not.
"""
from __future__ import annotations

import keras
from keras import ops

from segpipe.schema import LOSSES

SMOOTH = 1.0


def _one_hot(y_true, y_pred):
    """Class ids -> float targets of y_pred's shape (binary: the ids themselves as 0/1)."""
    channels = y_pred.shape[-1]
    ids = ops.cast(y_true[..., 0], "int32")
    if channels == 1:
        return ops.cast(ids, y_pred.dtype)[..., None]
    return ops.one_hot(ids, channels, dtype=y_pred.dtype)


def cross_entropy(y_true, y_pred):
    """Keras' binary cross-entropy for one sigmoid channel, its sparse categorical one for softmax outputs;
    both use the logits behind the model's sigmoid/softmax, which is more exact than clipped probabilities."""
    if y_pred.shape[-1] == 1:
        return ops.mean(keras.losses.binary_crossentropy(_one_hot(y_true, y_pred), y_pred))
    return ops.mean(keras.losses.sparse_categorical_crossentropy(ops.cast(y_true, "int32"), y_pred))


def _overlaps(y_true, y_pred):
    """Per-class (intersection, sum of truth, sum of prediction), pooled over batch and pixels."""
    p = ops.cast(y_pred, "float32")
    t = _one_hot(y_true, p)
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


def focal_loss(y_true, y_pred, *, gamma: float = 2.0):
    """Focal loss (Lin et al. 2017) without class weighting: cross-entropy scaled by (1 - p_true)**gamma,
    so confidently right pixels count less and hard ones (thin structures, borders) more. Keras' focal
    losses with alpha = 1 (no class weighting); the categorical one wants one-hot targets."""
    if y_pred.shape[-1] == 1:
        return ops.mean(keras.losses.binary_focal_crossentropy(_one_hot(y_true, y_pred), y_pred, gamma=gamma))
    return ops.mean(keras.losses.categorical_focal_crossentropy(_one_hot(y_true, y_pred), y_pred, alpha=1.0,
                                                                gamma=gamma))


def make_loss(*, weights: dict[str, float], focal_gamma: float = 2.0):
    """The weighted sum of named losses, e.g. {"bce": 1.0, "dice": 1.0}.

    Names: bce (binary cross-entropy, or categorical for num_classes > 1), dice, jaccard, focal.
    """
    unknown = sorted(set(weights) - set(LOSSES))
    if not weights or unknown:
        raise ValueError(f"param 'train.loss' must map loss names to weights, e.g. {{bce: 1.0, dice: 1.0}}; "
                         f"unknown {unknown or 'none given'}, valid names: {list(LOSSES)}.")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"param 'train.loss.{name}' must be a non-negative number, got {weight!r}.")
    functions = {"bce": cross_entropy, "dice": dice_loss, "jaccard": jaccard_loss,
                 "focal": lambda t, p: focal_loss(t, p, gamma=focal_gamma)}
    terms = [(functions[name], float(weight)) for name, weight in sorted(weights.items()) if weight > 0]
    if not terms:
        raise ValueError("param 'train.loss' has only zero weights; give at least one loss a positive weight.")

    def loss(y_true, y_pred):
        return sum(weight * function(y_true, y_pred) for function, weight in terms)

    loss.__name__ = "_".join(name for name in sorted(weights) if weights[name] > 0) + "_loss"
    return loss
