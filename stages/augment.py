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
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from segpipe.core.cli import describe, run_stage
from segpipe.core.outputs import replace_dir, write_csv
from segpipe.core.parallel import map_in_order
from segpipe.core.params import Params
from segpipe.data.balancing import augmented_id
from segpipe.data.image_io import IGNORE_ID, write_png
from segpipe.data.rows import ROW_COLUMNS, class_pixels, foreground_fraction, read_rows


def copy_seed(seed: int, row_id: str, copy: int) -> int:
    """A stable 32-bit seed per (seed, image, copy); Python's hash() is salted per process, crc32 is not."""
    return zlib.crc32(f"{seed}/{row_id}/{copy}".encode()) & 0x7FFFFFFF


def augment_row(task: tuple[dict, int], *, compose, seed: int, output_dir: Path, output_prefix: str) -> list[dict]:
    """Writes `copies` augmented versions of one row with `compose` (an A.Compose); returns their CSV rows."""
    row, copies = task
    image = np.asarray(Image.open(row["image_path"]))
    mask = np.asarray(Image.open(row["mask_path"]))
    class_ids = set(np.unique(mask).tolist())
    rows = []
    for copy in range(copies):
        compose.set_random_seed(copy_seed(seed, row["id"], copy))
        result = compose(image=image, mask=mask)
        new_image, new_mask = result["image"], result["mask"]
        assert set(np.unique(new_mask).tolist()) <= class_ids | {0, IGNORE_ID}, "a transform created new mask values"
        new_id = augmented_id(row["id"], copy)
        write_png(output_dir / "images" / f"{new_id}.png", np.ascontiguousarray(new_image))
        write_png(output_dir / "masks" / f"{new_id}.png", np.ascontiguousarray(new_mask))
        rows.append({"id": new_id, "image_path": f"{output_prefix}/images/{new_id}.png",
                     "mask_path": f"{output_prefix}/masks/{new_id}.png", "group": row["group"],
                     "height": new_mask.shape[0], "width": new_mask.shape[1],
                     "foreground_fraction": foreground_fraction(new_mask), "class_pixels": class_pixels(new_mask)})
    return rows


def check_multipliers(group_multipliers: dict, groups: set[str]) -> None:
    for group, factor in group_multipliers.items():
        if str(group) not in groups:
            raise ValueError(f"param 'augment.group_multipliers' names group '{group}', which train.csv does "
                             f"not have; groups: {sorted(groups)}.")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 0:
            raise ValueError(f"param 'augment.group_multipliers.{group}' must be an int >= 0, got {factor!r}.")


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
    from segpipe.data.augmentations import build_compose

    compose = build_compose(params["transforms"])  # built once: fails on bad transforms before any work

    train = read_rows(args.train_csv, made_by="the build-csv stage")
    check_multipliers(params["group_multipliers"], set(train["group"]))
    tasks = [(row, params["copies"] * params["group_multipliers"].get(row["group"], 1))
             for row in train.to_dict("records")]
    tasks = [task for task in tasks if task[1] > 0]
    missing = [row["image_path"] for row, _ in tasks if not Path(row["image_path"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) listed in '{args.train_csv}' do not exist (e.g. "
                         f"'{missing[0]}'); rerun the earlier stages (dvc repro).")
    with replace_dir(args.output_dir) as tmp_dir:
        work = partial(augment_row, compose=compose, seed=seed, output_dir=tmp_dir,
                       output_prefix=args.output_dir.as_posix())
        results = map_in_order(work, tasks, num_workers=params["num_workers"], desc="augment",
                               min_items_per_worker=4)
        rows = sorted((r for found in results for r in found), key=lambda r: r["id"])
        write_csv(tmp_dir / "augmented.csv", pd.DataFrame(rows, columns=ROW_COLUMNS))
    print(f"augment: {len(rows)} augmented pairs from {len(tasks)} training images in {args.output_dir}")


if __name__ == "__main__":
    run_stage("augment", main)
