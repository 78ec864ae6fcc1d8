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
                   image takes every mask of its masks folder, merged into one (segpipe/mask_merge.py);
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

Pairing: by stem, the mask stem being `mask_stem_pattern.format(stem=<image stem>)` ("{stem}_mask"),
or, when the pattern has a `*`, every mask stem it matches ("{stem}_mask*": BUSI's x_mask and x_mask_1, one
lesion each), whose masks are merged into one (segpipe/mask_merge.py); or by key, when `image_key` is set:
a regular expression whose first group, searched in the image stem, must equal the same search
(`mask_key`, default `image_key`) in the mask stem
(`case17_image` <-> `case17_label` with `(case\\d+)`; `img_0042` <-> `0042_gt` with `(\\d+)`).
Stems and keys compare case-insensitively; any supported extension.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from segpipe.image_io import SUPPORTED_EXTENSIONS

NO_GROUP = "all"
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test", "testing": "test"}
IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "jpegimages", "inputs")
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "gt", "groundtruth", "ground_truth", "annotations",
                     "annotation", "annot", "segmentations", "segmentationclass", "1st_manual", "targets")
IGNORED_FILES = {"thumbs.db", "desktop.ini"}
# Files a dataset ships beside its pictures (a README, a class list, a licence): skipped and named, not
# errors. Other unknown types (.npy, .dcm, .nii) may be data in a format segpipe does not read: errors.
DOCUMENT_EXTENSIONS = (".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml", ".html", ".pdf",
                       ".log")


@dataclass(frozen=True)
class Pair:
    id: str           # unique, e.g. "nails/img_001" or "valid/img_001"; also the output file stem
    split: str        # "train", "valid", "test", or "" when the raw data has no given split
    group: str
    image_path: Path
    mask_path: Path
    extra_mask_paths: tuple[Path, ...] = ()  # more masks of this image, merged into mask_path's (a `*` pattern)


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str


@dataclass(frozen=True)
class Naming:
    """How files are found and paired: the convert params of the same names (see the module docstring)."""
    image_folder: str = "auto"
    mask_folder: str = "auto"
    mask_stem_pattern: str = "{stem}"
    image_key: str | None = None
    mask_key: str | None = None

    @property
    def shared_folder(self) -> bool:
        """Whether images and masks sit in one folder (told apart by mask_stem_pattern)."""
        return self.image_folder != "auto" and self.image_folder.lower() == self.mask_folder.lower()

    @property
    def merges_masks(self) -> bool:
        """Whether mask_stem_pattern has a `*`: every mask it matches for an image is merged into one."""
        return "*" in self.mask_stem_pattern

    def image_stem_of_mask(self, stem: str) -> str | None:
        """The (lower-case) image stem that mask stem `stem` belongs to under mask_stem_pattern; None if the
        name does not fit it."""
        pattern = (re.escape(self.mask_stem_pattern).replace(re.escape("{stem}"), "(.+)")
                   .replace(re.escape("*"), ".*"))
        found = re.fullmatch(pattern, stem, re.IGNORECASE)
        return found.group(1).lower() if found else None

    def is_mask_name(self, stem: str) -> bool:
        """In a shared folder: whether `stem` is a mask's, i.e. fits mask_stem_pattern for some image stem."""
        return self.image_stem_of_mask(stem) is not None

    def check(self) -> None:
        """Raises ValueError naming the param when the rules cannot work together."""
        if self.shared_folder and (self.image_key is not None or self.mask_stem_pattern == "{stem}"):
            raise ValueError(f"params convert.image_folder and convert.mask_folder both name {self.image_folder!r}: "
                             "images and masks share that folder, so convert.mask_stem_pattern must tell the masks "
                             "from the images (e.g. '{stem}_mask' for x.tif + x_mask.tif), and convert.image_key "
                             "must be null.")
        if ("{split}" in self.image_folder) != ("{split}" in self.mask_folder):
            raise ValueError(f"params convert.image_folder ({self.image_folder!r}) and convert.mask_folder "
                             f"({self.mask_folder!r}): either both name the split with '{{split}}' (side-by-side "
                             "split folders such as train/ + trainannot/) or neither does.")
        if self.image_key is None:
            if self.mask_key is not None:
                raise ValueError("param 'convert.mask_key' is set but convert.image_key is null; set image_key too "
                                 "(mask_key alone has nothing to compare with).")
            return
        if self.mask_stem_pattern != "{stem}":
            raise ValueError(f"params convert.image_key ({self.image_key!r}) and convert.mask_stem_pattern "
                             f"({self.mask_stem_pattern!r}) are two pairing rules; keep one (mask_stem_pattern: "
                             "'{stem}' when pairing by key).")
        for name in ("image_key", "mask_key"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                groups = re.compile(pattern).groups
            except re.error as err:
                raise ValueError(f"param 'convert.{name}' is not a valid regular expression ({pattern!r}: "
                                 f"{err}).") from None
            if groups < 1:
                raise ValueError(f"param 'convert.{name}' ({pattern!r}) needs a group in parentheses around the key, "
                                 "e.g. '(\\d+)' or '(case\\d+)_'.")


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


def _link_problem(path: Path, raw_dir: Path) -> Problem | None:
    """A problem for a symbolic link that loops or leads out of raw_dir (to a file a clone of the project
    would not have); None for a good link. Links inside raw_dir, and a raw_dir that is itself a link, are fine."""
    loop = Problem(path, "a link loop (the link leads back to itself); replace it with the file")
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # how Python before 3.13 reports a loop
        return loop
    except OSError as err:
        if err.errno == errno.ELOOP:
            return loop
        return Problem(path, f"a broken link to '{os.readlink(path)}'; replace it with the file")
    if not target.is_relative_to(raw_dir.resolve()):
        return Problem(path, f"a link to a file outside {raw_dir} ('{target}'): the project would depend on a file "
                             "that is not part of it (a clone, CI or another machine lacks it); copy the file into "
                             f"{raw_dir}")
    return None


def _list_files(root: Path, raw_dir: Path, problems: list[Problem], ignored: list[Path]) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if path.name.startswith(".") or path.name.lower() in IGNORED_FILES:
            continue
        if path.is_symlink():
            problem = _link_problem(path, raw_dir)
            if problem is not None:
                problems.append(problem)
                continue
        if not path.is_file():
            continue
        if path.suffix.lower() in DOCUMENT_EXTENSIONS:
            ignored.append(path)
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


def _key(stem: str, pattern: str) -> str | None:
    found = re.search(pattern, stem)
    return found.group(1).lower() if found and found.group(1) is not None else None


def _keyed(files: list[Path], root: Path, key_of, *, param: str, pattern: str | None,
           problems: list[Problem]) -> dict[tuple[str, str], list[Path]]:
    """{(group, key): files}; files whose stem the key rule does not match become problems."""
    keyed: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        key = key_of(path.stem)
        if key is None:
            problems.append(Problem(path, f"the name does not match convert.{param} {pattern!r}, so it cannot be "
                                          "paired; rename the file or change the pattern"))
            continue
        keyed.setdefault((_group_of(path, root), key), []).append(path)
    return keyed


def _pair_folder(images_dir: Path, masks_dir: Path, split: str, naming: Naming, raw_dir: Path,
                 problems: list[Problem], ignored: list[Path]) -> list[Pair]:
    if images_dir == masks_dir:  # one folder: the mask naming rule tells masks from images
        marker = max(naming.mask_stem_pattern.replace("*", "").split("{stem}"), key=len).lower()
        mask_files, image_files = [], []
        for path in _list_files(images_dir, raw_dir, problems, ignored):
            if naming.is_mask_name(path.stem):
                mask_files.append(path)
            elif marker in path.stem.lower():  # BUSI's second mask of one image, x_mask_1.png: neither
                problems.append(Problem(path, f"'{marker}' in its name looks like a mask, but the name does not "
                                              f"fit convert.mask_stem_pattern {naming.mask_stem_pattern!r}; a second "
                                              "mask of one image? A '*' in the pattern merges every mask of an "
                                              f"image ('{{stem}}{marker}*'); or remove it"))
            else:
                image_files.append(path)
    else:
        mask_files = _list_files(masks_dir, raw_dir, problems, ignored)
        image_files = _list_files(images_dir, raw_dir, problems, ignored)
    if bool(image_files) != bool(mask_files):
        empty, what, param, full, count = ((images_dir, "images", "image_folder", masks_dir, len(mask_files))
                                           if mask_files else (masks_dir, "masks", "mask_folder", images_dir,
                                                               len(image_files)))
        raise ValueError(f"'{empty}' holds no {what}, but '{full}' holds {count} file(s); put the {what} there, "
                         f"or set convert.{param} to the folder that holds them.")
    mask_pattern = naming.mask_key or naming.image_key
    mask_param = "mask_key" if naming.mask_key else "image_key"
    if naming.image_key is None and naming.merges_masks:  # the image stem inside each mask's name is its key
        image_key = lookup = lambda stem: stem.lower()  # noqa: E731
        mask_key = naming.image_stem_of_mask
        mask_pattern, mask_param = naming.mask_stem_pattern, "mask_stem_pattern"
    elif naming.image_key is None:
        image_key, mask_key = (lambda stem: stem.lower()), (lambda stem: stem.lower())
        lookup = lambda stem: naming.mask_stem_pattern.format(stem=stem).lower()  # noqa: E731
    else:
        image_key = lambda stem: _key(stem, naming.image_key)  # noqa: E731
        mask_key = lambda stem: _key(stem, mask_pattern)  # noqa: E731
        lookup = image_key
        if image_files and all(image_key(p.stem) is None for p in image_files):
            raise ValueError(f"param 'convert.image_key' '{naming.image_key}' matches none of the {len(image_files)} "
                             f"image names in '{images_dir}' (e.g. '{image_files[0].stem}'); fix the pattern.")
        if mask_files and all(mask_key(p.stem) is None for p in mask_files):
            param = "mask_key" if naming.mask_key else "image_key (used for masks too: convert.mask_key is null)"
            raise ValueError(f"param 'convert.{param}' '{mask_pattern}' matches none of the {len(mask_files)} mask "
                             f"names in '{masks_dir}' (e.g. '{mask_files[0].stem}'); fix the pattern or set "
                             "convert.mask_key for the masks.")
    masks = _keyed(mask_files, masks_dir, mask_key, param=mask_param, pattern=mask_pattern, problems=problems)
    images = _keyed(image_files, images_dir, image_key, param="image_key", pattern=naming.image_key, problems=problems)

    rule = ("convert.mask_stem_pattern sets the mask naming rule" if naming.image_key is None
            else "convert.image_key/mask_key set the pairing rule")
    pairs, used_masks = [], set()
    for (group, key), image_paths in sorted(images.items()):
        mask_lookup = (group, lookup(image_paths[0].stem))
        used_masks.add(mask_lookup)  # reported with its image(s) below, not again as an orphan
        if len(image_paths) > 1:
            shared = "stem" if naming.image_key is None else f"key '{key}'"
            for path in image_paths:
                problems.append(Problem(path, f"several images share this {shared} ("
                                        + ", ".join(p.name for p in image_paths)
                                        + "), so they would pair with one mask and their outputs would collide; "
                                        + "rename all but one" + ("" if naming.image_key is None
                                                                  else " or make convert.image_key capture more")))
            continue
        image_path = image_paths[0]
        candidates = masks.get(mask_lookup, [])
        if not candidates:
            where = masks_dir / ("" if group == NO_GROUP else group)
            expected = (f"'{where / naming.mask_stem_pattern.format(stem=image_path.stem)}.<ext>'"
                        if naming.image_key is None else f"a mask in '{where}' whose key is '{key}'")
            hint = _annotation_hint(image_path, group, images) if images_dir == masks_dir else ""
            problems.append(Problem(image_path, f"image without mask: expected {expected} ({rule}){hint}"))
            continue
        if len(candidates) > 1 and not naming.merges_masks:
            problems.append(Problem(image_path, "several masks match this image ("
                                    + ", ".join(p.name for p in candidates) + "); keep one"))
            continue
        parts = ([split] if split else []) + ([] if group == NO_GROUP else [group]) + [image_path.stem]
        pairs.append(Pair("/".join(parts), split, group, image_path, candidates[0], tuple(candidates[1:])))
    for key in sorted(set(masks) - used_masks):
        for path in masks[key]:
            problems.append(Problem(path, f"mask without image: no image in '{images_dir}' pairs with it ({rule})"))
    return pairs


def _annotation_hint(path: Path, group: str, images: dict[tuple[str, str], list[Path]]) -> str:
    """For a file taken as an image in a folder of images and masks: a hint when its stem is another image's
    stem plus a suffix (CHASE_DB1's second annotator, x_2ndHO.png beside x.jpg and x_1stHO.png), else ""."""
    stem = path.stem.lower()
    for cut in (i for i, char in enumerate(stem) if char in "_- ." and i):
        if others := images.get((group, stem[:cut])):
            return (f"; its name extends image '{others[0].name}''s: another annotation of that image? Remove it, "
                    "or skip it (convert.on_error: skip)")
    return ""


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
    image_files = _list_files(images_dir, raw_dir, found, skipped)
    if len(image_files) != 1:
        pairs = _pair_folder(images_dir, masks_dir, "", naming, raw_dir, problems, ignored)
        return [replace(p, id=f"{name}/{p.id}", group=name if p.group == NO_GROUP else f"{name}/{p.group}")
                for p in pairs]
    mask_files = _list_files(masks_dir, raw_dir, found, skipped)
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
        pairs += _pair_folder(images_dir, masks_dir, split, naming, raw_dir, problems, ignored)
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
