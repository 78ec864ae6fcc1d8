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

from segpipe.balancing import safe_name
from segpipe.image_io import write_png
from segpipe.outputs import replace_dir, write_bytes, write_csv, write_text

TRUE_POSITIVE = (0, 200, 0)     # green: foreground found
FALSE_POSITIVE = (255, 40, 40)  # red: predicted foreground that is background
FALSE_NEGATIVE = (40, 90, 255)  # blue: missed foreground


def overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray, *, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 picture: the image in gray, TP / FP / FN pixels tinted green / red / blue."""
    gray = image if image.ndim == 2 else image[..., :3].mean(axis=-1)
    base = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=-1)
    out = base.copy()
    for where, colour in ((predicted & truth, TRUE_POSITIVE), (predicted & ~truth, FALSE_POSITIVE),
                          (~predicted & truth, FALSE_NEGATIVE)):
        out[where] = (1 - alpha) * base[where] + alpha * np.asarray(colour, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _chart(data: pd.DataFrame, title: str, **spec) -> dict:
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title, "width": 420,
            "height": 280, "data": {"values": json.loads(data.to_json(orient="records"))}, **spec}


def _lines(data: pd.DataFrame, *, x: str, ys: list[str], title: str, y_title: str) -> dict:
    long = data.melt(id_vars=[x], value_vars=ys, var_name="series", value_name="value")
    return _chart(long, title, mark={"type": "line", "point": len(data) < 40},
                  encoding={"x": {"field": x, "type": "quantitative"},
                            "y": {"field": "value", "type": "quantitative", "title": y_title},
                            "color": {"field": "series", "type": "nominal"}})


def chart_specs(*, history: pd.DataFrame | None, sweep: pd.DataFrame, per_image: pd.DataFrame,
                confusion: pd.DataFrame, best_threshold: float) -> dict[str, dict]:
    """{file stem: Vega-Lite spec} for the main plots."""
    specs = {}
    if history is not None and not history.empty:
        specs["learning_curves_loss"] = _lines(history, x="epoch", ys=[c for c in ("loss", "valid_loss") if c in history],
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
    counts = confusion.value_counts(["actual", "predicted"]).rename("pixels").reset_index()
    specs["confusion_matrix"] = _chart(
        counts, "Confusion matrix (pixel sample, validation)", width=280, height=280,
        layer=[{"mark": "rect", "encoding": {"x": {"field": "predicted", "type": "nominal"},
                                             "y": {"field": "actual", "type": "nominal"},
                                             "color": {"field": "pixels", "type": "quantitative"}}},
               {"mark": {"type": "text", "fontSize": 14},
                "encoding": {"x": {"field": "predicted", "type": "nominal"}, "y": {"field": "actual", "type": "nominal"},
                             "text": {"field": "pixels", "type": "quantitative"},
                             "color": {"condition": {"test": f"datum.pixels > {int(counts['pixels'].max()) // 2}",
                                                     "value": "white"}, "value": "black"}}}])
    specs["per_image_iou"] = _chart(per_image[["id", "group", "iou"]], "IoU per validation image",
                                    mark="bar", height=max(120, 14 * len(per_image)),
                                    encoding={"y": {"field": "id", "type": "nominal", "sort": "x"},
                                              "x": {"field": "iou", "type": "quantitative",
                                                    "scale": {"domain": [0, 1]}},
                                              "color": {"field": "group", "type": "nominal"}})
    return specs


def render_png(spec: dict, path: Path) -> None:
    """One Vega-Lite spec to a PNG file (atomically), offline."""
    write_bytes(path, vl_convert.vegalite_to_png(json.dumps(spec), scale=1.5))


def write_specs(specs: dict[str, dict], folder: Path) -> None:
    for name, spec in specs.items():
        write_text(Path(folder) / f"{name}.vl.json", json.dumps(spec, indent=1))
        render_png(spec, Path(folder) / f"{name}.png")


def write_evaluation_plots(folder: Path, *, sweep: pd.DataFrame, per_image: pd.DataFrame, worst: pd.DataFrame,
                           confusion: pd.DataFrame, history: pd.DataFrame | None, best_threshold: float,
                           overlays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Replaces `folder` with evaluate's plots: threshold_curve.csv (binary), per_image.csv, worst.csv,
    confusion.csv, overlays/<id>.png from {id: (image, predicted mask, true mask)}, and png/ charts."""
    with replace_dir(folder) as tmp:
        if not sweep.empty:
            write_csv(tmp / "threshold_curve.csv", sweep.round(6))
        write_csv(tmp / "per_image.csv", per_image)
        write_csv(tmp / "worst.csv", worst)
        write_csv(tmp / "confusion.csv", confusion)
        for row_id, (image, predicted, truth) in sorted(overlays.items()):
            gray_or_color = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
            write_png(tmp / "overlays" / f"{safe_name(row_id)}.png", overlay(gray_or_color, predicted, truth))
        write_specs(chart_specs(history=history, sweep=sweep, per_image=per_image, confusion=confusion,
                                best_threshold=best_threshold), tmp / "png")
