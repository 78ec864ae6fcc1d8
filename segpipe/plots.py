"""Pictures that need no network: prediction overlays, and charts rendered to PNG from Vega-Lite specs
with vl-convert (DVC's `dvc plots show` HTML loads Vega from a CDN and shows nothing offline).

The specs here mirror the plots declared in dvc.yaml, drawn from the same CSV files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import vl_convert
from PIL import Image, ImageDraw

from segpipe.balancing import safe_name
from segpipe.image_io import IGNORE_ID, write_png
from segpipe.metrics import class_boundary
from segpipe.outputs import replace_dir, write_bytes, write_csv, write_text
from segpipe.palette import VOID_COLOUR, colour_table, display_colours

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


def confusion_cells(matrix: np.ndarray, *, class_names: list[str]) -> pd.DataFrame:
    """actual, predicted, pixels, share (of the true class's pixels) per cell of the exact confusion matrix:
    plots/evaluate/confusion.csv, drawn by the project's DVC template (.dvc/plots/confusion_counts.json)."""
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    return pd.DataFrame([{"actual": class_names[a], "predicted": class_names[p], "pixels": int(matrix[a, p]),
                          "share": round(float(shares[a, p]), 6)}
                         for a in range(len(class_names)) for p in range(len(class_names))])


def iou_histogram(per_image: pd.DataFrame, *, bins: int = 20) -> pd.DataFrame:
    """Validation images per IoU bin (iou = the bin's lower edge, width 1/bins; 1.0 falls in the last bin):
    plots/evaluate/iou_histogram.csv, a chart that stays readable at any number of images."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts, _ = np.histogram(per_image["iou"].to_numpy(float), bins=edges)
    return pd.DataFrame({"iou": np.round(edges[:-1], 6), "images": counts.astype(int)})


def _chart(data: pd.DataFrame, title: str, **spec) -> dict:
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title, "width": 420,
            "height": 280, "data": {"values": json.loads(data.to_json(orient="records"))}, **spec}


def _lines(data: pd.DataFrame, *, x: str, ys: list[str], title: str, y_title: str) -> dict:
    long = data.melt(id_vars=[x], value_vars=ys, var_name="series", value_name="value")
    return _chart(long, title, mark={"type": "line", "point": len(data) < 40},
                  encoding={"x": {"field": x, "type": "quantitative"},
                            "y": {"field": "value", "type": "quantitative", "title": y_title},
                            "color": {"field": "series", "type": "nominal"}})


def chart_specs(*, history: pd.DataFrame | None, sweep: pd.DataFrame, histogram: pd.DataFrame, matrix: np.ndarray,
                class_names: list[str], class_scores: pd.DataFrame | None, best_threshold: float) -> dict[str, dict]:
    """{file stem: Vega-Lite spec} for the main plots. `matrix`: the full (C, C) confusion counts, rows = true;
    `histogram`: images per IoU bin (`segpipe.evaluation.iou_histogram`), one bar per bin at any number of images."""
    specs = {}
    step = float(histogram["iou"].iloc[1] - histogram["iou"].iloc[0]) if len(histogram) > 1 else 1.0
    histogram = histogram.assign(iou_end=(histogram["iou"] + step).round(6))
    if history is not None and not history.empty:
        specs["learning_curves_loss"] = _lines(history, x="epoch", ys=[c for c in ("loss",
                                                                                   "valid_loss") if c in history],
                                               title="Loss per epoch", y_title="loss")
        specs["learning_curves_iou"] = _lines(history, x="epoch", ys=[c for c in ("iou", "valid_iou") if c in history],
                                              title="IoU per epoch", y_title="IoU")
    if not sweep.empty:
        specs["threshold_curve"] = _lines(sweep, x="threshold", ys=["iou", "f1", "precision", "recall"],
                                          title=f"Validation scores by threshold (best {best_threshold:g})",
                                          y_title="score")
        specs["precision_recall"] = _chart(sweep, "Precision-recall (validation, thresholds 0.05-0.95)",
                                           mark={"type": "line", "point": True},
                                           encoding={"x": {"field": "recall", "type": "quantitative",
                                                           "scale": {"domain": [0, 1]}},
                                                     "y": {"field": "precision", "type": "quantitative",
                                                           "scale": {"domain": [0, 1]}},
                                                     "order": {"field": "threshold"},
                                                     "tooltip": [{"field": "threshold"}]})
    cells = confusion_cells(matrix, class_names=class_names)
    axis = {"type": "nominal", "sort": list(class_names)}
    side = max(200, 22 * len(class_names))
    specs["confusion_matrix"] = _chart(
        cells, "Confusion matrix (validation; each row: share of that true class's pixels)", width=side, height=side,
        layer=[{"mark": "rect", "encoding": {"x": {"field": "predicted", **axis}, "y": {"field": "actual", **axis},
                                             "color": {"field": "share", "type": "quantitative",
                                                       "scale": {"domain": [0, 1]}},
                                             "tooltip": [{"field": "pixels"}, {"field": "share"}]}},
               {"mark": {"type": "text", "fontSize": 14 if len(class_names) <= 4 else 9},
                "encoding": {"x": {"field": "predicted", **axis}, "y": {"field": "actual", **axis},
                             "text": {"field": "share", "type": "quantitative", "format": ".2f"},
                             "color": {"condition": {"test": "datum.share > 0.5", "value": "white"},
                                       "value": "black"}}}])
    if class_scores is not None and len(class_scores) > 2:  # binary: valid_iou says it
        long = class_scores.melt(id_vars=["class"], value_vars=["iou", "dice"], var_name="score").dropna()
        specs["class_scores"] = _chart(
            long, "IoU and Dice per class (validation)", mark="bar", height=max(120, 16 * len(class_scores)),
            encoding={"y": {"field": "class", "type": "nominal", "sort": list(class_scores["class"])},
                      "yOffset": {"field": "score"}, "color": {"field": "score", "type": "nominal"},
                      "x": {"field": "value", "type": "quantitative", "scale": {"domain": [0, 1]}}})
    specs["per_image_iou"] = _chart(
        histogram, f"Validation images by IoU ({int(histogram['images'].sum())} images; the worst: worst.csv)",
        mark="bar", encoding={"x": {"field": "iou", "type": "quantitative", "bin": {"binned": True, "step": step},
                                    "scale": {"domain": [0, 1]}, "title": "IoU (bin's lower edge)"},
                              "x2": {"field": "iou_end"},
                              "y": {"field": "images", "type": "quantitative", "title": "images"}})
    return specs


def render_png(spec: dict, path: Path) -> None:
    """One Vega-Lite spec to a PNG file (atomically), offline."""
    write_bytes(path, vl_convert.vegalite_to_png(json.dumps(spec), scale=1.5))


def write_specs(specs: dict[str, dict], folder: Path) -> None:
    for name, spec in specs.items():
        write_text(Path(folder) / f"{name}.vl.json", json.dumps(spec, indent=1))
        render_png(spec, Path(folder) / f"{name}.png")


def write_evaluation_plots(folder: Path, *, sweep: pd.DataFrame, per_image: pd.DataFrame, worst: pd.DataFrame,
                           histogram: pd.DataFrame, confusion: pd.DataFrame, matrix: np.ndarray,
                           class_names: list[str], num_classes: int, class_scores: pd.DataFrame | None,
                           history: pd.DataFrame | None, best_threshold: float,
                           overlays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Replaces `folder` with evaluate's plots: threshold_curve.csv (multi-class: header only), class_scores.csv,
    per_image.csv, worst.csv, iou_histogram.csv, confusion.csv (the exact matrix's cells), overlays/<id>.png
    from {id: (image, predicted ids, true ids)}, and png/ charts."""
    with replace_dir(folder) as tmp:
        # Multi-class (argmax, no threshold): the header alone, so `dvc plots show` draws an empty chart
        # instead of failing to load a plot that dvc.yaml declares.
        write_csv(tmp / "threshold_curve.csv", sweep.round(6) if not sweep.empty else pd.DataFrame(
            columns=["threshold", "iou", "f1", "precision", "recall"]))
        if class_scores is not None:
            write_csv(tmp / "class_scores.csv", class_scores.round(6))
        write_csv(tmp / "per_image.csv", per_image)
        write_csv(tmp / "worst.csv", worst)
        write_csv(tmp / "iou_histogram.csv", histogram)
        write_csv(tmp / "confusion.csv", confusion)
        for row_id, (image, predicted, truth) in sorted(overlays.items()):
            gray_or_color = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
            write_png(tmp / "overlays" / f"{safe_name(row_id)}.png",
                      evaluation_overlay(gray_or_color, predicted, truth, num_classes=num_classes,
                                         class_names=class_names))
        write_specs(chart_specs(history=history, sweep=sweep, histogram=histogram, matrix=matrix,
                                class_names=class_names, class_scores=class_scores, best_threshold=best_threshold),
                    tmp / "png")
