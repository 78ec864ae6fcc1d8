"""build-csv: turn the converted PNG pairs into train/valid/test CSV files.

Reads:   --png-dir/manifest.csv (written by convert-to-png).
Writes:  --output-dir/train.csv, valid.csv, test.csv with columns
         id, image_path, mask_path, group, height, width, foreground_fraction, class_pixels; sorted by id; paths are
         POSIX and relative to the repo root (the folder dvc runs in) when --png-dir is relative.
         test.csv has only the header unless the raw data has a test/ split.
Params:  seed, num_classes; build_csv.valid_fraction, build_csv.stratify_bins, build_csv.split_by.

A split given by the raw data (train/ + valid/) is kept. Without one, a seeded split takes
`valid_fraction` of the images (`split_by: image`), stratified by group; with a single group, by
foreground-fraction quantile bins (`stratify_bins`) for binary tasks and by each image's rarest class for
multi-class ones (segpipe.data.balancing.rarest_classes), so a class that only a few images hold lands in both
splits in proportion. `split_by: group` sends whole groups (patients, volumes) to valid instead, about
`valid_fraction` of the images, so that no group has images in both splits: neighbouring slices of one
patient or one stack look alike, and splitting them inflates the validation score. A given train/
without valid/ is split the same way.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.core.cli import run_stage
from segpipe.core.outputs import write_csv
from segpipe.core.params import Params
from segpipe.data.balancing import foreground_bin_edges, foreground_bins, rarest_classes
from segpipe.data.rows import MANIFEST_COLUMNS, ROW_COLUMNS, class_pixel_table, read_rows


def _largest_remainder(sizes: np.ndarray, total: int) -> np.ndarray:
    """Integer shares of `total` proportional to `sizes` that add up to `total`, each <= its size."""
    exact = sizes * total / sizes.sum()
    shares = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - shares), kind="stable")[: total - shares.sum()]:
        shares[index] += 1
    return np.minimum(shares, sizes)


def stratified_split(frame: pd.DataFrame, *, valid_fraction: float, stratify_bins: int, seed: int,
                     num_classes: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of `frame` into (train, valid), stratified by group, foreground bins or rarest class.

    Args:
        frame: rows with at least id, group, foreground_fraction.
        valid_fraction: share of rows for validation; at least one row goes each way.
        stratify_bins: foreground-fraction quantile bins used when there is a single group.
        seed: the random seed; the same inputs and seed give the same split.
        num_classes: > 1 stratifies a single group by each row's rarest class (needs class_pixels).
    """
    if len(frame) < 2:
        raise ValueError(f"cannot split {len(frame)} image(s) into train and valid; add images "
                         "(at least 2, realistically dozens).")
    frame = frame.sort_values("id").reset_index(drop=True)
    if frame["group"].nunique() > 1:
        strata = frame["group"].astype(str).to_numpy()
    elif num_classes > 1:
        strata = rarest_classes(class_pixel_table(frame, num_classes=num_classes)).astype(str)
    else:
        edges = foreground_bin_edges(frame["foreground_fraction"], num_bins=stratify_bins)
        strata = foreground_bins(frame["foreground_fraction"], edges).astype(str)
    names, sizes = np.unique(strata, return_counts=True)
    total_valid = int(min(len(frame) - 1, max(1, round(len(frame) * valid_fraction))))
    shares = _largest_remainder(sizes, total_valid)
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(len(frame), dtype=bool)
    for name, share in zip(names, shares):
        members = np.flatnonzero(strata == name)
        is_valid[rng.permutation(members)[:share]] = True
    return frame[~is_valid], frame[is_valid]


def group_split(frame: pd.DataFrame, *, valid_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of `frame` into (train, valid) by whole groups: in a seeded order, each group goes to
    valid when that brings valid's row count closer to valid_fraction of the rows; at least one group
    goes each way (the smallest to valid when every group is larger than twice the target)."""
    frame = frame.sort_values("id").reset_index(drop=True)
    names, sizes = np.unique(frame["group"].astype(str), return_counts=True)
    if len(names) < 2:
        raise ValueError(f"param 'build_csv.split_by' is group, but all {len(frame)} images are in one group "
                         f"({names[0]!r}); put each patient or volume in its own subfolder (images/<group>/...), or "
                         "set build_csv.split_by: image.")
    order = np.random.default_rng(seed).permutation(len(names))
    target, taken, chosen = valid_fraction * len(frame), 0, []
    for index in order[:-1]:  # the last group stays in train
        if abs(taken + sizes[index] - target) < abs(taken - target):
            chosen.append(names[index])
            taken += sizes[index]
    if not chosen:  # every group is more than twice the target: the smallest one
        chosen = [names[np.argmin(sizes)]]
    is_valid = frame["group"].astype(str).isin(chosen).to_numpy()
    return frame[~is_valid], frame[is_valid]


def split(frame: pd.DataFrame, *, split_by: str, valid_fraction: float, stratify_bins: int, seed: int,
          num_classes: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) by `split_by`: image (stratified_split) or group (group_split)."""
    if split_by == "group":
        return group_split(frame, valid_fraction=valid_fraction, seed=seed)
    return stratified_split(frame, valid_fraction=valid_fraction, stratify_bins=stratify_bins, seed=seed,
                            num_classes=num_classes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--png-dir", type=Path, required=True, help="convert-to-png's folder (with manifest.csv)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for train.csv, valid.csv, test.csv")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    args = parser.parse_args(argv)
    all_params = Params(args.params)
    params = all_params.section("build_csv")
    seed, num_classes = all_params.shared("seed"), all_params.shared("num_classes")

    manifest = read_rows(args.png_dir / "manifest.csv", made_by="the convert-to-png stage", columns=MANIFEST_COLUMNS)
    for column in ("image_path", "mask_path"):
        manifest[column] = [(args.png_dir / p).as_posix() for p in manifest[column]]

    given = set(manifest["split"]) - {""}
    if given:
        train = manifest[manifest["split"] == "train"]
        valid = manifest[manifest["split"] == "valid"]
        if valid.empty:
            train, valid = split(train, seed=seed, num_classes=num_classes, **params)
    else:
        train, valid = split(manifest, seed=seed, num_classes=num_classes, **params)
    if (train["foreground_fraction"].astype(float) == 0).all():
        raise ValueError(f"no foreground pixel in any of the {len(train)} training masks (from "
                         f"'{args.png_dir / 'manifest.csv'}'): every pixel is class 0 (or void), so there is nothing "
                         "to learn. Check the masks' polarity (convert.invert_mask), convert.mask_threshold and that "
                         "convert.mask_folder names the masks; then dvc repro.")
    test = manifest[manifest["split"] == "test"]
    leaked = set(train["id"]) & set(valid["id"])
    assert not leaked, f"ids in both train and valid: {sorted(leaked)[:5]}"

    for name, frame in (("train", train), ("valid", valid), ("test", test)):
        write_csv(args.output_dir / f"{name}.csv", frame.sort_values("id")[ROW_COLUMNS])
    print(f"build-csv: {len(train)} train, {len(valid)} valid, {len(test)} test rows in {args.output_dir}")


if __name__ == "__main__":
    run_stage("build-csv", main)
