"""split-balanced: split train.csv into balancing subsets for weighted sampling.

Reads:   --train-csv (from build-csv).
Writes:  --output-dir/<NN>_<name>.csv, one per subset, same columns as train.csv;
         --summary JSON: {"key": "group" | "foreground" | "rarest_class", "bin_edges": [...] (foreground
                          key only), "class_pixels": [...] (training pixels per class), "total_rows": N,
                          "subsets": [{"name", "file", "rows", "groups", "foreground_min",
                          "foreground_max"}, ...]} in file order.
Params:  num_classes; split_balanced.key (auto | group | foreground | rarest_class), split_balanced.num_bins.

Contract with train: the input pipeline builds one repeated, shuffled dataset per subset file listed
in the summary and draws from them with `tf.data.Dataset.sample_from_datasets` (weights from the
train params, equal by default), so a small group is seen as often as a large one. Augmented rows are
assigned to subsets by the same key: their group, or their foreground_fraction binned with
`bin_edges` (segpipe.data.balancing.foreground_bins); with rarest_class they go with their source image.
`key: auto` means group when train.csv has more than one group, otherwise foreground-fraction quantile
bins (also for multi-class data: measured on CamVid, rarest_class did not do better; docs/results.md).
More groups than segpipe.data.balancing.MAX_GROUP_SUBSETS (auto or group) are binned by foreground instead,
with a line in the log: one tf.data stream per group does not scale to thousands of patients.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from segpipe.core.cli import describe, run_stage
from segpipe.core.outputs import replace_dir, write_csv, write_json
from segpipe.core.params import Params
from segpipe.data.balancing import MAX_GROUP_SUBSETS, foreground_bin_edges, foreground_bins, rarest_classes, safe_name
from segpipe.data.rows import class_pixel_table, read_rows


def split_into_subsets(train: pd.DataFrame, *, key: str, num_bins: int,
                       num_classes: int = 1) -> tuple[dict, list[pd.DataFrame]]:
    """Returns (summary dict, subset frames in summary order). See the module docstring."""
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--train-csv", type=Path, required=True, help="train.csv from build-csv")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for one CSV per balancing subset")
    parser.add_argument("--summary", type=Path, required=True, help="subsets.json to write")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    args = parser.parse_args(argv)
    all_params = Params(args.params)
    params = all_params.section("split_balanced")
    num_classes = all_params.shared("num_classes")

    train = read_rows(args.train_csv, made_by="the build-csv stage")
    if train.empty:
        raise ValueError(f"'{args.train_csv}' has no rows; there is nothing to train on.")
    if params["key"] == "group" and train["group"].nunique() < 2:
        print("split-balanced: warning: key 'group' but train.csv has a single group; one subset")
    if params["key"] == "rarest_class" and num_classes == 1:
        raise ValueError("param 'split_balanced.key' is rarest_class, which needs a multi-class task "
                         "(num_classes > 1); "
                         "use foreground (or auto) for binary masks.")
    summary, frames = split_into_subsets(train, key=params["key"], num_bins=params["num_bins"], num_classes=num_classes)
    with replace_dir(args.output_dir) as tmp_dir:
        for subset, frame in zip(summary["subsets"], frames):
            write_csv(tmp_dir / subset["file"], frame)
    write_json(args.summary, summary)
    counts = ", ".join(f"{s['name']}={s['rows']}" for s in summary["subsets"])
    print(f"split-balanced: key '{summary['key']}', {len(frames)} subsets ({counts})")


if __name__ == "__main__":
    run_stage("split-balanced", main)
