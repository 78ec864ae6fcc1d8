"""Random crops and flips inside the tf.data graph, keyed by a stateless seed: the same key gives the same
crop on every machine, in any order (segpipe/data/input_pipeline.py draws the keys).

`Patches` says how training cuts native-resolution patches: a share of them centred on a foreground pixel
(multi-class: on a class drawn uniformly among those the image holds), the rest placed uniformly, each
crop side scaled by a log-uniform factor in `scale_range`, then resized to the input; images smaller than a
crop are padded with void in the mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from segpipe.data.image_io import IGNORE_ID


@dataclass(frozen=True)
class Patches:
    """How training crops patches from native-resolution images (module docstring)."""
    foreground_share: float            # train.patch_foreground_share
    scale_range: tuple[float, float]   # train.patch_scale_range
    num_classes: int


def augment_online(image, mask, key):
    """Random horizontal/vertical flips and 90-degree turns, identical for image and mask."""
    keys = tf.random.experimental.stateless_split(key, num=3)
    both = tf.concat([image, mask], axis=-1)
    both = tf.image.stateless_random_flip_left_right(both, seed=keys[0])
    both = tf.image.stateless_random_flip_up_down(both, seed=keys[1])
    turns = tf.random.stateless_uniform([], seed=keys[2], maxval=4, dtype=tf.int32)
    if image.shape[0] == image.shape[1]:  # 90-degree turns keep the shape only for square inputs
        both = tf.image.rot90(both, k=turns)
    return both[..., :-1], both[..., -1:]


def _uniform_int(key, maxval):
    """A stateless integer in [0, maxval) (0 when maxval is 0)."""
    return tf.random.stateless_uniform([], seed=key, maxval=tf.maximum(maxval, 1), dtype=tf.int32)


def _patch_centre(mask, key, *, num_classes: int):
    """(found, y, x): a random labelled pixel of a class the mask holds (binary: the foreground; multi-class:
    a class drawn uniformly among those present), or found = False when there is none."""
    keys = tf.random.experimental.stateless_split(key, num=2)
    if num_classes == 1:
        target = tf.constant(1, tf.uint8)
    else:
        counts = tf.math.bincount(tf.cast(tf.reshape(mask, [-1]), tf.int32), minlength=256, maxlength=256)
        present = tf.cast(tf.where(counts[:num_classes] > 0)[:, 0], tf.uint8)
        target = tf.concat([present, [IGNORE_ID]], axis=0)[_uniform_int(keys[0], tf.size(present))]
    pixels = tf.cast(tf.where(tf.equal(mask[..., 0], target) & (target != IGNORE_ID)), tf.int32)
    count = tf.shape(pixels)[0]
    pixel = tf.concat([pixels, [[0, 0]]], axis=0)[_uniform_int(keys[1], count)]
    return count > 0, pixel[0], pixel[1]


def random_patch(image, mask, key, *, image_size: tuple[int, int], patches: Patches):
    """A random crop of an image and its mask at native resolution, resized to `image_size` (module docstring)."""
    keys = tf.random.experimental.stateless_split(key, num=5)
    low, high = (math.log(s) for s in patches.scale_range)
    scale = tf.exp(tf.random.stateless_uniform([], seed=keys[0], minval=low, maxval=high))
    crop = [tf.maximum(1, tf.cast(tf.round(size * scale), tf.int32)) for size in image_size]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    padding = [[0, tf.maximum(0, crop[0] - height)], [0, tf.maximum(0, crop[1] - width)], [0, 0]]
    image, mask = tf.pad(image, padding), tf.pad(mask, padding, constant_values=IGNORE_ID)
    room = [tf.shape(image)[0] - crop[0], tf.shape(image)[1] - crop[1]]  # largest top-left corner
    found, y, x = _patch_centre(mask, keys[1], num_classes=patches.num_classes)
    centred = found & (tf.random.stateless_uniform([], seed=keys[2]) < patches.foreground_share)
    top = tf.where(centred, tf.clip_by_value(y - crop[0] // 2, 0, room[0]), _uniform_int(keys[3], room[0] + 1))
    left = tf.where(centred, tf.clip_by_value(x - crop[1] // 2, 0, room[1]), _uniform_int(keys[4], room[1] + 1))
    image = image[top:top + crop[0], left:left + crop[1]]
    mask = mask[top:top + crop[0], left:left + crop[1]]
    image = tf.cast(tf.round(tf.clip_by_value(tf.image.resize(image, image_size, method="bilinear"), 0, 255)), tf.uint8)
    return image, tf.cast(tf.image.resize(mask, image_size, method="nearest"), tf.uint8)
