"""The row schema every data CSV shares: columns, how they are read, and how a row's numbers are computed.

A row is one (image, mask) pair of PNGs: `id`, `image_path`, `mask_path` (repo-relative POSIX paths),
`group` (the sub-folder it came from; "" at the top level), `height`, `width` (of the PNGs),
`foreground_fraction` (share of the labelled, i.e. not void, mask pixels that are not class 0) and
`class_pixels` (pixel count of each class id 0, 1, ..., space-separated; void pixels are in none).
convert-to-png's manifest adds the `split` the raw layout named and the source files;
train/valid/test, subset and augmented CSVs have exactly ROW_COLUMNS.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.data.image_io import IGNORE_ID

ROW_COLUMNS = ["id", "image_path", "mask_path", "group", "height", "width", "foreground_fraction", "class_pixels"]
MANIFEST_COLUMNS = ["id", "split", "group", "image_path", "mask_path", "height", "width",
                    "foreground_fraction", "class_pixels", "source_image", "source_mask"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Read as text: ids such as "007" or "1e5" and a group named "NA" must stay what the file says.
_TEXT_COLUMNS = {"id": str, "group": str, "split": str, "class_pixels": str}


def read_rows(csv_path: Path, *, made_by: str = "the earlier stages", columns: list[str] = ROW_COLUMNS) -> pd.DataFrame:
    """A row CSV as a DataFrame (empty, with its columns, when the file has only a header), checked: every
    column present, and image and mask paths inside the project (relative, never climbing out with '..').

    Args:
        csv_path: a manifest, train/valid/test, subset or augmented CSV.
        made_by: the stage that writes it, named in the error when the file is missing or damaged.
        columns: the columns it must have (MANIFEST_COLUMNS for a manifest).
    """
    if not Path(csv_path).is_file():
        raise ValueError(f"'{csv_path}' not found; run {made_by} first (dvc repro).")
    try:
        rows = pd.read_csv(csv_path, dtype=_TEXT_COLUMNS, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=columns)
    except pd.errors.ParserError as err:
        raise ValueError(f"'{csv_path}' is not a readable CSV ({err}); it was edited or damaged: restore it with "
                         f"`dvc checkout` or rewrite it by rerunning {made_by} (dvc repro -f).") from None
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"'{csv_path}' has no column '{missing[0]}' (expected {columns}); it was edited by hand or "
                         f"written by another version: restore it with `dvc checkout` or rerun {made_by} "
                         "(dvc repro -f).")
    for column in ("image_path", "mask_path"):
        for path in rows[column]:
            if ".." in Path(path).parts:
                raise ValueError(f"'{csv_path}': {column} '{path}' is outside the project; the data CSVs list "
                                 "files the data stages wrote, by paths inside the repo. Restore the file with "
                                 f"`dvc checkout` or rerun {made_by} (dvc repro -f).")
    return rows


def foreground_fraction(class_ids: np.ndarray) -> float:
    """Share of the labelled (not void) pixels that are not class 0, rounded to 6 digits as the CSVs store it;
    0 for a mask that is all void."""
    labelled = np.count_nonzero(class_ids != IGNORE_ID)
    foreground = labelled - np.count_nonzero(class_ids == 0)
    return round(float(foreground) / labelled, 6) if labelled else 0.0


def class_pixels(class_ids: np.ndarray) -> str:
    """The `class_pixels` column: pixel count per class id 0..max id (at least 0 and 1), space-separated."""
    counts = np.bincount(class_ids[class_ids != IGNORE_ID].ravel(), minlength=2)
    return " ".join(str(int(c)) for c in counts)


def class_pixel_table(rows: pd.DataFrame, *, num_classes: int) -> np.ndarray:
    """(rows, classes) int64 counts from the `class_pixels` column; classes = 2 for binary tasks."""
    width = max(2, num_classes)
    table = np.zeros((len(rows), width), np.int64)
    for index, text in enumerate(rows["class_pixels"]):
        counts = [int(c) for c in str(text).split()]
        if len(counts) > width:
            raise ValueError(f"row '{rows['id'].iloc[index]}' has pixels of class {len(counts) - 1}, more than "
                             f"num_classes={num_classes} allows; rerun the data stages (dvc repro).")
        table[index, :len(counts)] = counts
    return table


def check_files(rows: pd.DataFrame, *, source: str) -> None:
    """Raises ValueError naming missing files or files that are not PNGs, before TF sees them."""
    problems = []
    for column in ("image_path", "mask_path"):
        for path in rows[column]:
            try:
                with open(path, "rb") as fh:
                    if fh.read(8) != PNG_SIGNATURE:
                        problems.append(f"'{path}' is not a PNG file")
            except OSError:
                problems.append(f"'{path}' does not exist")
    if problems:
        raise ValueError(f"{len(problems)} bad file(s) listed in {source}: " + "; ".join(problems[:10])
                         + ("; ..." if len(problems) > 10 else "")
                         + ". Rerun the data stages (dvc repro) so the CSVs match the files.")
