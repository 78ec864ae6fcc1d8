"""The tf.data input pipeline: CSV rows -> batches of (image, mask), used by train and evaluate.

Yields images as float32 in [0, 1], shape (batch, height, width, channels), and masks as uint8 class
ids, shape (batch, height, width, 1); the model casts the images to its compute dtype, so the same
pipeline feeds float32 and mixed-precision models. `batch_size` here is the GLOBAL batch: with a
distribution strategy pass per-replica batch x replicas; the dataset is auto-sharded by DATA for
multi-worker training.

Training (`training_dataset`) follows the split-balanced contract: one stream per subset, each
decoded, cached and visited in a new seeded order every pass, drawn by weight, then optional in-graph
flips/90-degree turns, batched and prefetched. It is infinite: pass `steps_per_epoch` to `model.fit`.

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

import os
from contextlib import contextmanager

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from segpipe.inference import resize_image, to_unit_range
from segpipe.schema import CACHE_MODES

def find_undecodable(rows: pd.DataFrame) -> list[str]:
    """Paths among the rows that PIL cannot fully decode (used to name the file behind a TF error)."""
    bad = []
    for path in list(rows["image_path"]) + list(rows["mask_path"]):
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, ValueError):
            bad.append(path)
    return bad


@contextmanager
def naming_bad_files(rows: pd.DataFrame):
    """Turns a TF decode error while iterating over `rows` into a ValueError that names the files."""
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        bad = find_undecodable(rows)
        if not bad:
            raise
        raise ValueError(f"cannot decode {len(bad)} PNG file(s): {', '.join(bad[:10])} "
                         f"(TensorFlow said: {err.message.splitlines()[0]}). Rerun the data stages "
                         "(dvc repro) or remove these rows.") from None


def _decode(image_path, mask_path, *, image_size: tuple[int, int], channels: int):
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=channels)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    mask = tf.image.resize(mask, image_size, method="nearest")
    # Cached as uint8 (4x less memory than float32); normalised after the cache.
    return resize_image(image, image_size), tf.cast(mask, tf.uint8)


def _normalise(image, mask):
    return to_unit_range(image), mask


def cache_budget_bytes() -> int:
    """A quarter of the machine's memory: what the decoded-image cache may use."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 1024 ** 3


def resolve_cache(cache: str, *, num_rows: int, image_size: tuple[int, int], channels: int,
                  memory_budget_bytes: int) -> bool:
    """Whether to cache decoded rows in memory: `auto` caches when they fit in the budget."""
    if cache not in CACHE_MODES:
        raise ValueError(f"param 'cache' must be one of {list(CACHE_MODES)}, got {cache!r}.")
    if cache != "auto":
        return cache == "memory"
    return num_rows * image_size[0] * image_size[1] * (channels + 1) <= memory_budget_bytes


def _decoded(rows: pd.DataFrame, *, image_size, channels: int):
    """Decoded rows in CSV order, always: evaluation keeps row order, and the cached training table is indexed by row."""
    dataset = tf.data.Dataset.from_tensor_slices((rows["image_path"].to_numpy(str), rows["mask_path"].to_numpy(str)))
    return dataset.map(lambda i, m: _decode(i, m, image_size=image_size, channels=channels),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# What each stateless random stream is keyed by, besides the seed: distinct purposes never share numbers.
SUBSET_CHOICE, PASS_ORDER, ONLINE_AUGMENT = 1, 2, 3


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
                   cache: bool, deterministic: bool) -> tf.data.Dataset:
    """Rows of one subset, endlessly, pass p in the order `_pass_order(key(seed, index, p))`, from element
    `first_element` on. With `cache`, the decoded subset is kept in memory as one (n, H, W, C) element and
    each pass slices it; without, each element is decoded from its file. Both give the same sequence."""
    num_rows = len(rows)
    first_pass, skip = divmod(first_element, num_rows)
    orders = tf.data.Dataset.counter(start=first_pass).map(
        lambda p: _pass_order(num_rows, _key(seed, PASS_ORDER, index, p)))
    if cache:
        table = _decoded(rows, image_size=image_size, channels=channels).batch(num_rows).cache().repeat()
        stream = tf.data.Dataset.zip(orders, table).flat_map(
            lambda order, decoded: tf.data.Dataset.from_tensor_slices(order).map(
                lambda j: (decoded[0][j], decoded[1][j])))
    else:
        paths = tf.constant(rows["image_path"].to_numpy(str)), tf.constant(rows["mask_path"].to_numpy(str))
        stream = orders.flat_map(tf.data.Dataset.from_tensor_slices).map(
            lambda j: _decode(paths[0][j], paths[1][j], image_size=image_size, channels=channels),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return stream.skip(skip)


def _subset_draw(probabilities: list[float], *, seed: int, batch_size: int):
    """batch index -> the subset of each of its elements (int64, shape (batch_size,)), keyed by the batch."""
    cumulative = tf.constant(np.cumsum(probabilities)[:-1], tf.float32)

    def draw(batch):
        uniform = tf.random.stateless_uniform([batch_size], seed=_key(seed, SUBSET_CHOICE, batch))
        return tf.searchsorted(cumulative, uniform, side="right", out_type=tf.int64)

    return draw


def _elements_drawn(draw, *, num_subsets: int, first_batch: int) -> list[int]:
    """How many elements each subset gave in the batches before `first_batch` (to resume each stream there)."""
    counts = tf.data.Dataset.range(first_batch).map(lambda b: tf.math.bincount(
        tf.cast(draw(b), tf.int32), minlength=num_subsets, maxlength=num_subsets, dtype=tf.int64)).reduce(
        tf.zeros([num_subsets], tf.int64), lambda total, count: total + count)
    return [int(c) for c in counts.numpy()]


def _augment_online(image, mask, key):
    """Random horizontal/vertical flips and 90-degree turns, identical for image and mask."""
    keys = tf.random.experimental.stateless_split(key, num=3)
    both = tf.concat([image, mask], axis=-1)
    both = tf.image.stateless_random_flip_left_right(both, seed=keys[0])
    both = tf.image.stateless_random_flip_up_down(both, seed=keys[1])
    turns = tf.random.stateless_uniform([], seed=keys[2], maxval=4, dtype=tf.int32)
    if image.shape[0] == image.shape[1]:  # 90-degree turns keep the shape only for square inputs
        both = tf.image.rot90(both, k=turns)
    return both[..., :-1], both[..., -1:]


def _with_options(dataset, *, deterministic: bool):
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def training_dataset(subsets: list[pd.DataFrame], *, weights: list[float] | None, image_size: tuple[int, int],
                     channels: int, batch_size: int, seed: int, cache: bool, online_augment: bool,
                     deterministic: bool, first_batch: int = 0) -> tf.data.Dataset:
    """Infinite, balanced training batches. See the module docstring.

    Args:
        subsets: one DataFrame of rows (image_path, mask_path, ...) per balancing subset; none empty.
        weights: sampling weight per subset (normalised here); None = equal.
        image_size: (height, width) the rows are resized to.
        channels: 3 for RGB PNGs, 1 for gray.
        batch_size: the global batch size.
        seed: keys every random choice; the same seed gives the same batches.
        deterministic: keep element order in parallel maps (False trades reproducibility for speed).
        first_batch: start at this batch of the stream (a later training phase, a resumed run).

    Returns:
        Dataset of (float32 (B, H, W, C) in [0, 1], uint8 (B, H, W, 1) class ids).
    """
    weights = [1.0] * len(subsets) if weights is None else list(weights)
    if len(weights) != len(subsets) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"sampling weights {weights} must be {len(subsets)} non-negative numbers (one per "
                         "subset in data/subsets.json) with a positive sum.")
    draw = _subset_draw([w / sum(weights) for w in weights], seed=seed, batch_size=batch_size)
    choices = tf.data.Dataset.counter(start=first_batch).map(draw).unbatch()
    drawn = _elements_drawn(draw, num_subsets=len(subsets), first_batch=first_batch)
    streams = [_subset_stream(rows, index=index, seed=seed, first_element=drawn[index], image_size=image_size,
                              channels=channels, cache=cache, deterministic=deterministic)
               for index, rows in enumerate(subsets)]
    dataset = tf.data.Dataset.choose_from_datasets(streams, choices)
    if online_augment:
        positions = tf.data.Dataset.counter(start=first_batch * batch_size)
        dataset = tf.data.Dataset.zip(dataset, positions).map(
            lambda pair, k: _augment_online(*pair, _key(seed, ONLINE_AUGMENT, k)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.map(_normalise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return _with_options(dataset, deterministic=deterministic)


def evaluation_dataset(rows: pd.DataFrame, *, image_size: tuple[int, int], channels: int, batch_size: int,
                       cache: bool) -> tf.data.Dataset:
    """Batches of every row once, in CSV order (no shuffle, no augmentation); same dtypes as training."""
    dataset = _decoded(rows, image_size=image_size, channels=channels)
    dataset = dataset.cache() if cache else dataset
    dataset = dataset.map(_normalise, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_options(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), deterministic=True)


def steps_per_epoch(*, num_rows: int, batch_size: int, requested: int) -> int:
    """`requested` if > 0, else the number of training rows / batch size (at least 1)."""
    return requested if requested > 0 else max(1, num_rows // batch_size)


def example_batch(rows: pd.DataFrame, *, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """The first two rows as the model's input, float32 (2, H, W, C): an input example for MLflow."""
    head = rows.head(2)
    return next(iter(evaluation_dataset(head, image_size=image_size, channels=channels, batch_size=len(head),
                                        cache=False)))[0].numpy()
