"""Class colours: reading a dataset's palette (colour -> class id), and drawing classes in colour.

A palette comes from `convert.palette`: a list of [r, g, b] in class-id order, or the name of a CSV or
JSON file in the raw data folder (`class_dict.csv`). The CSV has columns name, r, g, b, one row per
class in class-id order (the format many datasets ship); the JSON is {"name": [r, g, b], ...} in
class-id order, or a list of [r, g, b]. An entry whose colour is `convert.ignore_value` (a colour
here) is void, not a class: the other entries are numbered 0, 1, ... in their order.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.data.image_io import IGNORE_ID

# Display colours for classes 0, 1, ... (overlays, predict's colour masks): distinct hues, readable on
# gray images; cycled when there are more classes.
DISPLAY_COLOURS = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (255, 255, 255)], np.uint8)
VOID_COLOUR = (128, 128, 128)


@dataclass(frozen=True)
class Palette:
    colours: np.ndarray   # (K, 3) uint8, every colour that may appear in a mask
    class_ids: np.ndarray  # (K,) uint8: the class id of each colour, IGNORE_ID for void


def _colour(value, where: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise ValueError(f"{where}: expected a colour [r, g, b] of integers 0..255, got {value!r}.")
    return tuple(value)


def _read_file(path: Path) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) entries of a palette CSV or JSON file, in file order."""
    if not path.is_file():
        raise ValueError(f"param 'convert.palette': palette file '{path}' not found; put it in the raw data "
                         "folder (the name is relative to it), or give the colours as a list of [r, g, b].")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"palette file '{path}' is not valid JSON: {err}.") from None
        items = data.items() if isinstance(data, dict) else (("", c) for c in data) if isinstance(data, list) else None
        if items is None:
            raise ValueError(f"palette file '{path}': expected {{\"name\": [r, g, b], ...}} or a list of [r, g, b].")
        return [(str(name), _colour(colour, f"palette file '{path}', entry {name or index}"))
                for index, (name, colour) in enumerate(items)]
    if path.suffix.lower() != ".csv":
        raise ValueError(f"palette file '{path}': expected a .csv (name, r, g, b) or .json file.")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    if not rows or not {"r", "g", "b"} <= set(columns):
        raise ValueError(f"palette file '{path}': expected a header with columns name, r, g, b and one row per "
                         f"class; found columns {sorted(columns) or 'none'}.")
    entries = []
    for line, row in enumerate(rows, start=2):
        try:
            colour = tuple(int(row[columns[c]]) for c in "rgb")
        except (TypeError, ValueError):
            raise ValueError(f"palette file '{path}', line {line}: r, g, b must be integers, got "
                             f"{[row[columns[c]] for c in 'rgb']}.") from None
        entries.append((row[columns["name"]].strip() if "name" in columns else "",
                        _colour(list(colour), f"palette file '{path}', line {line}")))
    return entries


def load_palette(value, *, raw_dir: Path, num_classes: int, ignore_value) -> Palette | None:
    """The palette `convert.palette` describes, checked against num_classes; None when it is null.

    Args:
        value: None, a list of [r, g, b] (class-id order), or a CSV/JSON file name inside raw_dir.
        num_classes: 1 (binary: the palette needs 2 classes, background then foreground) or the count.
        ignore_value: None, or a colour [r, g, b] for void pixels (in the palette or not).
    """
    if value is None:
        return None
    if isinstance(value, str):
        entries = _read_file(Path(raw_dir) / value)
    elif isinstance(value, list):
        entries = [("", _colour(c, f"param 'convert.palette[{i}]'")) for i, c in enumerate(value)]
    else:
        raise ValueError(f"param 'convert.palette' must be null, a list of [r, g, b] or a file name, got {value!r}.")
    if ignore_value is not None and not isinstance(ignore_value, list):
        raise ValueError(f"param 'convert.ignore_value' is {ignore_value!r}, but with convert.palette the void "
                         "pixels are a colour: give it as [r, g, b], or null.")
    void = _colour(ignore_value, "param 'convert.ignore_value'") if ignore_value is not None else None
    seen = {}
    for name, colour in entries:
        if colour in seen:
            raise ValueError(f"param 'convert.palette': colour {list(colour)} is given twice ({seen[colour]!r} and "
                             f"{name!r}); each colour must mean one class.")
        seen[colour] = name
    if void is not None and void not in seen:
        entries.append(("void", void))
    ids, next_id = [], 0
    for _, colour in entries:
        ids.append(IGNORE_ID if colour == void else next_id)
        next_id += colour != void
    expected = 2 if num_classes == 1 else num_classes
    if next_id != expected:
        raise ValueError(f"param 'convert.palette' has {next_id} class colour(s) (void excluded) but num_classes is "
                         f"{num_classes}, which needs {expected}" + (" (background, foreground)" if num_classes == 1
                                                                      else "") + "; make them agree.")
    return Palette(np.array([c for _, c in entries], np.uint8), np.array(ids, np.uint8))


def colour_mask_to_class_ids(im: Image.Image, palette: Palette, *, tolerance: int, lossy: bool,
                             max_off_fraction: float = 0.0) -> np.ndarray:
    """A colour-coded mask -> uint8 class ids (H, W), void IGNORE_ID.

    Lossless masks must use the palette's colours exactly. Lossy ones (JPEG) take the nearest palette
    colour; JPEG's chroma subsampling blends colours along every class edge, so up to
    `max_off_fraction` of the pixels may lie farther than `tolerance` (on some channel) from every
    palette colour, as mid-gray pixels may in a binary JPEG mask. Beyond that, or any off colour in a
    lossless mask, raises ValueError naming each colour (most pixels first) and its pixel count.
    """
    rgb = np.asarray(im.convert("RGB"), np.uint8)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    colours = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1)
    distance = np.abs(colours[:, None, :] - palette.colours[None, :, :].astype(np.int32)).max(axis=2)
    nearest = distance.argmin(axis=1)
    unknown = distance[np.arange(len(unique)), nearest] > (tolerance if lossy else 0)
    off_fraction = counts[unknown].sum() / packed.size
    if unknown.any() and (not lossy or off_fraction > max_off_fraction):
        order = np.argsort(-counts[unknown], kind="stable")
        found = [f"{tuple(int(c) for c in colours[unknown][i])} in {int(counts[unknown][i])} pixels" for i in order]
        raise ValueError(
            f"{len(found)} colour(s) not in convert.palette: {', '.join(found[:8])}"
            + (", ..." if len(found) > 8 else "")
            + ("" if not lossy else f" (lossy file: {off_fraction:.1%} of its pixels are not within "
               f"convert.palette_tolerance={tolerance} of a palette colour, more than "
               f"convert.max_gray_fraction={max_off_fraction})")
            + "; add them to the palette (or set convert.ignore_value to a colour that means void)")
    return palette.class_ids[nearest][inverse].reshape(packed.shape).astype(np.uint8)


def display_colours(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 colours for classes 0..C-1; binary: black background, green foreground."""
    if num_classes == 1:
        return np.array([(0, 0, 0), (0, 200, 0)], np.uint8)
    return DISPLAY_COLOURS[np.arange(num_classes) % len(DISPLAY_COLOURS)]


def colour_table(num_classes: int) -> np.ndarray:
    """(256, 3) uint8: the display colour of every possible mask value; void (and any id beyond the classes) gray."""
    table = np.tile(np.asarray(VOID_COLOUR, np.uint8), (256, 1))
    colours = display_colours(num_classes)
    table[:len(colours)] = colours
    return table


def colour_mask(class_ids: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Class ids (H, W) -> RGB uint8 (H, W, 3) in the display colours, void gray."""
    return colour_table(num_classes)[class_ids]
