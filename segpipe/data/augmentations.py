"""Build an albumentations pipeline from the list of transforms in params.yaml (its own serialisation).

`augment_rows` writes the augment stage's copies (and those of cross-validation folds, which
train on rows that the augment stage never saw: the same seeds give the same copies).

Importing albumentations checks PyPI for a newer version unless NO_ALBUMENTATIONS_UPDATE is set, which the
entry points do (segpipe/core/cli.py) before they import this module."""
from __future__ import annotations

import inspect
import warnings
import zlib
from functools import partial
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
from albumentations.core.serialization import SERIALIZABLE_REGISTRY
from PIL import Image

from segpipe.core.outputs import replace_dir, write_csv
from segpipe.core.parallel import map_in_order
from segpipe.core.params import did_you_mean
from segpipe.data.balancing import augmented_id
from segpipe.data.image_io import IGNORE_ID, write_png
from segpipe.data.rows import ROW_COLUMNS, class_pixels, foreground_fraction


def valid_transform_names() -> list[str]:
    """Names usable as `__class_fullname__` for image+mask transforms."""
    return sorted(name for name, cls in SERIALIZABLE_REGISTRY.items()
                  if isinstance(cls, type) and issubclass(cls, (A.DualTransform, A.ImageOnlyTransform))
                  and not name.startswith(("Basic", "Dual", "ImageOnly", "NoOp")))


def build_compose(transforms: list[dict], *, param_name: str = "augment.transforms") -> A.Compose:
    """A seeded-ready `A.Compose` from serialised transforms ({"__class_fullname__": "HorizontalFlip", "p": 0.5}).

    Geometric transforms that pad (Affine, Rotate, PadIfNeeded, ... with a constant border) fill the mask
    with IGNORE_ID unless the spec gives `fill_mask`: a padded pixel has no label, and filling it with
    class 0 would teach the model that borders are background.

    Raises:
        ValueError naming the transform and the valid choices for an unknown name, and naming the
        argument for an invalid one (albumentations only warns there; a typo must not be ignored).
    """
    if not isinstance(transforms, list):
        raise ValueError(f"param '{param_name}' must be a list of transforms, got {transforms!r}.")
    built = []
    for index, spec in enumerate(transforms):
        where = f"param '{param_name}[{index}]'"
        if not isinstance(spec, dict) or "__class_fullname__" not in spec:
            raise ValueError(f"{where} must be a mapping with '__class_fullname__' (e.g. "
                             f"{{__class_fullname__: HorizontalFlip, p: 0.5}}), got {spec!r}.")
        name = spec["__class_fullname__"]
        if name not in SERIALIZABLE_REGISTRY:
            raise ValueError(f"{where}: unknown transform '{name}'{did_you_mean(name, valid_transform_names())}; "
                             f"valid choices: {', '.join(valid_transform_names())}.")
        cls = SERIALIZABLE_REGISTRY[name]
        if "fill_mask" in inspect.signature(cls.__init__).parameters and "fill_mask" not in spec:
            spec = {**spec, "fill_mask": IGNORE_ID}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                # a missing probability defaulting to 0.5 is documented albumentations behaviour, not a typo
                warnings.filterwarnings("ignore", message=".*has no 'p' parameter")
                built.append(A.from_dict({"transform": spec}))
        except (Warning, TypeError, ValueError) as err:
            raise ValueError(f"{where}: invalid arguments for transform '{name}': {err}".strip()) from None
    return A.Compose(built)


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


def augment_rows(rows: pd.DataFrame, *, output_dir: Path, compose: A.Compose, seed: int, copies: int,
                 group_multipliers: dict, num_workers: int, source: str,
                 path_prefix: Path | None = None) -> tuple[int, int]:
    """Replaces `output_dir` with images/, masks/ and augmented.csv: `copies` x the group's multiplier
    augmented versions of each row (a group missing from `group_multipliers` has 1; check_multipliers checks
    them against the dataset's groups) (ids `augmented_id`; paths in the CSV under `path_prefix`, default
    `output_dir` as given). Returns (copies written, rows they came from). `source` names the rows' CSV in
    errors."""
    tasks = [(row, copies * group_multipliers.get(row["group"], 1)) for row in rows.to_dict("records")]
    tasks = [task for task in tasks if task[1] > 0]
    missing = [row["image_path"] for row, _ in tasks if not Path(row["image_path"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} image(s) listed in '{source}' do not exist (e.g. "
                         f"'{missing[0]}'); rerun the earlier stages (dvc repro).")
    with replace_dir(output_dir) as tmp_dir:
        work = partial(augment_row, compose=compose, seed=seed, output_dir=tmp_dir,
                       output_prefix=Path(path_prefix or output_dir).as_posix())
        results = map_in_order(work, tasks, num_workers=num_workers, desc="augment", min_items_per_worker=4)
        written = sorted((r for found in results for r in found), key=lambda r: r["id"])
        write_csv(tmp_dir / "augmented.csv", pd.DataFrame(written, columns=ROW_COLUMNS))
    return len(written), len(tasks)
