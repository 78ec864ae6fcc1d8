"""Merge several masks of one image into one (BUSI ships a second lesion of an image as x_mask_1.png).

Each mask is converted on its own first (thresholds, palette, void), so the merge sees class ids: a pixel
takes the class that some mask gives it; it is void (IGNORE_ID) when no mask gives it a class and one
says void; background (0) otherwise. Masks that give one pixel two different classes contradict each
other: that is an error, not a guess.
"""
from __future__ import annotations

import numpy as np

from segpipe.data.image_io import IGNORE_ID


def merge_class_ids(masks: list[np.ndarray]) -> np.ndarray:
    """One uint8 (H, W) class-id mask from masks of the same shape (see the module docstring). Raises
    ValueError saying how many pixels two masks give different classes."""
    merged = masks[0]  # not written to: each step makes a new array
    for other in masks[1:]:
        classed = (merged != 0) & (merged != IGNORE_ID)
        other_classed = (other != 0) & (other != IGNORE_ID)
        conflicts = int(np.count_nonzero(classed & other_classed & (merged != other)))
        if conflicts:
            raise ValueError(f"{conflicts} pixel(s) get one class in one mask and another class in another; masks "
                             "merged by a '*' in convert.mask_stem_pattern must not contradict each other")
        merged = np.where(other_classed, other,
                          np.where(classed, merged,
                                   np.where((merged == IGNORE_ID) | (other == IGNORE_ID), IGNORE_ID, 0)))
    return merged.astype(np.uint8, copy=False)
