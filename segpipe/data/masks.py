"""Mask semantics: which layer of a decoded mask file holds the labels, and how its values become class ids
(binary: thresholded, optionally inverted; multi-class: the values are the ids; void: IGNORE_ID). Decoding
is segpipe/data/image_io.py's; colour-coded masks are segpipe/data/palette.py's.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from segpipe.data.image_io import IGNORE_ID, WideColourImage, finite_values, is_high_bit_depth, to_8bit_gray_or_color


def _mask_channel(im: Image.Image) -> tuple[np.ndarray, bool]:
    """One uint8 channel from a mask, and whether its values are palette class ids.

    Colour masks use the max over channels, so a pure red (255, 0, 0) annotation counts as bright and
    a lossy JPEG mask with slightly unequal channels gives one clean value per pixel.
    """
    if is_high_bit_depth(im):
        values = finite_values(im)
        if values.max() <= 255:
            # Labels in a wide container (class ids or {0, 1} in a 16-bit PNG or TIFF) are values, not
            # intensities: scaling them by the container's range would turn every id into 0.
            return np.rint(values).astype(np.uint8), False
        im = to_8bit_gray_or_color(im)  # {0, 65535} binary masks: 65535 -> 255
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8), True
    if im.mode == "P":
        palette = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
        indices = np.asarray(im, dtype=np.uint8)
        used = palette[np.unique(indices)] if len(palette) else np.zeros((0, 3))
        if len(used) and (used == used[:, :1]).all():
            return used[:, 0][np.searchsorted(np.unique(indices), indices)], False  # gray palette: its levels
        return indices, True  # colour palette (e.g. VOC style): indices are the class ids
    if im.mode in ("LA", "PA"):
        im = im.convert("L")
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "HSV", "LAB"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8).max(axis=2), False
    return np.asarray(im.convert("L"), dtype=np.uint8), False


def mask_layer(im: Image.Image | WideColourImage, *, mask_alpha: bool) -> Image.Image | WideColourImage:
    """The part of a decoded mask that holds the labels: the mask itself, or with `mask_alpha` its alpha
    channel (mode "L"), as cut-out and matting datasets ship masks (colour all zero, object opaque).

    Raises ValueError for a mask whose colour channels are one value while its alpha varies (the labels
    are in the alpha channel, which would be dropped) unless `mask_alpha`, and for `mask_alpha` on a mask
    without alpha."""
    alpha = None
    if isinstance(im, Image.Image) and (im.mode in ("RGBA", "LA", "PA") or
                                        (im.mode == "P" and "transparency" in im.info)):
        alpha = np.asarray(im.convert("RGBA" if im.mode in ("P", "PA") else im.mode).getchannel("A"))
    if mask_alpha:
        if alpha is None:
            raise ValueError(f"convert.mask_alpha is true but this mask (mode {im.mode}) has no alpha channel; "
                             "expected masks with transparency, or set convert.mask_alpha: false")
        return Image.fromarray(alpha, "L")
    if alpha is not None and alpha.min() != alpha.max():
        colour = np.asarray(im.convert("RGB" if im.mode != "LA" else "L"))
        if colour.min() == colour.max():
            raise ValueError(f"its colour is {int(colour.min())} everywhere while its alpha channel varies "
                             f"({int(alpha.min())}..{int(alpha.max())}): the labels are in the alpha channel, as "
                             "cut-out and matting datasets ship them; set convert.mask_alpha: true to read it")
    return im


def mask_to_class_ids(im: Image.Image, *, num_classes: int, threshold: int, invert: bool,
                      max_gray_fraction: float, lossy: bool, ignore_value: int | None = None) -> np.ndarray:
    """A decoded single-channel (or gray-looking) mask -> uint8 class ids of shape (H, W), void pixels
    IGNORE_ID. Raises ValueError saying what is wrong. (Colour-coded masks: segpipe/data/palette.py.)

    `ignore_value` is the raw value of void pixels (e.g. 11 for CamVid's Unlabelled, 255 for Cityscapes
    or VOC borders); they become IGNORE_ID before anything else looks at the mask.

    Binary (`num_classes == 1`): values in {0, 1} are taken as ids; anything else is thresholded
    (`value >= threshold` is foreground), which handles {0, 255} masks and lossy JPEG masks. A mask
    whose pixels are mostly mid-gray (more than `max_gray_fraction` in 32..223) is not a binary mask,
    nor is a lossless one with small values like {0, 1, 2} (class ids of a multi-class mask). Void
    pixels are left out of both checks: a gray (128) boundary band declared void is fine.
    `invert` swaps foreground and background (for datasets that mark the background in white).

    Multi-class: single-channel values (or palette indices) are the class ids; each must be
    < num_classes.
    """
    if isinstance(im, WideColourImage):
        im = im.convert("RGB")  # a colour mask of 16 bits per channel: its colours count, not their depth
    largest = np.asarray(im).max() if num_classes > 1 and is_high_bit_depth(im) else 0
    if largest > 255:
        raise ValueError(
            f"class ids up to {largest} in a {im.mode} mask, out of range for num_classes={num_classes}; "
            f"expected values 0..{num_classes - 1} (void: convert.ignore_value, at most 255)")
    values, is_index = _mask_channel(im)
    void = values == ignore_value if ignore_value is not None else np.zeros(values.shape, bool)
    labelled = values[~void]
    if num_classes == 1:
        present = np.unique(labelled)
        if set(present.tolist()) <= {0, 1}:
            foreground = values == 1
        else:
            gray = float(np.mean((labelled >= 32) & (labelled <= 223)))
            if gray > max_gray_fraction:
                raise ValueError(
                    f"not a binary mask: {gray:.1%} of its labelled pixels are mid-gray (32..223), more than "
                    f"convert.max_gray_fraction={max_gray_fraction}; expected values {{0,1}} or {{0,255}} "
                    "(lossy JPEG noise is fine). If it is multi-class, set num_classes; if the gray pixels "
                    "are a band nobody should score, set convert.ignore_value to their value")
            if present.max() < threshold and not lossy:
                raise ValueError(
                    f"unexpected mask values {present.tolist()[:10]} for a binary task (num_classes: 1); "
                    "expected {0,1} or {0,255}. These look like class ids: set num_classes to the number "
                    "of classes, or fix the mask")
            foreground = values >= threshold
        if invert:
            foreground = ~foreground
        return np.where(void, IGNORE_ID, foreground).astype(np.uint8)
    if not is_index and im.mode not in ("L", "I;16", "I", "F") and im.getbands() not in (("L",),):
        raise ValueError(
            f"colour mask (mode {im.mode}) for a multi-class task; expected a single-channel or palette "
            "PNG whose values are class ids 0..num_classes-1, or set convert.palette to map its colours "
            "to class ids")
    too_big, counts = np.unique(labelled[labelled >= num_classes], return_counts=True)
    if too_big.size:
        found = ", ".join(f"{v} ({n} pixels)" for v, n in list(zip(too_big.tolist(), counts.tolist()))[:10])
        raise ValueError(
            f"class ids {found} out of range for num_classes={num_classes}; expected values "
            f"0..{num_classes - 1}. If one of them means 'not labelled', set convert.ignore_value to it")
    if invert:
        raise ValueError("convert.invert_mask only applies to binary tasks (num_classes: 1)")
    return np.where(void, IGNORE_ID, values).astype(np.uint8)
