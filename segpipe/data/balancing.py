"""Stratification and balancing keys shared by build-csv, split-balanced, augment and train.

A row's balancing subset is its `group` when the data has several groups, otherwise the quantile bin
of its `foreground_fraction` (so that images with tiny objects are not drowned by those with large ones),
or, for multi-class data, its rarest class: the class present in the image (any pixel) that has the
fewest pixels in the whole training split. Every street scene holds sky, road and buildings; what sets
one apart is the bicyclist or the sign it also holds; sampling by that is meant to keep rare classes in
sight (opt-in: on CamVid it did not beat foreground bins, see docs/results.md).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.core.outputs import replace_dir, write_csv, write_json
from segpipe.data.rows import check_files, class_pixel_table, read_rows

AUGMENTED_ID = "__aug"  # augment names copies <id>__augNN (stages/augment.py)


def augmented_id(row_id: str, copy: int) -> str:
    """The id of augment's copy number `copy` of row `row_id` (`AUGMENTED_ID` marks it as a copy)."""
    return f"{row_id}{AUGMENTED_ID}{copy:02d}"


def source_id(row_id: str) -> str:
    """The id of the row an augmented copy was made from (`augmented_id` undone); an original's own id."""
    return str(row_id).rsplit(AUGMENTED_ID, 1)[0]

# More groups than this are not balanced one stream each (a tf.data stream per group: 5,000 patient folders
# would be 5,000 streams, each with its own shuffle buffer); split-balanced bins them by foreground instead.
MAX_GROUP_SUBSETS = 64


def foreground_bin_edges(foreground_fraction: pd.Series, *, num_bins: int) -> list[float]:
    """Interior quantile edges of `foreground_fraction` for `num_bins` bins (fewer when values tie).

    Returns:
        Sorted, unique edges; bin i holds values v with edges[i-1] <= v < edges[i].
    """
    quantiles = np.quantile(foreground_fraction.to_numpy(dtype=float), np.linspace(0, 1, num_bins + 1)[1:-1])
    edges = sorted(set(round(float(q), 6) for q in quantiles))
    return [e for e in edges if e > float(foreground_fraction.min())]


def foreground_bins(foreground_fraction: pd.Series, edges: list[float]) -> np.ndarray:
    """The bin index (int, 0..len(edges)) of each value, with the edges of `foreground_bin_edges`."""
    return np.searchsorted(np.asarray(edges, dtype=float), foreground_fraction.to_numpy(dtype=float), side="right")


def rarest_classes(table: np.ndarray) -> np.ndarray:
    """Each row's rarest present class (int), from a (rows, classes) `class_pixel_table`: the class with
    pixels in the row and the fewest in all rows together."""
    totals = table.sum(axis=0).astype(np.float64)
    # A row with no labelled pixel has no class; it joins the subset of the most common class.
    scores = np.where(table > 0, totals[None, :], np.inf)
    return np.where(np.isfinite(scores).any(axis=1), scores.argmin(axis=1), int(np.argmax(totals)))


def safe_name(text: str) -> str:
    """A file-name-safe version of a group name ("left/hand 1" -> "left_hand_1")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"


def assign_subsets(rows: pd.DataFrame, summary: dict, *,
                   originals: list[pd.DataFrame] | None = None) -> list[pd.DataFrame]:
    """Splits rows (original + augmented) into the subsets of data/subsets.json, in its order.

    Rows go to the subset of their group (key "group"), of their foreground bin (key "foreground"), or
    (key "rarest_class") augmented rows go with the image they were made from (in `originals`, the subsets'
    rows): a crop may lose the rare class, but it is still a view of the image that was picked for it.
    """
    if summary["key"] == "rarest_class":
        subset_of = {row_id: index for index, frame in enumerate(originals or []) for row_id in frame["id"]}
        labels = np.array([subset_of.get(source_id(row_id), -1) for row_id in rows["id"]])
        names = list(range(len(summary["subsets"])))
    elif summary["key"] == "group":
        labels = rows["group"].astype(str).to_numpy()
        names = [s["name"] for s in summary["subsets"]]
    else:
        labels = foreground_bins(rows["foreground_fraction"], summary["bin_edges"])
        names = [int(s["name"].rsplit("_", 1)[1]) for s in summary["subsets"]]
    unknown = sorted(set(map(str, labels)) - set(map(str, names)))
    if unknown:
        raise ValueError(f"rows with subset {unknown} not in data/subsets.json; rerun split-balanced (dvc repro).")
    return [rows[labels == name].reset_index(drop=True) for name in names]


def split_into_subsets(train: pd.DataFrame, *, key: str, num_bins: int,
                       num_classes: int = 1) -> tuple[dict, list[pd.DataFrame]]:
    """Returns (summary dict, subset frames in summary order): the contract in stages/split_balanced.py."""
    groups = train["group"].nunique()
    if key == "auto":
        # Multi-class too: on CamVid (bench/quality.py, 8 min) rarest_class did not beat foreground bins.
        key = "group" if groups > 1 else "foreground"
    if key == "group" and groups > MAX_GROUP_SUBSETS:
        print(f"split-balanced: {groups} groups are more than {MAX_GROUP_SUBSETS} balancing streams; "
              f"balancing by {num_bins} foreground-fraction bins instead")
        key = "foreground"
    edges = None
    class_table = class_pixel_table(train, num_classes=num_classes)
    class_totals = class_table.sum(axis=0)
    if key == "rarest_class":
        labels = pd.Series(rarest_classes(class_table), index=train.index)
        names = sorted(labels.unique(), key=lambda c: (class_totals[c], c))  # rarest first
    elif key == "group":
        labels = train["group"].astype(str)
        names = sorted(labels.unique())
    else:
        edges = foreground_bin_edges(train["foreground_fraction"], num_bins=num_bins)
        labels = pd.Series(foreground_bins(train["foreground_fraction"], edges), index=train.index)
        names = sorted(labels.unique())
    subsets, frames = [], []
    for index, name in enumerate(names):
        frame = train[labels == name].sort_values("id")
        display = {"group": str(name), "rarest_class": f"rarest_class_{name}"}.get(key, f"foreground_bin_{name}")
        subsets.append({
            "name": display, "file": f"{index:02d}_{safe_name(display)}.csv", "rows": len(frame),
            "groups": sorted(frame["group"].astype(str).unique()),
            "foreground_min": float(frame["foreground_fraction"].min()),
            "foreground_max": float(frame["foreground_fraction"].max()),
        })
        frames.append(frame)
    summary = {"key": key, "bin_edges": edges, "class_pixels": [int(c) for c in class_totals],
               "total_rows": len(train), "subsets": subsets}
    return summary, frames


def write_subsets(train: pd.DataFrame, *, output_dir: Path, summary_path: Path, key: str, num_bins: int,
                  num_classes: int) -> dict:
    """`split_into_subsets`, written: one CSV per subset in `output_dir` (replaced), the summary JSON at
    `summary_path`; returns the summary."""
    summary, frames = split_into_subsets(train, key=key, num_bins=num_bins, num_classes=num_classes)
    with replace_dir(output_dir) as tmp_dir:
        for subset, frame in zip(summary["subsets"], frames):
            write_csv(tmp_dir / subset["file"], frame)
    write_json(summary_path, summary)
    return summary


def training_subsets(summary_path: Path, subsets_dir: Path, augmented_csv: Path) -> tuple[dict, list[pd.DataFrame]]:
    """(the subsets summary, one frame per subset of its original + augmented rows), none empty."""
    if not Path(summary_path).is_file():
        raise ValueError(f"'{summary_path}' not found; run the split-balanced stage first (dvc repro).")
    summary = json.loads(Path(summary_path).read_text())
    originals = [read_rows(Path(subsets_dir) / subset["file"]) for subset in summary["subsets"]]
    augmented = read_rows(augmented_csv, made_by="the augment stage")
    extra = assign_subsets(augmented, summary, originals=originals) if len(augmented) else [augmented] * len(originals)
    subsets = [pd.concat([o, a], ignore_index=True) for o, a in zip(originals, extra)]
    empty = [s["file"] for s, rows in zip(summary["subsets"], subsets) if rows.empty]
    if empty:
        raise ValueError(f"subset file(s) {empty} in '{subsets_dir}' have no rows; rerun split-balanced (dvc repro).")
    return summary, subsets


def training_rows(*, summary_path: Path, subsets_dir: Path, augmented_csv: Path, valid_csv: Path,
                  sampling_weights: list[float] | None) -> tuple[dict, list[pd.DataFrame], pd.DataFrame]:
    """What train reads, checked: (subsets summary, training rows per subset, validation rows).

    Raises ValueError for an empty subset or validation split, a listed file that is missing or not a PNG,
    and `train.sampling_weights` of the wrong length."""
    summary, subsets = training_subsets(summary_path, subsets_dir, augmented_csv)
    valid = read_rows(valid_csv, made_by="the build-csv stage")
    if valid.empty:
        raise ValueError(f"'{valid_csv}' has no rows; training needs validation images to pick the best "
                         "epoch. Raise build_csv.valid_fraction or add a valid/ folder to data/raw.")
    check_files(pd.concat(subsets, ignore_index=True), source="the training CSVs")
    check_files(valid, source=str(valid_csv))
    if sampling_weights is not None and len(sampling_weights) != len(subsets):
        raise ValueError(f"param 'train.sampling_weights' has {len(sampling_weights)} weights but "
                         f"{summary_path} lists {len(subsets)} subsets "
                         f"({[s['name'] for s in summary['subsets']]}); give one weight each, or null for equal.")
    return summary, subsets, valid
