"""Find image/mask pairs in a raw data folder, whatever its layout.

Accepted layouts (folder names are case-insensitive; <images> and <masks> are the folders that
`convert.image_folder` and `convert.mask_folder` name, see below):
    raw/<images>/... + raw/<masks>/...                one pool; build-csv makes the split
    raw/<images>/{train,valid}/... + raw/<masks>/{train,valid}/...   the same, with a given split
    raw/train/{<images>,<masks>}/... + raw/valid/{<images>,<masks>}/...   a given split
    raw/train/ + raw/trainannot/ + raw/val/ + raw/valannot/ ...      side by side per split: set
                                               image_folder: "{split}", mask_folder: "{split}annot"
    raw/<sample>/<images>/... + raw/<sample>/<masks>/...   a folder per sample (Kaggle's Data Science Bowl
                   2018: <id>/images/<id>.png + <id>/masks/*.png, one mask per nucleus): a sample with one
                   image takes every mask of its masks folder, merged into one (segpipe/data/mask_merge.py);
                   one with several pairs them by the rules below and is their group
    raw/<folder>/... with images and masks side by side (x.tif + x_mask.tif, as Kaggle's LGG brain MRI
                   and BUSI ultrasound ship): set image_folder and mask_folder to the same name and
                   mask_stem_pattern to the masks' naming rule ("{stem}_mask"); files whose stem fits it
                   are the masks, the others the images
Split folders may be named train/training, valid/val/validation, test/testing; test is optional.
A dataset often ships inside one top folder beside its README and licence (Kaggle's stage1_train/,
a release's Kvasir-SEG/): when raw holds none of these layouts but exactly one folder, the layout is
read inside it (`unwrap`), one level after another.
Inside any images folder, files may sit directly or in group subfolders (images/<group>/x.jpg); the
masks folder mirrors it (masks/<group>/x.png). The group (subfolder path, "all" when none) becomes the
balancing key.

Folders: `auto` accepts exactly one of the usual names (IMAGE_FOLDER_NAMES, MASK_FOLDER_NAMES); a
layout with two candidates (DRIVE's `1st_manual/` beside its field-of-view `mask/`) is an error that
lists them, never a guess. A name or glob pattern (`1st_manual`, `*_labels`) must match exactly one.
Pairing within a folder: segpipe/data/pairing.py.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import replace
from pathlib import Path

from segpipe.data.image_io import SUPPORTED_EXTENSIONS
from segpipe.data.pairing import NO_GROUP, Naming, Pair, Problem, list_files, pair_folder

SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test", "testing": "test"}
IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "jpegimages", "inputs")
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "gt", "groundtruth", "ground_truth", "annotations",
                     "annotation", "annot", "segmentations", "segmentationclass", "1st_manual", "targets")


def _matching_dirs(parent: Path, spec: str, names: tuple[str, ...]) -> list[Path]:
    children = sorted(c for c in parent.iterdir() if c.is_dir())
    if spec == "auto":
        return [c for c in children if c.name.lower() in names]
    return [c for c in children if fnmatch.fnmatch(c.name.lower(), spec.lower())]


def _folder(parent: Path, spec: str, *, param: str, names: tuple[str, ...], exclude: Path | None = None) -> Path | None:
    """The one folder in `parent` that `spec` names (see the module docstring), None when there is none."""
    found = [c for c in _matching_dirs(parent, spec, names) if c != exclude]
    if len(found) > 1:
        what = "images" if param == "image_folder" else "masks"
        listed = ", ".join(f"'{c.name}/'" for c in found)
        raise ValueError(f"'{parent}' has {len(found)} folders that could hold the {what}: {listed}. Set "
                         f"convert.{param} to the one that does (e.g. convert.{param}: {found[-1].name}); "
                         "segpipe does not guess.")
    return found[0] if found else None


def _split_folders(parent: Path) -> dict[str, Path]:
    """{split: folder} for the children of `parent` named like a split; two for one split is an error."""
    found: dict[str, Path] = {}
    for child in sorted(c for c in parent.iterdir() if c.is_dir()):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split:
            if split in found:
                raise ValueError(f"'{found[split]}' and '{child}' are both the {split} split; keep one.")
            found[split] = child
    return found


def _side_by_side(raw_dir: Path, naming: Naming) -> dict[str, tuple[Path, Path]]:
    """{split: (images folder, masks folder)} for image_folder/mask_folder patterns with {split}."""
    pattern = re.compile("^" + re.escape(naming.image_folder).replace(re.escape("{split}"), "(?P<split>.+)") + "$",
                         re.IGNORECASE)
    folders: dict[str, tuple[Path, Path]] = {}
    for child in sorted(c for c in raw_dir.iterdir() if c.is_dir()):
        found = pattern.match(child.name)
        split = SPLIT_ALIASES.get(found.group("split").lower()) if found else None
        if not split:
            continue
        if split in folders:
            raise ValueError(f"'{folders[split][0]}' and '{child}' are both the {split} split; keep one.")
        mask_name = naming.mask_folder.replace("{split}", found.group("split")).lower()
        masks = [c for c in raw_dir.iterdir() if c.is_dir() and c.name.lower() == mask_name]
        if not masks:
            raise ValueError(f"'{child}' holds the {split} images (convert.image_folder: {naming.image_folder!r}) "
                             f"but '{raw_dir / mask_name}' does not exist (convert.mask_folder: "
                             f"{naming.mask_folder!r}); fix the folder name or the param.")
        folders[split] = (child, masks[0])
    return folders


MASK_SUFFIXES = ("_mask", "_masks", "_seg", "_segmentation", "_label", "_labels", "_gt", "_annotation")


def _side_by_side_hint(raw_dir: Path) -> str:
    """A hint when a folder of raw_dir holds images and masks side by side (x.tif + x_mask.tif), else ""."""
    for child in sorted(c for c in raw_dir.iterdir() if c.is_dir()):
        for path in child.rglob("*"):
            suffix = next((s for s in MASK_SUFFIXES if path.stem.lower().endswith(s)), None)
            if suffix and path.suffix.lower() in SUPPORTED_EXTENSIONS:
                return (f" '{child.name}/' holds images and masks side by side ('{path.name}'): set "
                        f"convert.image_folder and convert.mask_folder to '{child.name}' and "
                        f"convert.mask_stem_pattern to '{{stem}}{path.stem[-len(suffix):]}'.")
    return ""


def find_folders(raw_dir: Path, naming: Naming) -> dict[str, tuple[Path, Path]]:
    """{split ("" for a pool): (images folder, masks folder)}. Raises ValueError for a layout it cannot read."""
    raw_dir = Path(raw_dir)
    layout_help = (f"expected '{raw_dir}/images' + '{raw_dir}/masks', or "
                   f"'{raw_dir}/train/{{images,masks}}' + '{raw_dir}/valid/{{images,masks}}' "
                   "(other folder names: convert.image_folder, convert.mask_folder; docs/how-to/your-data.md)")
    if not raw_dir.is_dir():
        raise ValueError(f"raw data folder '{raw_dir}' does not exist; {layout_help}.")
    if "{split}" in naming.image_folder:
        folders = _side_by_side(raw_dir, naming)
        if "train" not in folders:
            raise ValueError(f"no training images: no folder in '{raw_dir}' matches convert.image_folder "
                             f"{naming.image_folder!r} with {{split}} = train (or training).")
        return folders
    images = _folder(raw_dir, naming.image_folder, param="image_folder", names=IMAGE_FOLDER_NAMES)
    split_dirs = _split_folders(raw_dir)
    if images and split_dirs:
        raise ValueError(f"'{raw_dir}' mixes a pooled layout ({images.name}/) with split folders "
                         f"({', '.join(sorted(split_dirs))}); use one layout: {layout_help}.")
    if images:
        masks = images if naming.shared_folder else _folder(raw_dir, naming.mask_folder, param="mask_folder",
                                                             names=MASK_FOLDER_NAMES, exclude=images)
        if masks is None:
            raise ValueError(f"'{raw_dir}' has an images folder ('{images.name}/') but no masks folder "
                             f"(convert.mask_folder: {naming.mask_folder!r}); {layout_help}.")
        image_splits, mask_splits = _split_folders(images), _split_folders(masks)
        loose = [p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")]
        if image_splits and not loose and set(image_splits) == set(mask_splits):
            # images/train + masks/train (ADE20K style): the subfolders are a given split, not groups.
            if "train" not in image_splits:
                raise ValueError(f"'{images}' has split folders {sorted(image_splits)} but no train/; {layout_help}.")
            return {split: (image_splits[split], mask_splits[split]) for split in image_splits}
        return {"": (images, masks)}
    if not split_dirs:
        raise ValueError(f"no images found: '{raw_dir}' has no images folder and no train/ folder; {layout_help}."
                         + _side_by_side_hint(raw_dir))
    if "train" not in split_dirs:
        raise ValueError(f"'{raw_dir}' has split folders {sorted(split_dirs)} but no train/; {layout_help}.")
    folders = {}
    for split, folder in split_dirs.items():
        images = _folder(folder, naming.image_folder, param="image_folder", names=IMAGE_FOLDER_NAMES)
        masks = images if naming.shared_folder else images and _folder(
            folder, naming.mask_folder, param="mask_folder", names=MASK_FOLDER_NAMES, exclude=images)
        if images is None or masks is None:
            found = ", ".join(f"'{c.name}/'" for c in sorted(folder.iterdir()) if c.is_dir()) or "no folders"
            siblings = [c.name for c in sorted(raw_dir.iterdir()) if c.is_dir() and c != folder
                        and c.name.lower().startswith(folder.name.lower())]
            beside = (f" If the images sit directly in '{folder.name}/' and the masks in '{siblings[0]}/' beside it, "
                      f"set convert.image_folder: '{{split}}' and convert.mask_folder: "
                      f"'{{split}}{siblings[0][len(folder.name):]}'." if siblings else "")
            raise ValueError(f"'{folder}' needs an images folder and a masks folder (convert.image_folder: "
                             f"{naming.image_folder!r}, convert.mask_folder: {naming.mask_folder!r}); found {found}. "
                             f"Set those params to the folder names; {layout_help}.{beside}")
        folders[split] = (images, masks)
    return folders


def _sample_folders(raw_dir: Path, naming: Naming) -> list[tuple[Path, Path, Path]]:
    """[(sample folder, its images folder, its masks folder)] when raw_dir holds no images folder and no split
    folders, but folders that each hold an images folder and a masks folder; [] for any other layout.
    Raises ValueError naming the folders that lack one when the others are sample folders."""
    if "{split}" in naming.image_folder or naming.shared_folder or not raw_dir.is_dir():
        return []
    children = sorted(c for c in raw_dir.iterdir() if c.is_dir() and not c.name.startswith("."))
    if not children or any(c.name.lower() in SPLIT_ALIASES for c in children) or _matching_dirs(
            raw_dir, naming.image_folder, IMAGE_FOLDER_NAMES):
        return []
    samples, others = [], []
    for child in children:
        images = _folder(child, naming.image_folder, param="image_folder", names=IMAGE_FOLDER_NAMES)
        masks = images and _folder(child, naming.mask_folder, param="mask_folder", names=MASK_FOLDER_NAMES,
                                   exclude=images)
        if images and _split_folders(images):  # <wrapper>/images/train/...: a split that must not become groups
            return []
        if masks:
            samples.append((child, images, masks))
        else:
            others.append(f"'{child.name}/' ({'no masks folder' if images else 'no images folder'})")
    if samples and others:  # Data Science Bowl's test samples come without masks/
        raise ValueError(f"'{raw_dir}' holds a folder per sample ('{samples[0][0].name}/' with "
                         f"'{samples[0][1].name}/' and '{samples[0][2].name}/'), but not every folder has both: "
                         + ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
                         + ". Every sample folder needs an images and a masks folder (folder names: "
                         "convert.image_folder, convert.mask_folder); move the others out of data/raw.")
    return [] if others else samples


def _pair_sample(sample: Path, images_dir: Path, masks_dir: Path, naming: Naming, raw_dir: Path,
                 problems: list[Problem], ignored: list[Path]) -> list[Pair]:
    """The pairs of one sample folder (see the module docstring)."""
    name = sample.relative_to(raw_dir).as_posix()
    # What the listing finds is kept only when this function pairs: _pair_folder lists (and reports) again.
    found: list[Problem] = []
    skipped: list[Path] = []
    image_files = list_files(images_dir, raw_dir, found, skipped)
    if len(image_files) != 1:
        pairs = pair_folder(images_dir, masks_dir, "", naming, raw_dir, problems, ignored)
        return [replace(p, id=f"{name}/{p.id}", group=name if p.group == NO_GROUP else f"{name}/{p.group}")
                for p in pairs]
    mask_files = list_files(masks_dir, raw_dir, found, skipped)
    problems += found
    ignored += skipped
    if not mask_files:
        problems.append(Problem(image_files[0], f"image without mask: its sample folder's masks folder "
                                                f"'{masks_dir}' holds none"))
        return []
    return [Pair(name, "", NO_GROUP, image_files[0], mask_files[0], tuple(mask_files[1:]))]


def _has_layout(raw_dir: Path, naming: Naming) -> bool:
    return ("{split}" in naming.image_folder or bool(_matching_dirs(raw_dir, naming.image_folder, IMAGE_FOLDER_NAMES))
            or bool(_split_folders(raw_dir)) or bool(_sample_folders(raw_dir, naming)))


def unwrap(raw_dir: Path, *, naming: Naming = Naming()) -> tuple[Path, list[Path]]:
    """(the folder whose layout find_pairs reads, the files left beside the folders descended through):
    `raw_dir`, or while it holds no layout of its own and exactly one folder, that folder, when a layout is
    found there (else `raw_dir`, whose errors and hints then speak of the folder the user filled)."""
    folder, beside = Path(raw_dir), []
    while folder.is_dir() and not _has_layout(folder, naming):
        children = [c for c in sorted(folder.iterdir()) if not c.name.startswith(".")]
        folders = [c for c in children if c.is_dir()]
        if len(folders) != 1:
            return Path(raw_dir), []
        beside += [c for c in children if not c.is_dir()]
        folder = folders[0]
    return (folder, beside) if folder.is_dir() else (Path(raw_dir), [])


def find_pairs(raw_dir: Path, *, naming: Naming = Naming()) -> tuple[list[Pair], list[Problem], list[Path]]:
    """Lists the image/mask pairs of `raw_dir` and every problem found on the way.

    Args:
        raw_dir: the raw data folder (see the module docstring for layouts).
        naming: folder and pairing rules (the convert params of the same names).

    Returns:
        (pairs sorted by id, problems, files skipped as documents (DOCUMENT_EXTENSIONS)). Layout errors that
        leave nothing to convert raise ValueError.
    """
    naming.check()
    raw_dir = Path(raw_dir)
    problems: list[Problem] = []
    ignored: list[Path] = []
    pairs: list[Pair] = []
    samples = _sample_folders(raw_dir, naming)
    for sample, images_dir, masks_dir in samples:
        pairs += _pair_sample(sample, images_dir, masks_dir, naming, raw_dir, problems, ignored)
    for split, (images_dir, masks_dir) in [] if samples else sorted(find_folders(raw_dir, naming).items()):
        pairs += pair_folder(images_dir, masks_dir, split, naming, raw_dir, problems, ignored)
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
        raise ValueError(f"no images found under '{raw_dir}'; expected images in {', '.join(SUPPORTED_EXTENSIONS)}.")
    return sorted(pairs, key=lambda p: p.id), problems, sorted(ignored)
