"""Find image/mask pairs in a raw data folder, whatever its layout.

Accepted layouts (folder names are case-insensitive):
    raw/images/...      + raw/masks/...                       one pool; build-csv makes the split
    raw/train/{images,masks}/... + raw/valid/{images,masks}/...   a given split (also val/validation,
                                                               and an optional test/{images,masks})
Inside any images folder, files may sit directly or in group subfolders (images/<group>/x.jpg); the
masks folder mirrors it (masks/<group>/x.png). The group (subfolder path, "all" when none) becomes the
balancing key. A mask is paired with its image by stem: the mask stem must equal
`mask_stem_pattern.format(stem=<image stem>)`, compared case-insensitively, any supported extension.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segpipe.image_io import SUPPORTED_EXTENSIONS

NO_GROUP = "all"
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test"}
IGNORED_FILES = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Pair:
    id: str           # unique, e.g. "nails/img_001" or "valid/img_001"; also the output file stem
    split: str        # "train", "valid", "test", or "" when the raw data has no given split
    group: str
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str


def _child_dir(parent: Path, name: str) -> Path | None:
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def _list_files(root: Path, problems: list[Problem]) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name.lower() in IGNORED_FILES:
            continue
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            problems.append(Problem(path, f"unsupported file type '{path.suffix}'; expected one of "
                                          f"{', '.join(SUPPORTED_EXTENSIONS)}. Remove or convert it"))
            continue
        files.append(path)
    return files


def _group_of(path: Path, root: Path) -> str:
    parent = path.parent.relative_to(root).as_posix()
    return NO_GROUP if parent == "." else parent


def _pair_folder(images_dir: Path, masks_dir: Path, split: str, mask_stem_pattern: str,
                 problems: list[Problem]) -> list[Pair]:
    masks: dict[tuple[str, str], list[Path]] = {}
    for path in _list_files(masks_dir, problems):
        masks.setdefault((_group_of(path, masks_dir), path.stem.lower()), []).append(path)
    images: dict[tuple[str, str], list[Path]] = {}
    for path in _list_files(images_dir, problems):
        images.setdefault((_group_of(path, images_dir), path.stem.lower()), []).append(path)

    pairs, used_masks = [], set()
    for (group, stem_key), image_paths in sorted(images.items()):
        mask_key = (group, mask_stem_pattern.format(stem=image_paths[0].stem).lower())
        used_masks.add(mask_key)  # reported with its image(s) below, not again as an orphan
        if len(image_paths) > 1:
            for path in image_paths:
                problems.append(Problem(path, "several images share this stem ("
                                        + ", ".join(p.name for p in image_paths)
                                        + "), so their masks and outputs would collide; rename all but one"))
            continue
        image_path = image_paths[0]
        candidates = masks.get(mask_key, [])
        if not candidates:
            expected = masks_dir / ("" if group == NO_GROUP else group) / mask_stem_pattern.format(stem=image_path.stem)
            problems.append(Problem(image_path, f"image without mask: expected '{expected}.<ext>' "
                                    "(convert.mask_stem_pattern sets the mask naming rule)"))
            continue
        if len(candidates) > 1:
            problems.append(Problem(image_path, "several masks match this image ("
                                    + ", ".join(p.name for p in candidates) + "); keep one"))
            continue
        parts = ([split] if split else []) + ([] if group == NO_GROUP else [group]) + [image_path.stem]
        pairs.append(Pair("/".join(parts), split, group, image_path, candidates[0]))
    for key in sorted(set(masks) - used_masks):
        for path in masks[key]:
            problems.append(Problem(path, "mask without image: no image in "
                                    f"'{images_dir}' has a stem that gives this mask name under "
                                    "convert.mask_stem_pattern"))
    return pairs


def find_pairs(raw_dir: Path, *, mask_stem_pattern: str) -> tuple[list[Pair], list[Problem]]:
    """Lists the image/mask pairs of `raw_dir` and every problem found on the way.

    Args:
        raw_dir: the raw data folder (see the module docstring for layouts).
        mask_stem_pattern: mask stem as a format string of the image stem, e.g. "{stem}_mask".

    Returns:
        (pairs sorted by id, problems). Layout errors that leave nothing to convert raise ValueError.
    """
    raw_dir = Path(raw_dir)
    layout_help = (f"expected '{raw_dir}/images' + '{raw_dir}/masks', or "
                   f"'{raw_dir}/train/{{images,masks}}' + '{raw_dir}/valid/{{images,masks}}'")
    if not raw_dir.is_dir():
        raise ValueError(f"raw data folder '{raw_dir}' does not exist; {layout_help}.")
    split_dirs = {}
    for child in sorted(raw_dir.iterdir()):
        split = SPLIT_ALIASES.get(child.name.lower())
        if child.is_dir() and split:
            if split in split_dirs:
                raise ValueError(f"'{split_dirs[split]}' and '{child}' are both the {split} split; keep one.")
            split_dirs[split] = child
    pooled = _child_dir(raw_dir, "images")
    if pooled and split_dirs:
        raise ValueError(f"'{raw_dir}' mixes a pooled layout (images/) with split folders "
                         f"({', '.join(sorted(split_dirs))}); use one layout: {layout_help}.")
    if split_dirs and "train" not in split_dirs:
        raise ValueError(f"'{raw_dir}' has split folders {sorted(split_dirs)} but no train/; {layout_help}.")
    folders = {"": raw_dir} if pooled else split_dirs
    if not folders:
        raise ValueError(f"no images found: '{raw_dir}' has no images/ folder and no train/ folder; {layout_help}.")

    problems: list[Problem] = []
    pairs: list[Pair] = []
    for split, folder in sorted(folders.items()):
        images_dir, masks_dir = _child_dir(folder, "images"), _child_dir(folder, "masks")
        if images_dir is None or masks_dir is None:
            raise ValueError(f"'{folder}' needs both an images/ and a masks/ folder; {layout_help}.")
        pairs += _pair_folder(images_dir, masks_dir, split, mask_stem_pattern, problems)
    lowered = {}
    for pair in pairs:  # output names must also be unique on case-insensitive file systems
        lowered.setdefault(pair.id.lower(), []).append(pair)
    clashes = {p.id for group in lowered.values() if len(group) > 1 for p in group}
    for pair in pairs:
        if pair.id in clashes:
            problems.append(Problem(pair.image_path, f"output name '{pair.id}' differs only by case from "
                                    "another image's; rename one"))
    pairs = [p for p in pairs if p.id not in clashes]
    if not pairs and not problems:
        raise ValueError(f"no images found under '{raw_dir}'; {layout_help}, with images in "
                         f"{', '.join(SUPPORTED_EXTENSIONS)}.")
    return sorted(pairs, key=lambda p: p.id), problems
