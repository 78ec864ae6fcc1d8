"""augment: offline augmentation of the training images with albumentations.

Reads:   --train-csv (from build-csv) and the PNGs it lists.
Writes:  --output-dir/images/<id>__aug<k>.png, --output-dir/masks/<id>__aug<k>.png and
         --output-dir/augmented.csv in the format of train.csv (id, image_path, mask_path, group,
         height, width, foreground_fraction, class_pixels), groups kept so that balancing still works.
         `copies: 0` writes an empty (header-only) augmented.csv.
Params:  seed; augment.copies, group_multipliers ({group: factor}, e.g. {rare: 3}), transforms
         (albumentations serialisation, see params.yaml), num_workers (0 = all cores).

Each copy is seeded from (seed, id, copy index), so the output does not depend on worker scheduling:
the same params give byte-identical files. Masks use nearest-neighbour interpolation in every
geometric transform and keep exactly the class ids they had; padding is void (255), never class 0.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from segpipe.core.cli import describe, run_stage
from segpipe.core.params import Params
from segpipe.data.rows import read_rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--train-csv", type=Path, required=True, help="train.csv from build-csv")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="folder for the augmented PNGs and augmented.csv")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    args = parser.parse_args(argv)
    all_params = Params(args.params)
    params = all_params.section("augment")
    seed = all_params.shared("seed")
    # Imported after run_stage set the environment: albumentations goes to the network at import otherwise.
    from segpipe.data.augmentations import augment_rows, build_compose, check_multipliers

    compose = build_compose(params["transforms"])  # built once: fails on bad transforms before any work
    train = read_rows(args.train_csv, made_by="the build-csv stage")
    check_multipliers(params["group_multipliers"], set(train["group"]))
    rows, sources = augment_rows(train, output_dir=args.output_dir, compose=compose, seed=seed,
                                 copies=params["copies"], group_multipliers=params["group_multipliers"],
                                 num_workers=params["num_workers"], source=str(args.train_csv))
    print(f"augment: {rows} augmented pairs from {sources} training images in {args.output_dir}")


if __name__ == "__main__":
    run_stage("augment", main)
