"""Pair the images and masks of one folder (segpipe/data/raw_layout.py finds the folders): the files, links and
groups under it, and which mask goes with which image.

Pairing: by stem, the mask stem being `mask_stem_pattern.format(stem=<image stem>)` ("{stem}_mask"),
or, when the pattern has a `*`, every mask stem it matches ("{stem}_mask*": BUSI's x_mask and x_mask_1, one
lesion each), whose masks are merged into one (segpipe/data/mask_merge.py); or by key, when `image_key` is set:
a regular expression whose first group, searched in the image stem, must equal the same search
(`mask_key`, default `image_key`) in the mask stem
(`case17_image` <-> `case17_label` with `(case\\d+)`; `img_0042` <-> `0042_gt` with `(\\d+)`).
Stems and keys compare case-insensitively; any supported extension.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from segpipe.data.image_io import SUPPORTED_EXTENSIONS

NO_GROUP = "all"


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


def list_files(root: Path, raw_dir: Path, problems: list[Problem], ignored: list[Path]) -> list[Path]:
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


def pair_folder(images_dir: Path, masks_dir: Path, split: str, naming: Naming, raw_dir: Path,
                 problems: list[Problem], ignored: list[Path]) -> list[Pair]:
    if images_dir == masks_dir:  # one folder: the mask naming rule tells masks from images
        marker = max(naming.mask_stem_pattern.replace("*", "").split("{stem}"), key=len).lower()
        mask_files, image_files = [], []
        for path in list_files(images_dir, raw_dir, problems, ignored):
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
        mask_files = list_files(masks_dir, raw_dir, problems, ignored)
        image_files = list_files(images_dir, raw_dir, problems, ignored)
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
