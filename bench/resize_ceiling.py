"""What the resized network input costs before any learning, on a project's validation masks: the score
of a perfect network at each input size (segpipe/preflight/capacity.py resize_ceiling, the preflight
`resolution` check), side by side.

    .venv/bin/python bench/resize_ceiling.py --project <a project after its data stages> --sizes 128x128 256x256

--project is a segpipe project whose data stages ran (data/csv/valid.csv and its PNG masks), e.g. the
`ours` folder bench/quality.py leaves in its work folder. Binary: the foreground's pooled IoU; multi-class:
the mean over the classes of the per-class pooled IoU; image-mean: each mask's own IoU, averaged.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from segpipe.data.image_io import read_png
from segpipe.data.rows import read_rows
from segpipe.preflight.capacity import resize_ceiling


def size_arg(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--sizes", type=size_arg, nargs="+", required=True, metavar="HxW")
    parser.add_argument("--num-classes", type=int, default=1)
    parser.add_argument("--split", default="valid")
    args = parser.parse_args(argv)
    os.chdir(args.project)  # the CSVs hold project-relative paths
    rows = read_rows(Path("data/csv") / f"{args.split}.csv")
    print(f"{args.project}: {len(rows)} {args.split} masks, {rows['height'].min()}-{rows['height'].max()} x "
          f"{rows['width'].min()}-{rows['width'].max()} px")
    for size in args.sizes:
        inter, union, per_image = resize_ceiling((read_png(p) for p in rows["mask_path"]), size=size,
                                                 num_classes=args.num_classes)
        iou = inter / np.maximum(union, 1)
        pooled = iou[1] if args.num_classes == 1 else float(iou[union > 0].mean())
        print(f"  {size[0]}x{size[1]}: pooled {'IoU' if args.num_classes == 1 else 'mean IoU'} {pooled:.4f}, "
              f"image-mean IoU {np.mean(per_image):.4f}, worst image {min(per_image):.4f}"
              + ("" if args.num_classes == 1 else
                 "; per class " + " ".join(f"{v:.3f}" for v in iou)), flush=True)


if __name__ == "__main__":
    main()
