"""`train.input: auto`: resize whole images or train on native-resolution patches, decided from the data.

The fingerprint (in the spirit of nnU-Net's: settings derived from the dataset, not tuned per dataset):
- shrink: how much resizing to the network input would shrink the images, the median over training
  images of min(input height / image height, input width / image width) (the axis that shrinks most);
- structure width: 2 x area / boundary length of the regions to segment, pooled over a sample of
  training masks (a strip w pixels wide gives w, a disc of radius r gives r): binary, the foreground's;
  multi-class, all classes' together (the typical region of the scene).

Patches are possible only when resizing would shrink the images by 1.5x or more (shrink <= 2/3): smaller
images gain nothing from them and train resized. For larger ones the two inputs trade context for
resolution, and the measured cost of a wrong choice is lopsided: resize lost 0.02-0.04 IoU where patches
won (thin membranes, vessels), patches lost 0.11-0.155 where resize won (polyps that fill a third of the
photo; small, sparse objects in 600x1080 photos; street scenes) in 8 CPU-minutes (docs/results.md). So
`auto` takes patches only where they clearly pay (the rule below) and resizes otherwise.

The rule: `patches` when the images shrink by 1.5x or more AND the structures are narrower than 1/16 of
the patch's shorter side (a patch holds whole structures with wide context around them) AND, binary, the
foreground covers at least 5% of the pixels (dense structures: every patch holds some; sparse objects
are mostly missed by patches, while a resized image shows every one at every step). Thin membranes (7.6
px, 22% of the pixels) and vessels get patches; a lesion that fills a third of a photo, a few small
objects in a large photo and street scenes (CamVid: 38.6 px over all classes, although its poles are 3.7
px; patches scored 0.250 mean IoU against 0.33 resized) get resize. The width bound is 1/16, not the 1/8
first used, because CamVid's cars (34 px, 5.7% of the pixels) sat just above 1/8 and just above 5%, and
patches lost 0.38-0.41 IoU there: structures that narrow, yet objects rather than a network of lines,
must stay well inside the resize side; the membranes (7.6 px) and vessels are far below either bound.

`train.input_pilot` > 0 replaces the rule by a pilot (`input_candidates`, segpipe/training/input_pilot.py):
a short run of each input, the better at native resolution goes on. Off by default: at 8 CPU-minutes
pilots of 1.2 minutes each misranked the polyps (patches 0.302 vs resize 0.295 after the pilots; 0.31 vs
0.49 after the full budget) and cost 46% of the budget; it is for budgets where each pilot gets many
epochs.

Resized images are never blown up: when the training images' median pixel count is below the input's
(by 1.25x or more), the network input takes that pixel count instead, as self-configuring pipelines
derive the input from the data (nnU-Net trains at the median size). The demo's 112-160 px images trained
at 256x256 paid 3-5x the pixels for detail they do not hold.

`train.keep_aspect` (resize only): when the training images share an orientation, the network input takes
their median aspect ratio (height / width) at about image_size's pixel count, each side a multiple of the
model's down-sampling factor, so whole images are not squeezed along one axis. "Share" means the first and
third quartiles of the ratio lie on the same side of 1 and the median is at least 10% away from 1; mixed
orientations (portrait beside landscape) keep image_size as given, and so does a non-square image_size: a
user who wrote one chose the shape. On CamVid (480x360, all landscape), 224x288 instead of 256x256 scored
0.397 against 0.333 mean IoU in 8 CPU-minutes (docs/results.md).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from segpipe.core.schema import INPUTS
from segpipe.data.image_io import IGNORE_ID, read_png
from segpipe.evaluation.metrics import class_boundary

MIN_SHRINK_FOR_PATCHES = 2 / 3
MIN_ASPECT_CHANGE = 1.1  # keep_aspect: the median ratio must differ from 1 by this factor at least
MIN_SCALE_CHANGE = 1.25  # resize: images with fewer pixels than the input by this factor set the input size
STRUCTURE_SHARE_OF_PATCH = 1 / 16
# Binary: patches only when the foreground covers at least this share of the pixels (module docstring).
MIN_FOREGROUND_FOR_PATCHES = 0.05


def area_and_boundary(mask: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(classes, 2) pixel counts per class id: its area and its boundary (pixels with a 4-neighbour of
    another labelled class; void neighbours and the image border are not boundaries)."""
    classes = max(2, num_classes)
    labelled = mask != IGNORE_ID
    edge = class_boundary(mask, ignore=IGNORE_ID)
    ids = mask[labelled].astype(np.int64)
    area = np.bincount(ids, minlength=classes)[:classes]
    boundary = np.bincount(mask[edge].astype(np.int64), minlength=classes)[:classes]
    return np.stack([area, boundary], axis=1)


def structure_width(mask_paths: list[str], *, num_classes: int) -> float | None:
    """2 x area / boundary in pixels over these masks: binary, of the foreground; multi-class, of all classes
    pooled. None when there is no boundary (nothing to measure)."""
    totals = sum(area_and_boundary(read_png(path), num_classes=num_classes) for path in mask_paths)
    area, boundary = totals[1] if num_classes == 1 else totals.sum(axis=0)
    return float(2 * area / boundary) if boundary else None


def choose_input(input: str, *, rows: pd.DataFrame, image_size: tuple[int, int], num_classes: int,
                 seed: int, sample: int = 100) -> tuple[str, str]:
    """(resize | patches, the reason in words) for `train.input` over the training `rows`, by the rule
    (module docstring)."""
    if input not in INPUTS:
        raise ValueError(f"param 'train.input' must be one of {list(INPUTS)}, got {input!r}.")
    if input != "auto":
        return input, "set by train.input"
    large, where = _large_enough_for_patches(rows, image_size=image_size)
    if not large:
        return "resize", f"auto: {where}"
    # Sorted first: preflight passes train.csv's rows, train the subsets' originals, in another order.
    ordered = rows.sort_values("id", kind="stable")
    picked = ordered.sample(n=sample, random_state=seed) if len(rows) > sample else ordered
    width = structure_width(list(picked["mask_path"]), num_classes=num_classes)
    limit = min(image_size) * STRUCTURE_SHARE_OF_PATCH
    if width is None or width >= limit:
        measured = "unmeasurable" if width is None else f"{width:.1f} px"
        return "resize", (f"auto: {where}, but the structures are {measured}"
                          f" wide (2 x area / boundary), not under {limit:g} px (1/16 of the input): whole images")
    share = foreground_share(rows)
    if num_classes == 1 and share < MIN_FOREGROUND_FOR_PATCHES:
        return "resize", (f"auto: {where}, structures {width:.1f} px wide (2 x area / boundary), but sparse "
                          f"({share:.1%} of the pixels "
                          f"are foreground, under {MIN_FOREGROUND_FOR_PATCHES:.0%}): most patches would miss them, "
                          "whole images show every object at every step")
    dense = f", {share:.0%} of the pixels" if num_classes == 1 else ""
    return "patches", (f"auto: {where}, structures {width:.1f} px wide (2 x area / boundary), under "
                       f"{limit:g} px (1/16 of the input){dense}: native-resolution patches keep them")


def foreground_share(rows: pd.DataFrame) -> float:
    """The share of the rows' labelled pixels that are foreground (not class 0), pixel-weighted, from the CSV."""
    pixels = rows["height"].astype(float) * rows["width"].astype(float)
    return float((rows["foreground_fraction"].astype(float) * pixels).sum() / max(pixels.sum(), 1.0))


def input_candidates(input: str, *, rows: pd.DataFrame, image_size: tuple[int, int], num_classes: int, seed: int,
                     pilot: float) -> tuple[list[str], str]:
    """([the inputs to train], the reason in words): one when `train.input` names it, when the images are too
    small for patches to differ from resizing, or when `pilot` (train.input_pilot) is 0 (then `choose_input`'s
    rule decides); both, resize first, when a pilot is to decide (module docstring)."""
    if input != "auto" or not pilot:
        mode, reason = choose_input(input, rows=rows, image_size=image_size, num_classes=num_classes, seed=seed)
        return [mode], reason
    large, where = _large_enough_for_patches(rows, image_size=image_size)
    if not large:
        return ["resize"], f"auto: {where}"
    return ["resize", "patches"], f"auto: {where}, so either input may do better: a pilot of each decides"


def _large_enough_for_patches(rows: pd.DataFrame, *, image_size: tuple[int, int]) -> tuple[bool, str]:
    """(whether resizing would shrink the images by 1.5x or more, so that patches differ from it, the words)."""
    shrink = _shrink(rows, image_size=image_size)
    where = f"images {1 / shrink:.2f}x the input {image_size[0]}x{image_size[1]} (median)"
    if shrink > MIN_SHRINK_FOR_PATCHES:
        return False, f"{where}; patches need >= {1 / MIN_SHRINK_FOR_PATCHES:.1f}x"
    return True, where


def _shrink(rows: pd.DataFrame, *, image_size: tuple[int, int]) -> float:
    """The median over `rows` of min(input height / image height, input width / image width)."""
    return float(np.median(np.minimum(image_size[0] / rows["height"].astype(float),
                                      image_size[1] / rows["width"].astype(float))))


def network_input_size(image_size: tuple[int, int], *, input_mode: str, keep_aspect: bool, rows: pd.DataFrame,
                       multiple: int, upscale: bool = False) -> tuple[tuple[int, int], str]:
    """((height, width) of the network input, the reason in words). Patches: `image_size`. Resized whole
    images: at most `image_size`'s pixel count, and no more than the training images' median pixel count
    (images are never blown up beyond what they hold: 112-160 px images trained at 256x256 paid 3-5x the
    pixels for no detail; `upscale` (train.upscale_small_images) keeps image_size's pixel count); the shape is
    `image_size`'s, or with `keep_aspect` the rows' shared aspect ratio
    (module docstring); each side a multiple of `multiple` (the model's down-sampling factor)."""
    given = (int(image_size[0]), int(image_size[1]))
    if input_mode != "resize":
        return given, "train.image_size" + (" (patches are square)" if input_mode == "patches" else "")
    ratio, shape = given[0] / given[1], ""  # height / width, and why when the data set it
    if keep_aspect and given[0] != given[1]:
        kept = "train.image_size: not square, so taken as the shape wanted (keep_aspect reshapes a square one)"
    elif keep_aspect:
        ratios = rows["height"].astype(float) / rows["width"].astype(float)
        low, median, high = (float(q) for q in ratios.quantile([0.25, 0.5, 0.75]))
        if ((low > 1 and high > 1) or (low < 1 and high < 1)) and max(median, 1 / median) >= MIN_ASPECT_CHANGE:
            ratio, shape = median, f"keep_aspect: the training images' median height/width {median:.2f}"
        kept = (f"train.image_size: the training images' height/width ratios (quartiles {low:.2f}, {median:.2f}, "
                f"{high:.2f}) share no orientation {MIN_ASPECT_CHANGE - 1:.0%} away from square")
    else:
        kept = "train.image_size"
    pixels = given[0] * given[1]
    median_pixels = float((rows["height"].astype(float) * rows["width"].astype(float)).median())
    smaller = median_pixels * MIN_SCALE_CHANGE < pixels and not upscale
    if not smaller and not shape:
        return given, kept
    target = median_pixels if smaller else pixels
    height = max(multiple, round(math.sqrt(target * ratio) / multiple) * multiple)
    width = max(multiple, round(math.sqrt(target / ratio) / multiple) * multiple)
    scale = (f"the training images' median of {median_pixels:,.0f} pixels, fewer than {given[0]}x{given[1]}'s "
             "(images are not blown up)" if smaller else f"about {given[0]}x{given[1]}'s pixels")
    return (height, width), (f"{shape} at {scale}" if shape else scale[0].upper() + scale[1:]) + \
        f", sides multiples of {multiple}"
