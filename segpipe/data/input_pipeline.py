"""The tf.data input pipeline: CSV rows -> batches of (image, mask), used by train and evaluate.

Yields images as float32 in [0, 1], shape (batch, height, width, channels), and masks as uint8 class
ids, shape (batch, height, width, 1); the model casts the images to its compute dtype, so the same
pipeline feeds float32 and mixed-precision models. `batch_size` here is the GLOBAL batch: with a
distribution strategy pass per-replica batch x replicas.

Several workers (MultiWorkerMirroredStrategy) build the training stream with
`strategy.distribute_datasets_from_function`: worker w of W owns every W-th row of each subset (a
subset with fewer rows than workers is shared whole), decodes and caches only those, and fills its
slice of every global batch (slots w*B/W to (w+1)*B/W) with the subsets the single-worker stream
draws for those slots. Nothing is decoded to be dropped, and the memory cache holds 1/W of the data
on each worker. Validation batches are auto-sharded by DATA (every worker decodes the validation
rows; they are few).

Training (`training_dataset`) follows the split-balanced contract: one stream per subset, each
decoded, cached and visited in a new seeded order every pass, drawn by weight, then optional in-graph
flips/90-degree turns, batched and prefetched. It is infinite: pass `steps_per_epoch` to `model.fit`.

Two ways to fit images to the network's input (`train.input`, segpipe/training/input_mode.py picks for `auto`):
- resize: every image resized to `image_size` (bilinear, masks nearest) before the cache.
- patches (`Patches`, segpipe/data/crops.py): images stay at native resolution in the cache; each element
  is a random crop of `image_size` pixels x a scale drawn log-uniformly from `scale_range` (then resized to
  `image_size`),
  centred with probability `foreground_share` on a random pixel of a class the image holds (binary: the
  foreground; multi-class: a class drawn uniformly among those present, so rare classes get a fair share
  of crops), else placed uniformly. Images smaller than a crop are padded: zeros, masks void (255).
  Validation cuts each image into non-overlapping windows padded with void: every pixel is scored once,
  at native resolution, for the cost of one forward pass over the image (evaluate blends overlapping
  windows; segpipe/inference/prediction.py).

Reproducibility: element k of the training stream is a pure function of (seed, k). Every random
choice (which subset, the order of each pass over a subset, the flips and turns) comes from a
stateless op keyed by the seed and a position, never from a random-op state that iterators share.
That matters because Keras' fit makes two iterators over the dataset (one to build the model, one
to train), and the first keeps prefetching in the background: with tf.data's seeded
`shuffle(reshuffle_each_iteration=True)` it drew reshuffle seeds from the generator that the second
iterator then used, so the batch order depended on thread timing (a loaded machine trained on other
batches). It also lets a later phase or a resumed run start at any batch (`first_batch`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from segpipe.data import decoded_cache, input_plan
from segpipe.data.crops import Patches, augment_online, random_patch
from segpipe.data.image_io import IGNORE_ID
from segpipe.inference.prediction import resize_image, to_unit_range


def _decode(image_path, mask_path, *, image_size: tuple[int, int] | None, channels: int,
            decoded: tf.Variable | None = None):
    """uint8 image and mask, resized to `image_size`, or at native size when it is None (patches).
    `decoded`, when given, counts the pairs decoded (train logs it per worker)."""
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=channels)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    if decoded is not None:
        with tf.control_dependencies([decoded.assign_add(1)]):
            image = tf.identity(image)
    if image_size is None:
        return image, mask
    mask = tf.image.resize(mask, image_size, method="nearest")
    # Cached as uint8 (4x less memory than float32); normalised after the cache.
    return resize_image(image, image_size), tf.cast(mask, tf.uint8)


def _normalise(image, mask):
    return to_unit_range(image), mask


def _decoded(rows: pd.DataFrame, *, image_size: tuple[int, int] | None, channels: int,
             decoded: tf.Variable | None = None):
    """Decoded rows in CSV order, always: evaluation keeps row order, and the cached training table is
    indexed by row."""
    dataset = tf.data.Dataset.from_tensor_slices((rows["image_path"].to_numpy(str), rows["mask_path"].to_numpy(str)))
    return dataset.map(lambda i, m: _decode(i, m, image_size=image_size, channels=channels, decoded=decoded),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# What each stateless random stream is keyed by, besides the seed: distinct purposes never share numbers.
SUBSET_CHOICE, PASS_ORDER, ONLINE_AUGMENT, PATCH = 1, 2, 3, 4


def _key(seed: int, *path):
    """A stateless-RNG seed (int64 vector of 2) for `seed` and a path of integers (scalars or tensors)."""
    key = tf.constant([seed, 0], tf.int64)
    for value in path:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def _pass_order(num_rows: int, key) -> tf.Tensor:
    """A permutation of range(num_rows) (int32), the same for the same key."""
    return tf.argsort(tf.random.stateless_uniform([num_rows], seed=key), stable=True)


def _subset_stream(rows: pd.DataFrame, *, index: int, seed: int, first_element: int, image_size, channels: int,
                   cache: bool, deterministic: bool, worker: tuple[int, int] = (0, 1),
                   decoded: tf.Variable | None = None, disk_cache: Path | None = None) -> tf.data.Dataset:
    """Rows of one subset, endlessly, pass p in the order `_pass_order(key(seed, index, p))`, from element
    `first_element` on. With `cache`, the decoded subset is kept in memory as one (n, H, W, C) element and
    each pass slices it; with `disk_cache`, each element is read from its file in that folder
    (segpipe/data/decoded_cache.py), written first where missing; else each element is decoded from its PNGs.
    All give the same sequence. `worker` (w, W): the rows are worker w's share of the subset, and its
    passes are keyed by w too."""
    num_rows = len(rows)
    first_pass, skip = divmod(first_element, num_rows)
    worker_key = [worker[0]] if worker[1] > 1 else []  # one worker: the single-machine stream, unchanged
    orders = tf.data.Dataset.counter(start=first_pass).map(
        lambda p: _pass_order(num_rows, _key(seed, PASS_ORDER, index, p, *worker_key)))
    if cache and image_size is None:
        # Native sizes differ: the table is padded to the largest, and each row is cut back to its own size.
        sized = _decoded(rows, image_size=None, channels=channels, decoded=decoded).map(
            lambda i, m: (i, m, tf.shape(i)[:2]))
        table = sized.padded_batch(num_rows, padding_values=(tf.constant(0, tf.uint8), tf.constant(
            IGNORE_ID, tf.uint8), 0)).cache().repeat()
        stream = tf.data.Dataset.zip(orders, table).flat_map(
            lambda order, decoded: tf.data.Dataset.from_tensor_slices(order).map(
                lambda j: (decoded[0][j, :decoded[2][j, 0], :decoded[2][j, 1]],
                           decoded[1][j, :decoded[2][j, 0], :decoded[2][j, 1]])))
    elif cache:
        table = _decoded(rows, image_size=image_size, channels=channels, decoded=decoded).batch(
            num_rows).cache().repeat()
        stream = tf.data.Dataset.zip(orders, table).flat_map(
            lambda order, decoded: tf.data.Dataset.from_tensor_slices(order).map(
                lambda j: (decoded[0][j], decoded[1][j])))
    elif disk_cache is not None:
        files = tf.constant(decoded_cache.fill(rows, folder=disk_cache, image_size=image_size, channels=channels,
                                               decode=partial(_decode, image_size=image_size, channels=channels,
                                                              decoded=decoded)))
        shapes = tf.constant([decoded_cache.row_shape(row, image_size=image_size, channels=channels)
                              for _, row in rows.iterrows()], tf.int32)
        stream = orders.flat_map(tf.data.Dataset.from_tensor_slices).map(
            lambda j: decoded_cache.read(files[j], shapes[j], channels=channels),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    else:
        paths = tf.constant(rows["image_path"].to_numpy(str)), tf.constant(rows["mask_path"].to_numpy(str))
        stream = orders.flat_map(tf.data.Dataset.from_tensor_slices).map(
            lambda j: _decode(paths[0][j], paths[1][j], image_size=image_size, channels=channels, decoded=decoded),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return stream.skip(skip)


def _subset_draw(probabilities: list[float], *, seed: int, batch_size: int, slots: slice = slice(None)):
    """batch index -> the subset of each of its elements (int64, shape (batch_size,)) keyed by the batch,
    or of its `slots` only (a worker's share of the global batch)."""
    cumulative = tf.constant(np.cumsum(probabilities)[:-1], tf.float32)

    def draw(batch):
        uniform = tf.random.stateless_uniform([batch_size], seed=_key(seed, SUBSET_CHOICE, batch))[slots]
        return tf.searchsorted(cumulative, uniform, side="right", out_type=tf.int64)

    return draw


def _elements_drawn(draw, *, num_subsets: int, first_batch: int) -> list[int]:
    """How many elements each subset gave in the batches before `first_batch` (to resume each stream there)."""
    counts = tf.data.Dataset.range(first_batch).map(lambda b: tf.math.bincount(
        tf.cast(draw(b), tf.int32), minlength=num_subsets, maxlength=num_subsets, dtype=tf.int64)).reduce(
        tf.zeros([num_subsets], tf.int64), lambda total, count: total + count)
    return [int(c) for c in counts.numpy()]


def _with_options(dataset, *, deterministic: bool):
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def worker_share(rows: pd.DataFrame, *, worker: tuple[int, int]) -> pd.DataFrame:
    """Worker w of W's rows of a subset: every W-th, from the w-th; all of them when there are fewer than W."""
    index, count = worker
    return rows if len(rows) < count else rows.iloc[index::count]


def training_dataset(subsets: list[pd.DataFrame], *, weights: list[float] | None, image_size: tuple[int, int],
                     channels: int, batch_size: int, seed: int, cache: bool, online_augment: bool,
                     deterministic: bool, patches: Patches | None = None, first_batch: int = 0,
                     input_context: tf.distribute.InputContext | None = None,
                     decoded: tf.Variable | None = None, disk_cache: Path | None = None) -> tf.data.Dataset:
    """Infinite, balanced training batches. See the module docstring.

    Args:
        subsets: one DataFrame of rows (image_path, mask_path, ...) per balancing subset; none empty.
        weights: sampling weight per subset (normalised here); None = equal.
        image_size: (height, width) of the network input: the rows are resized to it, or cropped (patches).
        channels: 3 for RGB PNGs, 1 for gray.
        batch_size: the global batch size.
        seed: keys every random choice; the same seed gives the same batches.
        deterministic: keep element order in parallel maps (False trades reproducibility for speed).
        patches: crop patches at native resolution (`Patches`); None = resize whole images.
        first_batch: start at this (global) batch of the stream (a later training phase, a resumed run).
        input_context: from `strategy.distribute_datasets_from_function` (several workers): this worker's
            share of rows and of every global batch, in batches of the per-replica size.
        cache: keep the decoded rows in memory.
        decoded: a scalar int64 variable that counts the image/mask pairs decoded.
        disk_cache: read the decoded rows from this folder instead (segpipe/data/decoded_cache.py); not with `cache`.

    Returns:
        Dataset of (float32 (B, H, W, C) in [0, 1], uint8 (B, H, W, 1) class ids).
    """
    weights = [1.0] * len(subsets) if weights is None else list(weights)
    if len(weights) != len(subsets) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"sampling weights {weights} must be {len(subsets)} non-negative numbers (one per "
                         "subset in data/subsets.json) with a positive sum.")
    worker = (input_context.input_pipeline_id, input_context.num_input_pipelines) if input_context else (0, 1)
    if batch_size % worker[1]:
        raise ValueError(f"the global batch of {batch_size} does not split over {worker[1]} workers: set "
                         "train.batch_size to a multiple of the replicas per worker.")
    share = batch_size // worker[1]  # this worker's slots in every global batch
    draw = _subset_draw([w / sum(weights) for w in weights], seed=seed, batch_size=batch_size,
                        slots=slice(worker[0] * share, (worker[0] + 1) * share))
    choices = tf.data.Dataset.counter(start=first_batch).map(draw).unbatch()
    drawn = _elements_drawn(draw, num_subsets=len(subsets), first_batch=first_batch)
    streams = [_subset_stream(worker_share(rows, worker=worker), index=index, seed=seed,
                              first_element=drawn[index], image_size=None if patches else image_size,
                              channels=channels, cache=cache, deterministic=deterministic, worker=worker,
                              decoded=decoded, disk_cache=disk_cache)
               for index, rows in enumerate(subsets)]
    dataset = tf.data.Dataset.choose_from_datasets(streams, choices)
    # Each element's position in the global stream keys its crop and augmentation, whoever decodes it.
    positions = tf.data.Dataset.counter(start=first_batch * share).map(
        lambda e: e // share * batch_size + worker[0] * share + e % share)
    if patches is not None:
        dataset = tf.data.Dataset.zip(dataset, positions).map(
            lambda pair, k: random_patch(*pair, _key(seed, PATCH, k), image_size=image_size, patches=patches),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if online_augment:
        dataset = tf.data.Dataset.zip(dataset, positions).map(
            lambda pair, k: augment_online(*pair, _key(seed, ONLINE_AUGMENT, k)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.map(_normalise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    replica_batch = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    dataset = dataset.batch(replica_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _with_options(dataset, deterministic=deterministic)


def _windows(image, mask, *, image_size: tuple[int, int]):
    """An image and mask cut into non-overlapping windows of `image_size`, padded (zeros, void) to fill the last."""
    def cut(array, fill):
        height, width = tf.shape(array)[0], tf.shape(array)[1]
        rows, cols = -(-height // image_size[0]), -(-width // image_size[1])
        array = tf.pad(array, [[0, rows * image_size[0] - height], [0, cols * image_size[1] - width], [0, 0]],
                       constant_values=fill)
        array = tf.reshape(array, [rows, image_size[0], cols, image_size[1], array.shape[-1]])
        return tf.reshape(tf.transpose(array, [0, 2, 1, 3, 4]), [rows * cols, *image_size, array.shape[-1]])
    return tf.data.Dataset.from_tensor_slices((cut(image, 0), cut(mask, IGNORE_ID)))


def evaluation_dataset(rows: pd.DataFrame, *, image_size: tuple[int, int], channels: int, batch_size: int,
                       cache: bool, windows: bool = False) -> tf.data.Dataset:
    """Batches of every row once, in CSV order (no shuffle, no augmentation); same dtypes as training.
    `windows` (patch training): native-resolution windows of `image_size` instead of resized images."""
    dataset = _decoded(rows, image_size=None if windows else image_size, channels=channels)
    if windows:
        count = input_plan.validation_windows(rows, image_size=image_size)
        # A known length: Keras then ends validation without its "input ran out of data" warning.
        dataset = dataset.flat_map(lambda image, mask: _windows(image, mask, image_size=image_size)).apply(
            tf.data.experimental.assert_cardinality(count))
    dataset = dataset.cache() if cache else dataset
    dataset = dataset.map(_normalise, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), deterministic=True)


def example_batch(rows: pd.DataFrame, *, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """The first two rows as the model's input, float32 (2, H, W, C): an input example for MLflow."""
    head = rows.head(2)
    return next(iter(evaluation_dataset(head, image_size=image_size, channels=channels, batch_size=len(head),
                                        cache=False)))[0].numpy()
