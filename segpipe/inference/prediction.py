"""Prediction with a trained model: the one path that training's export, evaluate and segpipe.inference.predict share.

An image goes in as uint8 (H, W, C) at its own size and comes out as probabilities (H, W, K) at that size,
in one of two ways, the way the model was trained (`train.input`, recorded in models/inference.json):
- `resize`: the image is resized to the model's input size exactly as training resized it (`resize_image`),
  and the probabilities are resized (bilinear) back; `predict_files` sends `batch_size` images per model
  call.
- `patches`: sliding windows of the model's input size at native resolution. Windows overlap by
  `tile_overlap` (a share of the window), images smaller than a window are zero-padded (as training pads
  its crops), and each window's probabilities are blended with a Gaussian weight (sigma = 1/8 of the
  window, as nnU-Net does), so window borders, where the network sees the least context, count the least
  and no seams show. Windows go through the model `batch_size` at a time: memory is one batch of windows
  plus two image-sized float32 arrays, whatever the image size.
Test-time augmentation (`tta`) averages the probabilities over flips (and 90-degree turns) of each window.

Everything is TensorFlow ops in one `tf.function` per model (`prediction_function`), so the SavedModel's
serving signature (segpipe/training/model.py) is this very code; `predict_files` batches the same ops
(`resize_image`, `_averaged`, the bilinear resize back) for resized images. `to_class_ids` is the one rule
from probabilities to a mask.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from segpipe.core.parallel import read_ahead
from segpipe.core.progress import progress
from segpipe.core.schema import TTA_MODES
from segpipe.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    apply_orientation,
    exif_orientation,
    image_to_array,
    open_image,
)

INPUT_MODES = ("resize", "patches")
# Each test-time transform is (quarter turns, mirror left-right); `flips` are the dihedral group's four
# elements without odd turns (identity, left-right, up-down = left-right after a half turn, half turn).
TTA_TRANSFORMS = {"none": [(0, False)],
                  "flips": [(0, False), (0, True), (2, False), (2, True)],
                  "flips_rotations": [(turns, mirror) for turns in range(4) for mirror in (False, True)]}
assert tuple(TTA_TRANSFORMS) == TTA_MODES


def resize_image(image, image_size: tuple[int, int]):
    """A uint8 image (H, W, C) to the model's size: bilinear with antialias, back to uint8.

    The one definition of input resizing, shared by the training pipeline and prediction, so a model
    sees new images exactly as it saw its training images."""
    resized = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def to_unit_range(image):
    """uint8 -> float32 in [0, 1], the model's input range."""
    return tf.cast(image, tf.float32) / 255.0


def load_image(path: Path, *, channels: int, white_level: float | None = None, page: int = 0,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_pixels_name: str = "--max-image-pixels") -> np.ndarray:
    """Page `page` of an image file as uint8 (H, W, channels), upright (EXIF orientation applied), in any
    format that convert-to-png reads; images of more than 8 bits map `white_level` (the training data's)
    to 255. Larger than `max_pixels`: an error naming `max_pixels_name` (image_io.open_image)."""
    try:
        im = open_image(path, page=page, max_pixels=max_pixels, max_pixels_name=max_pixels_name)
    except ValueError as err:
        raise ValueError(f"'{path}': {err}; remove or replace the file.") from None
    array = image_to_array(apply_orientation(im, exif_orientation(im)), image_mode="L" if channels == 1 else "RGB",
                           white_level=white_level)
    return array[..., None] if array.ndim == 2 else array


def read_input_mode(path: Path) -> str:
    """The input mode (`resize` | `patches`) that train recorded in its inference JSON (models/inference.json)."""
    try:
        mode = json.loads(Path(path).read_text())["input"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"'{path}' is missing or unreadable; it records how the model takes images (resize or "
                         "patches): rerun the train stage (dvc repro).") from None
    if mode not in INPUT_MODES:
        raise ValueError(f"'{path}' says input {mode!r}; expected one of {list(INPUT_MODES)}: rerun the train stage.")
    return mode


def check_tta(tta: str, *, input_size: tuple[int, int], param: str = "evaluate.tta") -> None:
    """A ValueError naming `param` for an unknown TTA mode, or turns on a non-square model input."""
    if tta not in TTA_MODES:
        raise ValueError(f"param '{param}' must be one of {list(TTA_MODES)}, got {tta!r}.")
    if tta == "flips_rotations" and input_size[0] != input_size[1]:
        raise ValueError(f"param '{param}' is flips_rotations, but the model's input {input_size[0]}x{input_size[1]} "
                         "is not square and a 90-degree turn would change its shape; use flips, or train a square "
                         "input (a square train.image_size and train.keep_aspect: false).")


def _averaged(model: keras.Model, batch, *, tta: str):
    """Probabilities of a float32 batch (B, h, w, C), averaged over the TTA transforms (each undone)."""
    transforms = TTA_TRANSFORMS[tta]
    if len(transforms) == 1:
        return model(batch, training=False)
    seen = []
    for turns, mirror in transforms:
        images = tf.image.flip_left_right(batch) if mirror else batch
        seen.append(tf.image.rot90(images, turns) if turns else images)
    # One model call per transform, in a loop that traces the model once: a Python loop would put a copy of
    # the network's graph per transform into every traced function (8 for flips_rotations), which made the
    # SavedModel export and the first prediction several times slower. The transforms of one set share the
    # batch's shape (turns by 180 degrees, or square inputs), so they stack; one at a time keeps the memory
    # of a model call what it was.
    outputs = tf.map_fn(lambda images: model(images, training=False), tf.stack(seen), parallel_iterations=1,
                        fn_output_signature=tf.float32)
    total = 0.0
    for index, (turns, mirror) in enumerate(transforms):
        probabilities = tf.image.rot90(outputs[index], 4 - turns) if turns else outputs[index]
        total += tf.image.flip_left_right(probabilities) if mirror else probabilities
    return total / len(transforms)


def window_starts(length, window: int, overlap: float):
    """Start offsets (int32) of windows of `window` pixels that cover `length` >= window pixels, spread
    evenly from 0 to length - window, with consecutive windows overlapping by at least `overlap`."""
    stride = max(1, int(window * (1.0 - overlap)))
    span = tf.cast(length - window, tf.float32)
    count = tf.cast(tf.math.ceil(span / stride), tf.int32) + 1
    return tf.cast(tf.round(tf.linspace(0.0, span, count)), tf.int32)


def gaussian_weights(window: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 blending weights: a Gaussian with sigma = 1/8 of the window, 1 at the centre, floored
    at 1e-3 so that the image's own corners, which one window's corner alone covers, keep a weight."""
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in window]
    return np.maximum(np.outer(*axes), 1e-3).astype(np.float32)


def sliding_window(model: keras.Model, image, *, tile_overlap: float, tta: str, batch_size: int):
    """Probabilities (H, W, K) of a uint8 image (H, W, C) by blended sliding windows (module docstring)."""
    window = tuple(model.input_shape[1:3])
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    padded = tf.pad(to_unit_range(image), [[0, tf.maximum(0, window[0] - height)],
                                           [0, tf.maximum(0, window[1] - width)], [0, 0]])
    starts_y = window_starts(tf.shape(padded)[0], window[0], tile_overlap)
    starts_x = window_starts(tf.shape(padded)[1], window[1], tile_overlap)
    grid_y, grid_x = tf.meshgrid(starts_y, starts_x, indexing="ij")
    starts = tf.reshape(tf.stack([grid_y, grid_x], axis=-1), [-1, 2])
    # (h, w, 2) pixel offsets inside a window: start + offsets indexes a window's pixels in the image.
    offsets = tf.stack(tf.meshgrid(tf.range(window[0]), tf.range(window[1]), indexing="ij"), axis=-1)
    weight = tf.constant(gaussian_weights(window))[..., None]
    channels = max(1, int(model.output_shape[-1]))
    total = tf.zeros(tf.concat([tf.shape(padded)[:2], [channels]], axis=0))
    weights = tf.zeros(tf.concat([tf.shape(padded)[:2], [1]], axis=0))
    num_windows = tf.shape(starts)[0]
    for first in tf.range(0, num_windows, batch_size):
        indices = starts[first:first + batch_size][:, None, None, :] + offsets[None]
        probabilities = _averaged(model, tf.gather_nd(padded, indices), tta=tta)
        total = tf.tensor_scatter_nd_add(total, indices, probabilities * weight)
        weights = tf.tensor_scatter_nd_add(weights, indices, tf.broadcast_to(weight, tf.shape(probabilities[..., :1])))
    return (total / weights)[:height, :width]


def resized_prediction(model: keras.Model, image, *, tta: str):
    """Probabilities (H, W, K) of a uint8 image (H, W, C) predicted at the model's input size, resized back."""
    batch = to_unit_range(resize_image(image, tuple(model.input_shape[1:3])))[None]
    return tf.image.resize(_averaged(model, batch, tta=tta)[0], tf.shape(image)[:2], method="bilinear")


def prediction_function(model: keras.Model, *, input_mode: str, tile_overlap: float, tta: str,
                        batch_size: int) -> Callable:
    """A tf.function: uint8 image (H, W, C) of any size -> float32 probabilities (H, W, K), traced once."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {list(INPUT_MODES)}, got {input_mode!r}; retrain the model "
                         "(models/inference.json records how it was trained).")
    check_tta(tta, input_size=tuple(model.input_shape[1:3]))
    if not 0 <= tile_overlap < 1:
        raise ValueError(f"param 'evaluate.tile_overlap' must be in [0, 1), got {tile_overlap}.")
    signature = [tf.TensorSpec([None, None, model.input_shape[-1]], tf.uint8, name="image")]
    if input_mode == "patches":
        return tf.function(lambda image: sliding_window(model, image, tile_overlap=tile_overlap, tta=tta,
                                                        batch_size=batch_size), input_signature=signature)
    return tf.function(lambda image: resized_prediction(model, image, tta=tta), input_signature=signature)


def predict_files(model: keras.Model, paths: list[Path], *, input_mode: str, tile_overlap: float, tta: str,
                  batch_size: int, desc: str, white_level: float | None = None, pages: list[int] | None = None,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image, probabilities at its own size) per file, in order, with progress named `desc`. The next files
    are decoded in threads while the model predicts (`read_ahead`): a few images in memory, whatever their
    number. `batch_size`: windows (patches) or resized images (resize) per model call; `white_level`: see
    load_image; `pages`: the page of each file (multi-page TIFF stacks), else the first; `max_pixels`: larger
    images are an error."""
    # Checks the settings too; resized images go through `_resized_in_batches` instead.
    predict = prediction_function(model, input_mode=input_mode, tile_overlap=tile_overlap, tta=tta,
                                  batch_size=batch_size)
    channels = model.input_shape[-1]
    files = list(zip(paths, pages or [0] * len(paths), strict=True))
    images = progress(read_ahead(lambda file: load_image(file[0], channels=channels, white_level=white_level,
                                                         page=file[1], max_pixels=max_pixels), files),
                      desc=desc, unit="image", total=len(files))
    if input_mode == "resize":
        yield from _resized_in_batches(model, images, tta=tta, batch_size=batch_size)
        return
    for image in images:
        yield image, predict(tf.constant(image)).numpy()


def _resized_in_batches(model: keras.Model, images: Iterator[np.ndarray], *, tta: str,
                        batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`resized_prediction`'s result for each image, `batch_size` resized images per model call: one image
    per call leaves a GPU idle between calls. Holds `batch_size` images at their own size."""
    height, width, channels = model.input_shape[1:]
    shrink = tf.function(lambda image: resize_image(image, (height, width)),
                         input_signature=[tf.TensorSpec([None, None, channels], tf.uint8)])
    predict = tf.function(lambda batch: _averaged(model, to_unit_range(batch), tta=tta),
                          input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8)])
    grow = tf.function(lambda probabilities, size: tf.image.resize(probabilities, size, method="bilinear"),
                       input_signature=[tf.TensorSpec([height, width, None], tf.float32),
                                        tf.TensorSpec([2], tf.int32)])
    images = iter(images)
    while chunk := list(itertools.islice(images, batch_size)):
        outputs = predict(tf.stack([shrink(tf.constant(image)) for image in chunk]))
        for image, probabilities in zip(chunk, outputs, strict=True):
            yield image, grow(probabilities, tf.constant(image.shape[:2], tf.int32)).numpy()


def to_class_ids(probabilities: np.ndarray, *, threshold: float) -> np.ndarray:
    """Probabilities (H, W, K) -> class ids (H, W), uint8: binary (K = 1) foreground where p >= threshold,
    multi-class the most probable class (no threshold)."""
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] >= threshold).astype(np.uint8)
    return np.argmax(probabilities, axis=-1).astype(np.uint8)
