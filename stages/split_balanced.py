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

from segpipe.core.cli import describe, run_stage
from segpipe.core.params import Params
from segpipe.data.balancing import write_subsets
from segpipe.data.rows import read_rows


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
    summary = write_subsets(train, output_dir=args.output_dir, summary_path=args.summary, key=params["key"],
                            num_bins=params["num_bins"], num_classes=num_classes)
    counts = ", ".join(f"{s['name']}={s['rows']}" for s in summary["subsets"])
    print(f"split-balanced: key '{summary['key']}', {len(summary['subsets'])} subsets ({counts})")


if __name__ == "__main__":
    run_stage("split-balanced", main)
