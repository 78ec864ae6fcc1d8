"""Prediction with a trained model, the one path that evaluate and segpipe.predict share.

An image goes in as uint8 (H, W, C) at its own size; it is resized to the model's input size exactly as
training resized it (`resize_image`), scaled to [0, 1], and the model's probabilities are resized
(bilinear) back to the image's size. `to_class_ids` is the one rule from probabilities to a mask.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from segpipe.image_io import apply_orientation, exif_orientation, image_to_array, open_image
from segpipe.progress import progress


def resize_image(image, image_size: tuple[int, int]):
    """A uint8 image (H, W, C) to the model's size: bilinear with antialias, back to uint8.

    The one definition of input resizing, shared by the training pipeline and prediction, so a model
    sees new images exactly as it saw its training images."""
    resized = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def to_unit_range(image):
    """uint8 -> float32 in [0, 1], the model's input range."""
    return tf.cast(image, tf.float32) / 255.0


def model_inputs(images: list[np.ndarray], *, image_size: tuple[int, int]) -> tf.Tensor:
    """uint8 images (H, W, C) of any sizes -> float32 batch (N, height, width, C) in [0, 1]."""
    return to_unit_range(tf.stack([resize_image(image, image_size) for image in images]))


def load_image(path: Path, *, channels: int) -> np.ndarray:
    """An image file as uint8 (H, W, channels), upright (EXIF orientation applied), in any format that
    convert-to-png reads."""
    try:
        im = open_image(path)
    except ValueError as err:
        raise ValueError(f"'{path}': {err}; remove or replace the file.") from None
    array = image_to_array(apply_orientation(im, exif_orientation(im)), image_mode="L" if channels == 1 else "RGB")
    return array[..., None] if array.ndim == 2 else array


def predict_probabilities(model: keras.Model, images: list[np.ndarray], *, batch_size: int) -> list[np.ndarray]:
    """Probabilities at each image's own size.

    Args:
        model: a trained segpipe model (input float32 in [0, 1]).
        images: uint8 arrays (H, W, C), C the model's input channels; sizes may differ.
        batch_size: images per model call.

    Returns:
        float32 arrays (H, W, K) in [0, 1], one per image: K = 1 (binary) or num_classes (softmax).
    """
    image_size = tuple(model.input_shape[1:3])
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        probabilities = model(model_inputs(chunk, image_size=image_size), training=False)
        out += [tf.image.resize(p, image.shape[:2], method="bilinear").numpy()
                for p, image in zip(probabilities, chunk)]
    return out


def predict_files(model: keras.Model, paths: list[Path], *, batch_size: int,
                  desc: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image, probabilities at its own size) per file, in order: `batch_size` files are read and predicted
    at a time (memory stays one batch), with progress named `desc`."""
    channels = model.input_shape[-1]
    batches = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    for batch in progress(batches, desc=desc, unit="batch"):
        images = [load_image(path, channels=channels) for path in batch]
        yield from zip(images, predict_probabilities(model, images, batch_size=batch_size))


def to_class_ids(probabilities: np.ndarray, *, threshold: float) -> np.ndarray:
    """Probabilities (H, W, K) -> class ids (H, W), uint8: binary (K = 1) foreground where p >= threshold,
    multi-class the most probable class (no threshold)."""
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] >= threshold).astype(np.uint8)
    return np.argmax(probabilities, axis=-1).astype(np.uint8)
