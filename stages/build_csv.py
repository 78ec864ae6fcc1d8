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

from segpipe.core.cli import describe, run_stage
from segpipe.core.outputs import write_csv
from segpipe.core.params import Params
from segpipe.data.rows import MANIFEST_COLUMNS, ROW_COLUMNS, read_rows
from segpipe.data.splitting import split


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=describe(__doc__))
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
