"""How much the training input holds and what an epoch is: where decoded rows are kept (`train.cache`), how
many pixels they take, and the steps per epoch (one pass over the rows or the pixels, or under a time
budget one crop per row, lengthened so that validation stays about VALIDATION_SHARE of an epoch).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from segpipe.core.schema import CACHE_MODES


def cache_budget_bytes() -> int:
    """A quarter of the machine's memory: what the decoded-image cache may use."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 1024 ** 3


def resolve_cache(cache: str, *, pixels: int, channels: int, memory_budget_bytes: int,
                  disk_free_bytes: int) -> tuple[str, str]:
    """(where training keeps decoded rows: "memory", "disk" or "none"; why, for the log). `auto` keeps
    them in memory when their `pixels` (all rows, at the size they are cached: resized, or native for
    patches) fit in the memory budget, else on disk when they take at most half the free disk space."""
    if cache not in CACHE_MODES:
        raise ValueError(f"param 'cache' must be one of {list(CACHE_MODES)}, got {cache!r}.")
    if cache != "auto":
        return cache, "set in params"
    size = pixels * (channels + 1)
    gib = f"{size / 2 ** 30:.2f} GiB decoded"
    if size <= memory_budget_bytes:
        return "memory", f"auto: {gib}, within the memory budget of {memory_budget_bytes / 2 ** 30:.1f} GiB"
    if size <= disk_free_bytes // 2:
        return "disk", (f"auto: {gib}, more than the memory budget of {memory_budget_bytes / 2 ** 30:.1f} GiB; "
                        f"{disk_free_bytes / 2 ** 30:.0f} GiB free on disk")
    return "none", (f"auto: {gib}, more than the memory budget and half the {disk_free_bytes / 2 ** 30:.0f} GiB "
                    "free on disk: the PNGs are decoded every step")


def cached_pixels(rows: pd.DataFrame, *, image_size: tuple[int, int], patches: bool) -> int:
    """Pixels the cache holds for `rows`: resized images, or (patches) each subset padded to its largest."""
    if not patches:
        return len(rows) * image_size[0] * image_size[1]
    return len(rows) * int(rows["height"].astype(int).max()) * int(rows["width"].astype(int).max())


def validation_windows(rows: pd.DataFrame, *, image_size: tuple[int, int]) -> int:
    """Non-overlapping windows of `image_size` that cover every row (patch training's validation)."""
    return sum(-(-int(h) // image_size[0]) * -(-int(w) // image_size[1]) for h, w in zip(rows["height"], rows["width"]))


def samples_per_pass(rows: pd.DataFrame, *, patch_size: tuple[int, int]) -> float:
    """Patches in one pass over `rows`: each row's native pixels / a patch's pixels, at least one (an
    image smaller than a patch is one padded crop)."""
    pixels = rows["height"].astype(float).to_numpy() * rows["width"].astype(float).to_numpy()
    return float(np.maximum(1.0, pixels / (patch_size[0] * patch_size[1])).sum())


# Under a time budget, validation should take at most this share of an epoch's time ...
VALIDATION_SHARE = 0.15


# ... given that validating a window costs about this much of training a crop: a forward pass is about a
# third of a training step's forward and backward; evaluation's per-batch overhead brings it nearer half.
VALIDATION_COST = 0.5


def steps_per_epoch(rows: pd.DataFrame, *, batch_size: int, requested: int,
                    patch_size: tuple[int, int] | None = None, time_budget: bool = False,
                    validation_inputs: int = 0) -> tuple[int, str]:
    """(steps, what an epoch is, in words for the log: "" unless patches or the budget decide it):
    `requested` if > 0, else one pass over the training rows (patches: `samples_per_pass`) / batch size,
    at least 1.

    With patches an epoch is as many crops as cover the training pixels once, not one crop per image: with
    one crop per image, `epochs` meant far less training on large images than on resized ones. Under a
    time budget the budget decides how much is trained and an epoch is only the interval between
    validations: one crop per row, so that the first epochs, which the budget is planned from, stay short
    on images of any size (one pass over twenty 4096x4096 images would outlast the budget), but long
    enough that validating its `validation_inputs` (images, or windows with patches) costs at most
    VALIDATION_SHARE of the epoch: on a small training set with large validation images, validating every
    few steps spent most of the budget on validation."""
    if requested > 0:
        return requested, ""
    if time_budget:
        per_row = max(1, len(rows) // batch_size)
        bounded = math.ceil(VALIDATION_COST * validation_inputs * (1 - VALIDATION_SHARE) / VALIDATION_SHARE
                            / batch_size)
        if bounded > per_row:
            return bounded, (f"long enough that validating {validation_inputs} "
                             f"{'windows' if patch_size else 'images'} takes about {VALIDATION_SHARE:.0%} of it; "
                             "the time budget decides how much is trained")
        return per_row, (("one crop per training row" if patch_size else "one pass over the training rows")
                         + ": the time budget decides how much is trained")
    if patch_size is None:
        return max(1, len(rows) // batch_size), ""
    samples = samples_per_pass(rows, patch_size=patch_size)
    return max(1, int(samples // batch_size)), f"one pass over the training pixels: {samples:.0f} patches"
