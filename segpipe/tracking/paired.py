"""The report's paired comparison: two runs' per-image tables (plots/evaluate/per_image.csv) matched by id,
each headline score's difference with its 95% paired bootstrap interval (segpipe/evaluation/intervals.py) and
a verdict, better, worse or "within noise", and the gate rule on it."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pandas as pd

from segpipe.evaluation import intervals

PER_IMAGE = "plots/evaluate/per_image.csv"
OOF_PER_IMAGE = "plots/evaluate/oof_per_image.csv"  # cross-validation: every train + valid image, out of fold
# The scores compared image by image (paired bootstrap; per_image.csv holds their parts), in this order.
PAIRED = ("valid_iou", "valid_dice", "valid_iou_at_best_threshold", "valid_mean_iou", "valid_mean_dice",
          "valid_image_mean_iou", "valid_image_mean_boundary_f")
PAIRED_RESAMPLES = 2000


def read_per_image(folder: Path | None = None, *, rev: str | None = None,
                   path: str = PER_IMAGE) -> pd.DataFrame | None:
    """A side's per-image table: `path` in the workspace `folder`, or as committed at git revision `rev`; None
    when there is none."""
    if rev is not None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        return pd.read_csv(io.StringIO(done.stdout)) if done.returncode == 0 and done.stdout.strip() else None
    file = (folder or Path(".")) / path
    return pd.read_csv(file) if file.is_file() else None


def paired_rows(new: pd.DataFrame | None, old: pd.DataFrame | None, *, resamples: int = PAIRED_RESAMPLES,
                seed: int = 0, by_group: bool = False, split: str = "valid"
                ) -> tuple[list[tuple[str, float, float, float, str]], str]:
    """([(metric, this - base, low, high, verdict)] for the PAIRED metrics both per-image tables hold, a note on
    the images compared); no rows, and the note says why, when a side has no table or they share no image.
    `split`: "valid" (per_image.csv) or "oof" (oof_per_image.csv: the metrics are named oof_iou, ...)."""
    if new is None or old is None:
        missing = "this change" if new is None else "the base"
        return [], (f"No paired comparison: {missing} has no per-image scores (plots/evaluate/per_image.csv with "
                    "pixel counts, written by evaluate since 0.6.0); rerun `dvc repro` there.")
    common = set(new["id"]) & set(old["id"])
    images = "validation image" if split == "valid" else "out-of-fold image (train + valid, predicted by the fold "
    images += "" if split == "valid" else "model that did not train on it)"
    if not common:
        return [], f"No paired comparison: the two sides scored no {images.split(' (')[0]} in common (another split)."
    rows = []
    for metric in (f"{split}_{name.removeprefix('valid_')}" for name in PAIRED):
        score = metric.removeprefix(f"{split}_").removesuffix("_at_best_threshold")
        suffix = "" if metric.endswith("_at_best_threshold") or "tp" not in new else "_at_0.5"
        found = intervals.paired_difference(new, old, score, suffix=suffix, resamples=resamples, seed=seed,
                                            by_group=by_group)
        if found is not None:
            rows.append((metric, *found, intervals.verdict(found[1], found[2])))
    if not rows:
        return [], ("No paired comparison: a side's plots/evaluate/per_image.csv has no per-image pixel counts "
                    "(written by evaluate since 0.6.0); rerun `dvc repro` there.")
    unit = "whole groups of images (`group`)" if by_group else "images"
    note = (f"Paired on the {len(common)} {images.replace('image', 'images', 1)} both sides scored (matched by "
            f"id; 95% BCa bootstrap "
            f"interval of the difference over {unit}, {resamples} resamples): \"within noise\" when it holds 0.")
    if len(common) < max(len(new), len(old)):
        note += f" The base scored {len(old)} images and this change {len(new)}: only the shared ones count here."
    return rows, note


def paired_table(rows: list[tuple[str, float, float, float, str]]) -> str:
    lines = ["| metric | this − base | 95% interval | verdict |", "|---|---:|---:|---|"]
    lines += [f"| `{metric}` | {difference:+.4f} | [{low:+.4f}, {high:+.4f}] | {word} |"
              for metric, difference, low, high, word in rows]
    return "\n".join(lines)


def paired_gate(paired: list, *, metric: str, tolerance: float) -> tuple[bool, str] | None:
    """(passed, message): fails only when the whole interval of the paired difference of `metric` lies below
    -`tolerance`, i.e. the drop is larger than the tolerance beyond the noise; None when `metric` has no
    paired row."""
    for name, difference, low, high, word in paired:
        if name == metric:
            where = f"`{metric}` {difference:+.4f} [{low:+.4f}, {high:+.4f}] ({word})"
            if high < -tolerance:
                return False, (f"gate FAILED: {where}: the whole interval of the paired difference lies below "
                               f"-{tolerance} (tolerance).")
            return True, f"gate passed: {where}; fails only when the whole interval lies below -{tolerance}."
    return None
