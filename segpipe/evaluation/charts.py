"""Charts that need no network: evaluate's chart tables (confusion cells, IoU histogram), Vega-Lite specs that
mirror the plots declared in dvc.yaml (drawn from the same CSV files), rendered to PNG with vl-convert
(DVC's `dvc plots show` HTML loads Vega from a CDN and shows nothing offline), and evaluate's plot folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import vl_convert

from segpipe.core.outputs import replace_dir, write_bytes, write_csv, write_text
from segpipe.data.balancing import safe_name
from segpipe.data.image_io import write_png
from segpipe.evaluation.overlays import evaluation_overlay


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
    `histogram`: images per IoU bin (`segpipe.evaluation.totals.iou_histogram`), one bar per bin at any number
    of images."""
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
