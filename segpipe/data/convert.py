"""Convert raw pairs into clean PNG pairs (stages/convert_to_png.py runs it): orientation, pages of stacks,
the dataset's white level for images of more than 8 bits, masks to class ids (binary, multi-class, palette,
void, merged masks), and every problem collected rather than raised, so that one error lists them all.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from segpipe.core.parallel import map_in_order
from segpipe.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    LOSSY_FORMATS,
    apply_orientation,
    exif_orientation,
    image_pages,
    image_to_array,
    is_high_bit_depth,
    open_image,
    open_lazily,
    white_level_of,
    write_png,
)
from segpipe.data.mask_merge import merge_class_ids
from segpipe.data.masks import mask_layer, mask_to_class_ids
from segpipe.data.pairing import NO_GROUP, Pair, Problem
from segpipe.data.palette import Palette, colour_mask_to_class_ids
from segpipe.data.rows import class_pixels, foreground_fraction

MIN_SIDE = 8  # pixels: anything smaller holds nothing to segment


def _orient_pair(image, mask):
    """Applies EXIF orientation to the image, and the same to the mask unless it carries its own.

    Most annotation tools read the stored pixels and ignore EXIF, so a mask without its own tag is
    taken to be drawn on the stored image and gets the image's transpose. A mask that already has
    the upright size (drawn on the rotated picture) is left as it is; for square images the two
    cases cannot be told apart and the transpose is applied.
    """
    image_orientation = exif_orientation(image)
    mask_orientation = exif_orientation(mask)
    upright = apply_orientation(image, image_orientation)
    if mask_orientation != 1:
        return upright, apply_orientation(mask, mask_orientation)
    if image_orientation != 1:
        turned = apply_orientation(mask, image_orientation)
        if turned.size == upright.size or mask.size != upright.size:
            return upright, turned
    return upright, mask


def _is_high_bit_file(path: Path) -> bool:
    try:
        with open_lazily(path) as im:  # reads the header only
            return is_high_bit_depth(im)
    except (OSError, ValueError, SyntaxError):
        return False


def _brightest_high_bit_pixel(path: Path, *, max_pixels: int) -> tuple[float, bool] | None:
    """(brightest finite pixel value over the pages that are images, whether float) of an image of more
    than 8 bits; None when it cannot be decoded (the conversion itself reports that, and NaN or infinite
    pixels). One page decoded at a time: a volume's pages together may not fit in memory."""
    brightest, is_float = 0.0, False
    try:
        for page in image_pages(path):
            im = open_image(path, page=page, max_pixels=max_pixels)
            values = np.asarray(im, dtype=np.float64)
            finite = values[np.isfinite(values)]
            brightest = max(brightest, float(finite.max()) if finite.size else 0.0)
            is_float = im.mode == "F"
    except ValueError:
        return None
    return brightest, is_float


def dataset_white_level(image_paths: list[Path], *, white_level, num_workers: int, max_pixels: int
                        ) -> tuple[float | None, str]:
    """The white level of the dataset's images of more than 8 bits (None when there are none), and why.

    One level for all of them, so that every image keeps the same intensity meaning: `white_level`
    "auto" takes the bit depth the brightest pixel implies (`white_level_of`: 12-bit data in 16-bit files
    -> 4095, not 65535, which would leave them 16 gray levels); a number is used as given."""
    high_bit = [path for path in image_paths if _is_high_bit_file(path)]
    if not high_bit:
        return None, "every image has 8 bits per channel"
    found = [value for value in map_in_order(partial(_brightest_high_bit_pixel, max_pixels=max_pixels), high_bit,
                                             num_workers=num_workers, desc="white level") if value is not None]
    if not found:
        return None, "no readable image of more than 8 bits"
    brightest = max(value for value, _ in found)
    if white_level != "auto":
        return float(white_level), (f"convert.white_level; the brightest of {len(found)} images of more than "
                                    f"8 bits is {brightest:g}")
    level = white_level_of(brightest, is_float=all(is_float for _, is_float in found))
    return level, (f"auto: the brightest pixel of {len(found)} images of more than 8 bits is {brightest:g}, so "
                   f"{level:g} becomes 255" + (f" ({int(level).bit_length()}-bit data)" if level > 1 else ""))


def convert_pair(pair: Pair, **options) -> tuple[list[dict], list[Problem]]:
    """Converts one pair into output_dir (options: see _convert_page). Returns (manifest rows, problems).

    A multi-page file (a TIFF stack, as EM and microscopy volumes ship) is one image per page: its mask
    must have as many pages, page k becomes `<id>/<k:04d>` (source: "<file> (page k)"), and the stack is
    the pages' group (inside its folder's group), so balancing and `build_csv.split_by: group` see volumes."""
    in_image, in_mask = image_pages(pair.image_path), image_pages(pair.mask_path)
    if len(in_image) != len(in_mask):
        return [], [Problem(pair.mask_path, f"{len(in_mask)} page(s), but its image '{pair.image_path}' has "
                            f"{len(in_image)}; a stack of images needs a stack of masks with a page per image "
                            "(or save one file per image)")]
    for extra in pair.extra_mask_paths:
        if (in_extra := image_pages(extra)) != in_mask:
            return [], [Problem(extra, f"{len(in_extra)} page(s), but '{pair.mask_path}', the mask it is merged "
                                f"with, has {len(in_mask)}; masks of one image need the same pages")]
    if len(in_image) == 1:
        row, problems = _convert_page(pair, page=None, image_page=in_image[0], mask_page=in_mask[0], **options)
        return [row] if row else [], problems
    rows, problems = [], []
    stack = pair.image_path.stem if pair.group == NO_GROUP else f"{pair.group}/{pair.image_path.stem}"
    for index, (image_page, mask_page) in enumerate(zip(in_image, in_mask)):
        row, found = _convert_page(replace(pair, id=f"{pair.id}/{index:04d}", group=stack), page=index,
                                   image_page=image_page, mask_page=mask_page, **options)
        rows += [row] if row else []
        problems += [replace(problem, reason=f"page {index}: {problem.reason}") for problem in found]
    return rows, problems


def _convert_page(pair: Pair, *, page: int | None, image_page: int, mask_page: int, output_dir: Path,
                  raw_dir: Path, image_mode: str, num_classes: int, mask_threshold: int, invert_mask: bool,
                  max_gray_fraction: float, ignore_value=None, palette: Palette | None = None,
                  palette_tolerance: int = 0, white_level: float | None = None, mask_alpha: bool = False,
                  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[dict | None, list[Problem]]:
    """Converts one image and its mask: `page` is the image's number in a stack (None: the file's only
    image), `image_page` and `mask_page` the file pages that hold them (see image_pages).
    Returns (manifest row or None, list of Problem).

    The mask goes through the palette when there is one (colour-coded masks), else through
    `mask_to_class_ids` (values are ids, or thresholded for binary tasks)."""
    problems = []
    try:
        image = open_image(pair.image_path, page=image_page, max_pixels=max_image_pixels)
    except ValueError as err:
        problems.append(Problem(pair.image_path, f"unreadable image: {err}; replace or remove the file"))
    mask_paths, masks = (pair.mask_path, *pair.extra_mask_paths), []
    for mask_path in mask_paths:
        try:
            masks.append(open_image(mask_path, page=mask_page, max_pixels=max_image_pixels))
        except ValueError as err:
            problems.append(Problem(mask_path, f"unreadable mask: {err}; replace or remove the file"))
    if problems:
        return None, problems
    class_ids = []
    for mask_path, raw_mask in zip(mask_paths, masks):
        lossy = raw_mask.format in LOSSY_FORMATS
        upright, mask = _orient_pair(image, raw_mask)
        if upright.size != mask.size:
            return None, [Problem(mask_path, f"size mismatch: mask is {mask.size[0]}x{mask.size[1]} (WxH) "
                                  f"but image '{pair.image_path}' is {upright.size[0]}x{upright.size[1]}; "
                                  "masks must have their image's size")]
        if min(upright.size) < MIN_SIDE:  # after the size check: a mismatch is the more telling problem
            return None, [Problem(pair.image_path, f"image is {upright.size[0]}x{upright.size[1]} pixels; "
                                  f"expected at least {MIN_SIDE}x{MIN_SIDE} (a thumbnail or a placeholder?); "
                                  "replace or remove it")]
        try:
            mask = mask_layer(mask, mask_alpha=mask_alpha)
            if palette is not None:
                class_ids.append(colour_mask_to_class_ids(mask, palette, tolerance=palette_tolerance, lossy=lossy,
                                                          max_off_fraction=max_gray_fraction))
            else:
                class_ids.append(mask_to_class_ids(mask, num_classes=num_classes, threshold=mask_threshold,
                                                   invert=invert_mask, max_gray_fraction=max_gray_fraction,
                                                   lossy=lossy, ignore_value=ignore_value))
        except ValueError as err:
            return None, [Problem(mask_path, str(err))]
    try:
        class_ids = merge_class_ids(class_ids)
    except ValueError as err:
        return None, [Problem(pair.mask_path, f"{err} (merged with {', '.join(p.name for p in mask_paths[1:])})")]
    try:
        pixels = image_to_array(upright, image_mode=image_mode, white_level=white_level)
    except ValueError as err:  # NaN or infinite pixels in a float image
        return None, [Problem(pair.image_path, f"{err}")]
    image_rel, mask_rel = f"images/{pair.id}.png", f"masks/{pair.id}.png"
    write_png(output_dir / image_rel, pixels)
    write_png(output_dir / mask_rel, class_ids)
    on_page = f" (page {page})" if page is not None else ""
    row = {
        "id": pair.id, "split": pair.split, "group": pair.group,
        "image_path": image_rel, "mask_path": mask_rel,
        "height": pixels.shape[0], "width": pixels.shape[1],
        "foreground_fraction": foreground_fraction(class_ids),
        "class_pixels": class_pixels(class_ids),
        "source_image": pair.image_path.relative_to(raw_dir).as_posix() + on_page,
        "source_mask": " + ".join(path.relative_to(raw_dir).as_posix() for path in mask_paths) + on_page,
    }
    return row, []


def convert_all(pairs: list[Pair], *, num_workers: int, **options) -> tuple[list[dict], list[Problem]]:
    """Runs convert_pair over all pairs, in parallel when worthwhile, in input order."""
    results = map_in_order(partial(convert_pair, **options), pairs, num_workers=num_workers, desc="convert-to-png")
    rows = [row for found, _ in results for row in found]
    return rows, [problem for _, found in results for problem in found]


def format_problems(problems: list[Problem], raw_dir: Path) -> str:
    lines = [f"  - {p.path}: {p.reason}" for p in sorted(problems, key=lambda p: (str(p.path), p.reason))]
    return (f"convert-to-png found {len(problems)} problem(s) in '{raw_dir}'; nothing was written:\n"
            + "\n".join(lines)
            + "\nFix or remove these files, or set convert.on_error: skip in params.yaml to skip them "
              "(they are then listed in the skipped-files report).")
