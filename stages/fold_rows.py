"""fold-rows: the rows of one cross-validation fold (stage fold-rows@<k>, one per item of cv.folds).

Reads:   --csv-dir/{train,valid}.csv (build-csv), --augmented-csv (augment's copies of train.csv's rows) and
         the PNGs they list.
Writes:  --output-dir/ (replaced whole): folds.csv (id, fold: every train and valid row's fold), train.csv and
         valid.csv (this fold's training rows and its held-out rows, build-csv's columns), subsets.json and
         subsets/ (balancing subsets of the training rows, as split-balanced writes them), augmented/ (copies
         of the training rows that came from valid.csv, which the augment stage never saw) and augmented.csv
         (augment's copies of the training rows from train.csv, then those: train's --augmented-csv).
Params:  seed, num_classes, build_csv.split_by, build_csv.stratify_bins, split_balanced.*, augment.*, cv.folds.

The folds share out train.csv and valid.csv together (a test split stays out of every fold): seeded, stratified
as build-csv's split is, or whole groups per fold with build_csv.split_by: group (segpipe/data/splitting.py);
every fold-rows@k computes the same assignment. Copies are seeded from (seed, id, copy) as augment seeds them,
so a row's copies are the same in every fold and in data/augmented.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from segpipe.core.cli import describe, run_stage
from segpipe.core.outputs import replace_dir, write_csv
from segpipe.core.params import Params
from segpipe.data.balancing import source_id, write_subsets
from segpipe.data.rows import ROW_COLUMNS, read_rows
from segpipe.data.splitting import fold_rows


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--fold", type=int, required=True, help="this fold's number, an item of cv.folds")
    parser.add_argument("--csv-dir", type=Path, required=True, help="build-csv's folder (train.csv, valid.csv)")
    parser.add_argument("--augmented-csv", type=Path, required=True, help="augment's CSV of copies of train.csv")
    parser.add_argument("--output-dir", type=Path, required=True, help="this fold's folder of rows to write")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    all_params = Params(args.params)
    split, balance, augment = (all_params.section(name) for name in ("build_csv", "split_balanced", "augment"))
    folds, seed, num_classes = all_params.section("cv")["folds"], all_params.shared("seed"), \
        all_params.shared("num_classes")
    import pandas as pd

    # Imported after run_stage set the environment: albumentations goes to the network at import otherwise.
    from segpipe.data.augmentations import augment_rows, build_compose

    compose = build_compose(augment["transforms"])
    given = {name: read_rows(args.csv_dir / f"{name}.csv", made_by="the build-csv stage")
             for name in ("train", "valid")}
    train, valid, assigned = fold_rows(pd.concat(given.values(), ignore_index=True), fold=args.fold,
                                       folds=len(folds), split_by=split["split_by"],
                                       stratify_bins=split["stratify_bins"], seed=seed, num_classes=num_classes)
    copies = read_rows(args.augmented_csv, made_by="the augment stage")
    ours = copies[copies["id"].map(source_id).isin(set(train["id"]))]
    unseen = train[train["id"].isin(set(given["valid"]["id"]))]
    with replace_dir(args.output_dir) as tmp:
        write_csv(tmp / "folds.csv", assigned)
        write_csv(tmp / "train.csv", train[ROW_COLUMNS])
        write_csv(tmp / "valid.csv", valid[ROW_COLUMNS])
        summary = write_subsets(train, output_dir=tmp / "subsets", summary_path=tmp / "subsets.json",
                                key=balance["key"], num_bins=balance["num_bins"], num_classes=num_classes)
        made, _ = augment_rows(unseen, output_dir=tmp / "augmented", path_prefix=args.output_dir / "augmented",
                               compose=compose, seed=seed, copies=augment["copies"],
                               group_multipliers=augment["group_multipliers"], num_workers=augment["num_workers"],
                               source=str(args.csv_dir / "valid.csv"))
        extra = read_rows(tmp / "augmented" / "augmented.csv")
        write_csv(tmp / "augmented.csv", pd.concat([ours, extra], ignore_index=True).sort_values("id")[ROW_COLUMNS])
    print(f"fold-rows: fold {args.fold} of {len(folds)}: {len(train)} training rows ({len(unseen)} from valid.csv, "
          f"{made} copies of them made here; {len(ours)} of augment's), {len(valid)} held out; "
          f"{len(summary['subsets'])} balancing subsets; in {args.output_dir}. train-fold@{args.fold} trains as train "
          "does: train.max_minutes and train.epochs apply to each fold's model")


if __name__ == "__main__":
    run_stage("fold-rows", main)
