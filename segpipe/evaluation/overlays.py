"""Pictures of images and masks: prediction overlays (binary: hits, false alarms and misses in colour;
multi-class: truth beside prediction in the class colours, with a legend) and preflight's contact sheet of
training pairs with their mask outlines."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from segpipe.data.image_io import IGNORE_ID
from segpipe.data.palette import VOID_COLOUR, colour_table, display_colours
from segpipe.evaluation.metrics import class_boundary

TRUE_POSITIVE = (0, 200, 0)     # green: foreground found
FALSE_POSITIVE = (255, 40, 40)  # red: predicted foreground that is background
FALSE_NEGATIVE = (40, 90, 255)  # blue: missed foreground


def _gray_base(image: np.ndarray) -> np.ndarray:
    gray = image if image.ndim == 2 else image[..., :3].mean(axis=-1)
    return np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)


def _tint(base: np.ndarray, where: np.ndarray, colour, alpha: float) -> None:
    base[where] = (1 - alpha) * base[where] + alpha * np.asarray(colour, np.float32)


def overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, *, labelled: np.ndarray | None = None,
            alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 picture: the image in gray, TP / FP / FN pixels tinted green / red / blue, void gray."""
    out = _gray_base(image)
    for where, colour in ((predicted & truth, TRUE_POSITIVE), (predicted & ~truth, FALSE_POSITIVE),
                          (~predicted & truth, FALSE_NEGATIVE)):
        _tint(out, where, colour, alpha)  # the three regions are disjoint: each tints untouched pixels
    if labelled is not None:
        _tint(out, ~labelled, VOID_COLOUR, 0.8)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def class_overlay(image: np.ndarray, ids: np.ndarray, *, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 picture: the image in gray, each pixel tinted with its class's display colour, void gray."""
    out = _gray_base(image)
    colours = colour_table(num_classes)
    for class_id in np.unique(ids):
        if num_classes == 1 and class_id == 0:
            continue  # binary: the background stays the image
        _tint(out, ids == class_id, colours[class_id], 0.8 if class_id == IGNORE_ID else alpha)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def legend(class_names: list[str], *, width: int, void: bool) -> np.ndarray:
    """A strip (RGB uint8) of colour swatches and class names, in rows as wide as `width`."""
    entries = list(zip(class_names, display_colours(len(class_names)).tolist()))  # multi-class only
    entries += [("void", list(VOID_COLOUR))] if void else []
    cell_width = 12 + 8 + 6 * max(len(name) for name, _ in entries) + 12
    per_row = max(1, width // cell_width)
    rows = -(-len(entries) // per_row)
    strip = Image.new("RGB", (width, 18 * rows + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for index, (name, colour) in enumerate(entries):
        x, y = (index % per_row) * cell_width + 4, (index // per_row) * 18 + 4
        draw.rectangle([x, y, x + 11, y + 11], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + 16, y), name, fill=(0, 0, 0))
    return np.asarray(strip)


def evaluation_overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, *, num_classes: int,
                       class_names: list[str]) -> np.ndarray:
    """The overlay evaluate draws. Binary: TP/FP/FN tints on the image (void gray). Multi-class: truth (left)
    and prediction (right) in the class colours, side by side, above a legend of the classes."""
    labelled = truth != IGNORE_ID
    if num_classes == 1:
        return overlay(image, predicted == 1, truth == 1, labelled=labelled)
    gap = np.full((truth.shape[0], 4, 3), 255, np.uint8)
    pictures = np.concatenate([class_overlay(image, truth, num_classes=num_classes), gap,
                               class_overlay(image, predicted, num_classes=num_classes)],
                              axis=1)
    return np.concatenate([pictures, legend(class_names, width=pictures.shape[1], void=not labelled.all())], axis=0)


def outlined(image: np.ndarray, ids: np.ndarray, *, num_classes: int) -> np.ndarray:
    """RGB uint8 picture: the image with the mask's region outlines drawn on it, each in its class's colour
    (binary: the foreground's outline in yellow), void tinted gray. Outlines show alignment and polarity
    without hiding the pixels inside."""
    out = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3].copy()
    out = out.astype(np.float32)
    _tint(out, ids == IGNORE_ID, VOID_COLOUR, 0.6)
    edge = class_boundary(ids)
    colours = colour_table(num_classes)
    if num_classes == 1:  # the inner side of a foreground edge; yellow shows on gray, green and red images
        out[edge & (ids == 1)] = (255, 230, 0)
    else:
        for class_id in np.unique(ids[edge]):
            if class_id != IGNORE_ID:
                out[edge & (ids == class_id)] = colours[class_id]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def contact_sheet(pairs: list[tuple[str, np.ndarray, np.ndarray]], *, num_classes: int, tile: int = 224,
                  columns: int = 4) -> np.ndarray:
    """A grid of (name, image, class-id mask) pairs, each drawn by `outlined` at most `tile` pixels on its longer
    side (the mask resized with nearest), its name underneath. RGB uint8."""
    cells = []
    for name, image, ids in pairs:
        scale = tile / max(ids.shape)
        size = (max(1, round(ids.shape[1] * scale)), max(1, round(ids.shape[0] * scale)))
        picture = np.asarray(Image.fromarray(image).convert("RGB").resize(size, Image.BILINEAR))
        small = np.asarray(Image.fromarray(ids).resize(size, Image.NEAREST))
        cell = Image.new("RGB", (tile, tile + 14), (255, 255, 255))
        cell.paste(Image.fromarray(outlined(picture, small, num_classes=num_classes)), (0, 0))
        ImageDraw.Draw(cell).text((2, tile + 1), name[-36:], fill=(0, 0, 0))
        cells.append(np.asarray(cell))
    rows = -(-len(cells) // columns)
    sheet = np.full((rows * (tile + 18), min(columns, len(cells)) * (tile + 4), 3), 255, np.uint8)
    for index, cell in enumerate(cells):
        y, x = (index // columns) * (tile + 18), (index % columns) * (tile + 4)
        sheet[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    return sheet


