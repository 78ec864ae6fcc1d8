"""convert-to-png: decode every raw image/mask pair into clean, same-size PNG pairs.

Reads:   --raw-dir, in any layout of segpipe/data/raw_layout.py (pooled images/+masks/ or a given
         train/valid[/test] split, optional group subfolders), any of JPEG, PNG, BMP, TIFF, GIF, WebP.
Writes:  --output-dir/images/<id>.png  8-bit RGB (or L, see convert.image_mode), EXIF orientation applied;
                                       a multi-page file (TIFF stack) gives one per page, <id>/<page:04d>;
         --output-dir/masks/<id>.png   single-channel class ids: {0, 1} for binary tasks, 0..num_classes-1
                                       otherwise, 255 for void (convert.ignore_value); same size as its
                                       image (orientation applied alike);
         --output-dir/manifest.csv     id, split, group, image_path, mask_path (relative to the output
                                       dir), height, width, foreground_fraction, class_pixels,
                                       source_image, source_mask;
         --output-dir/white_level.json white_level: the raw value that became 255 in images of more than
                                       8 bits (null when every image has 8 bits), and the reason;
                                       train records it in models/inference.json for predict;
         --skipped                     CSV (path, reason) of inputs skipped under on_error: skip; header
                                       only when nothing was skipped.
Params:  num_classes; convert.image_mode, image_folder, mask_folder, mask_stem_pattern (a `*` merges every
         mask it matches: segpipe/data/mask_merge.py), image_key,
         mask_key (segpipe/data/raw_layout.py), palette, palette_tolerance (segpipe/data/palette.py), ignore_value,
         mask_threshold, invert_mask, max_gray_fraction, white_level, mask_alpha, max_image_pixels,
         on_error (fail | skip), num_workers
         (0 = all cores).

Every problem is collected before anything is written. With on_error: fail (the default) the stage
fails with one message listing them all, and the previous output stays as it was.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from segpipe.core.cli import describe, run_stage
from segpipe.core.outputs import replace_dir, write_csv, write_text
from segpipe.core.params import Params
from segpipe.data.convert import convert_all, dataset_white_level, format_problems
from segpipe.data.pairing import Naming
from segpipe.data.palette import load_palette
from segpipe.data.raw_layout import find_pairs, unwrap
from segpipe.data.rows import MANIFEST_COLUMNS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--raw-dir", type=Path, required=True,
                        help="your images and masks (docs/how-to/your-data.md)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the PNGs and manifest.csv")
    parser.add_argument("--skipped", type=Path, required=True, help="CSV of files skipped with convert.on_error: skip")
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    args = parser.parse_args(argv)
    all_params = Params(args.params)
    params = all_params.section("convert")
    num_classes = all_params.shared("num_classes")

    if isinstance(params["ignore_value"], list) and params["palette"] is None:
        raise ValueError(f"param 'convert.ignore_value' is the colour {params['ignore_value']}, which only a palette "
                         "can read; set convert.palette (colour -> class), or give ignore_value as a mask value.")
    if params["invert_mask"] and params["palette"] is not None:
        raise ValueError("params convert.invert_mask and convert.palette both say which pixels are foreground; "
                         "with a palette, set invert_mask: false and order the palette's colours instead.")
    palette = load_palette(params["palette"], raw_dir=args.raw_dir, num_classes=num_classes,
                           ignore_value=params["ignore_value"])
    naming = Naming(**{key: params[key] for key in ("image_folder", "mask_folder", "mask_stem_pattern", "image_key",
                                                    "mask_key")})
    raw_dir, beside = unwrap(args.raw_dir, naming=naming)
    if raw_dir != args.raw_dir:
        print(f"convert-to-png: reading the layout inside '{raw_dir}', the only folder on the way"
              + (f" (left out beside it: {', '.join(p.name for p in beside)})" if beside else ""))
    pairs, problems, ignored = find_pairs(raw_dir, naming=naming)
    if ignored:
        print(f"convert-to-png: ignored {len(ignored)} file{'s' if len(ignored) > 1 else ''} that "
              f"{'are not images' if len(ignored) > 1 else 'is not an image'}: "
              + ", ".join(p.as_posix() for p in ignored[:5]) + (", ..." if len(ignored) > 5 else ""))
    white_level, white_level_reason = dataset_white_level([pair.image_path for pair in pairs],
                                                          white_level=params["white_level"],
                                                          num_workers=params["num_workers"],
                                                          max_pixels=params["max_image_pixels"])
    if white_level is not None:
        print(f"convert-to-png: images of more than 8 bits: white level {white_level:g} ({white_level_reason})")
    # Pairs are decoded even when pairing already found problems, so that one run reports them all.
    with replace_dir(args.output_dir) as tmp_dir:
        rows, bad = convert_all(
            pairs, num_workers=params["num_workers"], output_dir=tmp_dir, raw_dir=args.raw_dir,
            image_mode=params["image_mode"], num_classes=num_classes,
            mask_threshold=params["mask_threshold"], invert_mask=params["invert_mask"],
            max_gray_fraction=params["max_gray_fraction"], ignore_value=params["ignore_value"], palette=palette,
            palette_tolerance=params["palette_tolerance"], white_level=white_level, mask_alpha=params["mask_alpha"],
            max_image_pixels=params["max_image_pixels"])
        problems += bad
        if problems and params["on_error"] == "fail":
            raise ValueError(format_problems(problems, args.raw_dir))
        if not rows:
            raise ValueError(f"no usable image/mask pair left in '{args.raw_dir}' after skipping "
                             f"{len(problems)} problem(s):\n" + format_problems(problems, args.raw_dir))
        write_csv(tmp_dir / "manifest.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
        write_text(tmp_dir / "white_level.json",
                   json.dumps({"white_level": white_level, "reason": white_level_reason}, indent=2) + "\n")
    skipped = pd.DataFrame([(p.path.as_posix(), p.reason) for p in problems], columns=["path", "reason"])
    write_csv(args.skipped, skipped.sort_values(["path", "reason"]))
    print(f"convert-to-png: {len(rows)} pairs written to {args.output_dir}, {len(problems)} problem(s) skipped")


if __name__ == "__main__":
    run_stage("convert-to-png", main)
