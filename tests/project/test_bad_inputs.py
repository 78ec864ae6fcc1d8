"""The bad-input corpus: each case breaks one thing in a finished tiny project (a file, a layout, a param,
the environment), runs the stage that meets it as `dvc repro` would (its dvc.yaml command, a subprocess)
or segpipe-predict as a user would,
and checks what the user sees: the exit code, ONE error line naming the culprit and the fix, and not a byte
of the project changed (no partial outputs, no temp files). A few inputs that look odd but are valid (16-bit
and palette masks, non-ASCII names, a README beside the masks) must go through instead.

docs/reference/bad-inputs.md is the table of these cases and the messages they give, generated from this module:
    SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_bad_inputs.py
test_the_docs_table_is_current fails when the table and the cases drift apart.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, TINY_PREFLIGHT, TINY_TRAIN, box_mask, pattern_image, save_pair

DOCS_TABLE = REPO / "docs" / "reference" / "bad-inputs.md"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots")


PREDICT = "segpipe-predict"
# segpipe-predict's arguments in a finished project, unless a case gives its own: the images of shots/.
PREDICT_ARGS = ("--model", "models/model.keras", "--input", "shots", "--output", "shots_masks")


def stage_command(stage: str, args: tuple[str, ...] = ()) -> list[str]:
    """The stage's dvc.yaml command with this interpreter as `python` (segpipe-predict: as its module; a fold
    stage `name@k`: its foreach template for item k)."""
    if stage == PREDICT:
        return [sys.executable, "-m", "segpipe.inference.predict", *(args or PREDICT_ARGS)]
    name, _, item = stage.partition("@")
    command = shlex.split(STAGES[name]["do"]["cmd"].replace("${item}", item) if item else STAGES[stage]["cmd"])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def run(project: Path, stage: str, args: tuple[str, ...] = (), extra_env: dict | None = None,
        **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **(extra_env or {}))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(stage_command(stage, args), cwd=project, env=env, capture_output=True, text=True,
                          timeout=300, **popen)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny project on which every stage has run once: 10 pairs of 32x40 images, a 2-epoch U-Net."""
    project = tmp_path_factory.mktemp("finished")
    for index in range(10):
        save_pair(project / "data/raw", f"images/cell{index}.png", f"masks/cell{index}.png", height=32, width=40,
                  seed=index)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mlflow"] = False
    params["convert"]["num_workers"] = 1
    params["augment"]["num_workers"] = 1
    params["train"].update(TINY_TRAIN)
    params["preflight"].update(TINY_PREFLIGHT)
    params["evaluate"].update(num_samples=1, worst_k=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in (name for name, stage in STAGES.items() if "foreach" not in stage):  # cv.folds: [], no folds
        done = run(project, stage)
        assert done.returncode == 0, f"{stage}:\n{done.stderr}"
    return project


def snapshot(project: Path) -> dict[str, str]:
    """Every file and folder of the project (links as their target), with a hash of each file's bytes."""
    found = {}
    for path in sorted(project.rglob("*")):
        rel = path.relative_to(project).as_posix()
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[rel] = "folder"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ------------------------------------------------------------------------------------------ setup helpers
def edit_params(project: Path, key: str, value=None, *, delete: bool = False, rename: str | None = None) -> None:
    """Sets (or deletes, or renames) `section.key` or a top-level key in the project's params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    *sections, name = key.split(".")
    holder = params
    for section in sections:
        holder = holder[section]
    if rename is not None:
        holder[rename] = holder.pop(name)
    elif delete:
        del holder[name]
    else:
        holder[name] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def raw(project: Path, rel: str = "") -> Path:
    return project / "data/raw" / rel


def save_mask(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def truncated_jpeg(project):
    path = raw(project, "images/cell3.jpg")
    Image.fromarray(pattern_image(32, 40, seed=3)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    raw(project, "images/cell3.png").unlink()


def wide_colour_images(project):
    """48-bit RGB PNGs holding 12-bit data (a microscope's or satellite's colour), written by OpenCV."""
    import cv2

    for image in raw(project, "images").iterdir():
        array = np.asarray(Image.open(image).convert("RGB")).astype(np.uint16) * 16  # 0..4080
        assert cv2.imwrite(str(image), array[..., ::-1])


def truncated_wide_colour_image(project):
    wide_colour_images(project)
    path = raw(project, "images/cell3.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def decompression_bomb(project):
    """A 40000x40000 1-bit PNG of about 200 KB (1.6 billion pixels once decoded), written row by row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side, packer = 40000, zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    raw(project, "images/cell3.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def float_image_with_nan(project):
    """A float32 TIFF image with a block of NaN, as a failed reconstruction or a masked export leaves it."""
    image = np.asarray(Image.open(raw(project, "images/cell3.png")).convert("L"), np.float32) / 255
    image[4:8, 4:8] = np.nan
    Image.fromarray(image, "F").save(raw(project, "images/cell3.tif"))
    raw(project, "images/cell3.png").unlink()


def alpha_only_mask(project, *, read_alpha: bool = False):
    """A cut-out mask: RGB all zero, the object opaque in the alpha channel (matting datasets)."""
    path = raw(project, "masks/cell3.png")
    labels = np.asarray(Image.open(path).convert("L")) > 0
    rgba = np.zeros((*labels.shape, 4), np.uint8)
    rgba[..., 3] = np.where(labels, 255, 0)
    Image.fromarray(rgba, "RGBA").save(path)
    if read_alpha:
        for mask in sorted(raw(project, "masks").glob("*.png")):
            if mask != path:
                ids = np.asarray(Image.open(mask).convert("L")) > 0
                cut_out = np.zeros((*ids.shape, 4), np.uint8)
                cut_out[..., 3] = np.where(ids, 255, 0)
                Image.fromarray(cut_out, "RGBA").save(mask)
        edit_params(project, "convert.mask_alpha", True)


def edit_params_text(project: Path, old: str, new: str) -> None:
    """Edits params.yaml as text, as a user does (edit_params goes through a YAML writer, which quotes)."""
    text = (project / "params.yaml").read_text()
    assert old in text
    (project / "params.yaml").write_text(text.replace(old, new, 1))


def class_id_beyond_num_classes(project):
    edit_params(project, "num_classes", 3)
    for index, mask in enumerate(sorted(raw(project, "masks").iterdir())):
        save_mask(mask, np.full((32, 40), 5 if mask.stem == "cell8" else index % 3, np.uint8))


def one_pixel_pair(project):
    save_pair(raw(project), "images/dot.png", "masks/dot.png", height=1, width=1)


def csv_without_column(project):
    path = project / "data/csv/train.csv"
    lines = [",".join(line.split(",")[:2] + line.split(",")[3:]) for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def csv_path_outside(project):
    path = project / "data/csv/train.csv"
    lines = path.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = "../../outside/secret.png"
    path.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")


def every_train_mask_empty(project):
    for mask in raw(project, "masks").iterdir():
        save_mask(mask, np.zeros((32, 40), np.uint8))
    done = run(project, "convert-to-png")  # empty masks are valid masks; what they train is not
    assert done.returncode == 0, done.stderr


def sixteen_bit_masks(project):
    for mask in raw(project, "masks").iterdir():
        array = np.asarray(Image.open(mask)).astype(np.uint16) * 257  # 0 / 65535
        Image.fromarray(array).save(mask)


def palette_masks(project):
    edit_params(project, "num_classes", 3)
    edit_params(project, "class_names", ["a", "b", "c"])
    for index, mask in enumerate(sorted(raw(project, "masks").iterdir())):
        ids = np.zeros((32, 40), np.uint8)
        ids[4:12, 5:15], ids[20:30, 20 + index % 3:30] = 1, 2
        image = Image.fromarray(ids, "P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        image.save(mask)


def unusual_names(project):
    for index in (1, 2):
        for kind in ("images", "masks"):
            raw(project, f"{kind}/cell{index}.png").rename(raw(project, f"{kind}/Zelle {index} größe é.png"))


def symlink_loop(project):
    raw(project, "images/loop.png").symlink_to("loop.png")


def link_outside(project):
    outside = project / "elsewhere"
    save_pair(outside, "images/far.png", "masks/far.png", height=32, width=40)
    for kind in ("images", "masks"):
        raw(project, f"{kind}/far.png").symlink_to(outside / kind / "far.png")


def raw_folder_is_a_link(project):
    shutil.move(project / "data/raw", project / "datasets_elsewhere")
    (project / "data/raw").symlink_to(project / "datasets_elsewhere")


def unwritable_outputs(project):
    for folder in (project / "data", project / "data/png"):
        folder.chmod(0o555)
    edit_params(project, "convert.image_mode", "L")  # so the stage has something new to write


def shots(project, *, count: int = 2, folder: str = "shots"):
    """`count` new 8-bit RGB photos to predict, in `folder` of the project."""
    for index in range(count):
        path = project / folder / f"shot{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pattern_image(30, 44, seed=20 + index)).save(path)


def predict_args(**given) -> tuple[str, ...]:
    """PREDICT_ARGS with `--name value` replaced or added (name with _ for -); a value of True is a flag."""
    args = dict(zip(PREDICT_ARGS[::2], PREDICT_ARGS[1::2], strict=True))
    for name, value in given.items():
        args["--" + name.replace("_", "-")] = value
    return tuple(item for flag, value in args.items() for item in ((flag,) if value is True else (flag, str(value))))


def locked_output(project):
    shots(project)
    (project / "locked").mkdir()
    (project / "locked").chmod(0o555)


def truncated_model(project):
    shots(project)
    path = project / "models/model.keras"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def hdf5_model(project):
    shots(project)
    (project / "models/model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2000))


def sixteen_bit_shot(project):
    shots(project)
    Image.fromarray(np.full((30, 44), 3000, np.uint16)).save(project / "shots/deep.png")


def a_file_predict_did_not_write(project):
    shots(project)
    (project / "shots_masks").mkdir()
    (project / "shots_masks/shot1.png").write_bytes(b"the user's own file")


def one_foreground_class_in_two_images(project):
    """Masks with foreground in two of the ten images only: three folds cannot all hold it."""
    for index, mask in enumerate(sorted(raw(project, "masks").iterdir())):
        if index not in (0, 5):
            save_mask(mask, np.zeros((32, 40), np.uint8))
    for stage in ("convert-to-png", "build-csv"):
        done = run(project, stage)
        assert done.returncode == 0, done.stderr
    edit_params(project, "cv.folds", [0, 1, 2])


def ensemble_with_a_missing_fold(project):
    shots(project)
    (project / "models/ensemble.json").write_text(json.dumps(
        {"models": ["../cv/fold-0/model/model.keras", "../cv/fold-1/model/model.keras"], "threshold": 0.5}))
    (project / "cv/fold-0/model").mkdir(parents=True)
    for name in ("model.keras", "inference.json"):
        shutil.copy(project / "models" / name, project / "cv/fold-0/model" / name)


def predicted_once(project):
    shots(project)
    done = run(project, PREDICT)
    assert done.returncode == 0, done.stderr


# (section, the stage that reads it, a key, a typo of it)
TYPOS = [("convert", "convert-to-png", "mask_threshold", "mask_treshold"),
         ("build_csv", "build-csv", "valid_fraction", "valid_fraciton"),
         ("split_balanced", "split-balanced", "num_bins", "num_bin"),
         ("augment", "augment", "copies", "copys"),
         ("preflight", "preflight", "overfit_steps", "overfit_step"),
         ("train", "train", "learning_rate", "lerning_rate"),
         ("evaluate", "evaluate", "tta", "tta_mode")]


@dataclass
class Case:
    name: str             # the case, as the docs table says it
    stage: str            # the stage that meets it
    setup: Callable       # breaks the finished project
    expect: str           # a fragment of the error line that names the culprit (or, for valid input, the output)
    fix: str = ""         # a fragment of the error line that says what to do
    code: int = 2         # exit code; 0 = the input is valid and must go through
    args: tuple[str, ...] = ()  # segpipe-predict's arguments (default PREDICT_ARGS)
    drop_capabilities: bool = False  # run without root's power to write anywhere
    file_size_limit: int = 0         # bytes (RLIMIT_FSIZE, `ulimit -f`): a disk that fills up mid-write


CASES = [
    # --------------------------------------------------------------------------- files and layouts
    Case("truncated JPEG", "convert-to-png", truncated_jpeg, "data/raw/images/cell3.jpg: unreadable image",
         "convert.on_error: skip"),
    Case("truncated 48-bit RGB PNG", "convert-to-png", truncated_wide_colour_image,
         "data/raw/images/cell3.png: unreadable image: cannot decode",
         "convert.on_error: skip"),
    Case("empty (0-byte) mask", "convert-to-png", lambda p: raw(p, "masks/cell2.png").write_bytes(b""),
         "data/raw/masks/cell2.png: unreadable mask: empty file (0 bytes)", "convert.on_error: skip"),
    Case("text file named .png", "convert-to-png", lambda p: raw(p, "images/cell4.png").write_text("not a picture"),
         "data/raw/images/cell4.png: unreadable image", "Fix or remove"),
    Case("mask and image sizes differ", "convert-to-png",
         lambda p: save_mask(raw(p, "masks/cell5.png"), box_mask(20, 20).astype(np.uint8) * 255),
         "data/raw/masks/cell5.png: size mismatch", "Fix or remove"),
    Case("two images with one stem", "convert-to-png",
         lambda p: shutil.copy(raw(p, "images/cell1.png"), raw(p, "images/cell1.jpg")),
         "data/raw/images/cell1.jpg: several images share this stem", "rename all but one"),
    Case("image without a mask", "convert-to-png", lambda p: raw(p, "masks/cell6.png").unlink(),
         "data/raw/images/cell6.png: image without mask", "Fix or remove"),
    Case("mask without an image", "convert-to-png", lambda p: raw(p, "images/cell6.png").unlink(),
         "data/raw/masks/cell6.png: mask without image", "Fix or remove"),
    Case("empty images folder", "convert-to-png",
         lambda p: [f.unlink() for f in sorted(raw(p, "images").iterdir())],
         "'data/raw/images' holds no images, but 'data/raw/masks' holds 10 file(s)", "convert.image_folder"),
    Case("missing masks folder", "convert-to-png", lambda p: shutil.rmtree(raw(p, "masks")),
         "no masks folder", "convert.mask_folder"),
    Case("a photo given as a binary mask", "convert-to-png",
         lambda p: save_mask(raw(p, "masks/cell7.png"), pattern_image(32, 40)),
         "data/raw/masks/cell7.png: not a binary mask",
         "set num_classes"),
    Case("class ids beyond num_classes", "convert-to-png", class_id_beyond_num_classes,
         "found 1 problem(s)", "data/raw/masks/cell8.png: class ids 5 (1280 pixels) out of range for num_classes=3"),
    Case("1x1 image", "convert-to-png", one_pixel_pair, "data/raw/images/dot.png: image is 1x1 pixels",
         "at least 8x8"),
    Case("every training mask empty", "build-csv", every_train_mask_empty, "no foreground pixel in any of the",
         "convert.invert_mask"),
    Case("16-bit binary masks (0/65535)", "convert-to-png", sixteen_bit_masks, "10 pairs written", code=0),
    Case("48-bit RGB images holding 12-bit data", "convert-to-png", wide_colour_images,
         "white level 4095", code=0),
    Case("palette (P mode) masks holding class ids", "convert-to-png", palette_masks, "10 pairs written", code=0),
    Case("spaces and non-ASCII file names", "convert-to-png", unusual_names, "10 pairs written", code=0),
    Case("a README beside the masks", "convert-to-png", lambda p: raw(p, "masks/README.txt").write_text("labels"),
         "ignored 1 file that is not an image: data/raw/masks/README.txt", code=0),
    Case("an unsupported data file beside the masks", "convert-to-png",
         lambda p: raw(p, "masks/cell9.npy").write_bytes(b"\x93NUMPY"),
         "data/raw/masks/cell9.npy: unsupported file type '.npy'", "Remove or convert it"),
    Case("symlink loop", "convert-to-png", symlink_loop, "data/raw/images/loop.png: a link loop", "Fix or remove"),
    Case("links to files outside data/raw", "convert-to-png", link_outside,
         "data/raw/images/far.png: a link to a file outside data/raw", "copy the file into data/raw"),
    Case("data/raw itself a link to the dataset's folder", "convert-to-png", raw_folder_is_a_link,
         "10 pairs written", code=0),
    Case("a decompression bomb (40000x40000 1-bit PNG)", "convert-to-png", decompression_bomb,
         "data/raw/images/cell3.png: unreadable image: 40000x40000 = 1,600,000,000 pixels, more than "
         "convert.max_image_pixels", "raise convert.max_image_pixels"),
    Case("NaN pixels in a float TIFF image", "convert-to-png", float_image_with_nan,
         "data/raw/images/cell3.tif: 16 of its 1,280 pixels are NaN or infinite", "numpy.nan_to_num"),
    Case("a mask whose labels are only in the alpha channel", "convert-to-png", alpha_only_mask,
         "data/raw/masks/cell3.png: its colour is 0 everywhere while its alpha channel varies",
         "convert.mask_alpha: true"),
    Case("cut-out masks read with convert.mask_alpha", "convert-to-png", partial(alpha_only_mask, read_alpha=True),
         "10 pairs written", code=0),
    Case("convert.mask_alpha on masks without alpha", "convert-to-png",
         lambda p: edit_params(p, "convert.mask_alpha", True), "has no alpha channel", "convert.mask_alpha: false"),
    Case("hand-edited CSV without a column", "split-balanced", csv_without_column,
         "'data/csv/train.csv' has no column 'mask_path'", "dvc checkout"),
    Case("hand-edited CSV with a path outside the project", "augment", csv_path_outside,
         "'data/csv/train.csv': image_path '../../outside/secret.png' is outside the project", "dvc checkout"),
    # --------------------------------------------------------------------------------------- params
    Case("wrong param type", "convert-to-png", lambda p: edit_params(p, "convert.num_workers", "two"),
         "param 'convert.num_workers' must be int, got 'two'"),
    *(Case(f"typo in {section}", stage, partial(edit_params, key=f"{section}.{key}", rename=typo),
           f"unknown key '{typo}' in section '{section}'", f"did you mean '{key}'")
      for section, stage, key, typo in TYPOS),
    Case("typo in a shared key", "build-csv", lambda p: edit_params(p, "seed", rename="sed"),
         "unknown top-level key 'sed'", "did you mean 'seed'"),
    Case("valid_fraction: 1.5", "build-csv", lambda p: edit_params(p, "build_csv.valid_fraction", 1.5),
         "param 'build_csv.valid_fraction' must be <= 0.9, got 1.5"),
    Case("image size the depth cannot divide", "train", lambda p: edit_params(p, "train.image_size", [30, 30]),
         "param 'train.image_size' [30, 30]", "multiple of 4"),
    Case("batch larger than the data", "train", lambda p: edit_params(p, "train.batch_size", 64),
         "train.batch_size", "at most"),
    Case("unknown loss name", "train", lambda p: edit_params(p, "train.loss", {"bce": 1.0, "dise": 1.0}),
         "unknown ['dise']", "valid names"),
    Case("unknown optimizer", "train", lambda p: edit_params(p, "train.optimizer", "adamm"),
         "param 'train.optimizer' must be one of", "adamw"),
    Case("unknown encoder", "train", lambda p: edit_params(p, "train.encoder", "resnet18"),
         "param 'train.encoder' must be one of", "resnet50"),
    Case("a transform albumentations does not know", "augment",
         lambda p: edit_params(p, "augment.transforms", [{"__class_fullname__": "HorizontalFlipp", "p": 0.5}]),
         "unknown transform 'HorizontalFlipp' (did you mean 'HorizontalFlip'?)", "augment.transforms"),
    Case("a transform argument albumentations rejects", "augment",
         lambda p: edit_params(p, "augment.transforms", [{"__class_fullname__": "GaussianBlur", "blur_limit": "big"}]),
         "GaussianBlur", "augment.transforms"),
    # ---------------------------------------------------------------------------------- environment
    Case("the same key twice in params.yaml", "build-csv",
         lambda p: (p / "params.yaml").write_text((p / "params.yaml").read_text() + "seed: 7\n"),
         "key 'seed' is given twice in one mapping, at line", "delete one"),
    Case("a section given twice in params.yaml", "build-csv",
         lambda p: (p / "params.yaml").write_text((p / "params.yaml").read_text() + "build_csv:\n  seed: 1\n"),
         "key 'build_csv' is given twice in one mapping", "delete one"),
    Case("off where a word is meant (YAML 1.1 reads a boolean)", "evaluate",
         lambda p: edit_params_text(p, "tta: flips", "tta: off"),
         "param 'evaluate.tta' must be one of ['none', 'flips', 'flips_rotations'], got 'off'"),
    Case("yes where a boolean is meant", "convert-to-png",
         lambda p: edit_params_text(p, "invert_mask: false", "invert_mask: yes"),
         "param 'convert.invert_mask' must be bool, got 'yes'", "Write true or false"),
    Case("missing params.yaml", "build-csv", lambda p: (p / "params.yaml").unlink(), "'params.yaml' not found",
         "repo root"),
    Case("params.yaml that is not YAML", "train", lambda p: (p / "params.yaml").write_text("train: [unclosed\n"),
         "params.yaml", "YAML"),
    Case("evaluate before train (no model)", "evaluate", lambda p: (p / "models/model.keras").unlink(),
         "models/model.keras", "dvc repro"),
    Case("an unwritable output folder", "convert-to-png", unwritable_outputs, "Permission denied writing 'data/png'",
         "make it writable", code=1, drop_capabilities=True),
    Case("a full disk while writing images", "convert-to-png", lambda p: edit_params(p, "convert.image_mode", "L"),
         "File too large writing 'data/png/images/cell0.png'", "raise it (ulimit -f unlimited)", code=1,
         file_size_limit=1000),
    Case("a full disk while writing the plots", "evaluate", lambda p: edit_params(p, "evaluate.worst_k", 2),
         "File too large writing 'plots/evaluate/", "raise it (ulimit -f unlimited)", code=1, file_size_limit=2000),
    # ------------------------------------------------------------------------------- segpipe-predict
    Case("predict: --output is the input folder", PREDICT, shots,
         "--output 'shots' is the input folder --input 'shots'", "choose an output folder outside 'shots'",
         args=predict_args(output="shots")),
    Case("predict: --output inside the input folder", PREDICT, shots,
         "--output 'shots/masks' lies inside the input folder --input 'shots'", "choose an output folder outside",
         args=predict_args(output="shots/masks")),
    Case("predict: --output holds the input folder", PREDICT, partial(shots, folder="work/shots"),
         "--output 'work' holds 2 of the input image(s) ('work/shots/shot0.png')", "holds no input",
         args=predict_args(input="work/shots", output="work")),
    Case("predict: --output an existing file", PREDICT, lambda p: (shots(p), (p / "notes.txt").write_text("x")),
         "--output 'notes.txt' is an existing file", "choose another path", args=predict_args(output="notes.txt")),
    Case("predict: --output not writable", PREDICT, locked_output, "--output 'locked/masks' cannot be written",
         "chmod u+w", args=predict_args(output="locked/masks"), drop_capabilities=True),
    Case("predict: a file in --output that predict did not write", PREDICT, a_file_predict_did_not_write,
         "already holds 1 file(s) that segpipe-predict did not write", "move those files away"),
    Case("predict: rerun into its own output", PREDICT, predicted_once,
         "2 image(s); 2 already written by an earlier run, skipped", code=0),
    Case("predict: a truncated model", PREDICT, truncated_model, "--model 'models/model.keras' is truncated",
         "dvc checkout models/model.keras"),
    Case("predict: an HDF5 (.h5) model", PREDICT, hdf5_model, "is an HDF5 file (the Keras 2 .h5 format)",
         "expected a Keras 3 .keras file", args=predict_args(model="models/model.h5")),
    Case("predict: a text file as the model", PREDICT, lambda p: (shots(p), (p / "notes.keras").write_text("x")),
         "--model 'notes.keras' is not a Keras model file", "models/model.keras",
         args=predict_args(model="notes.keras")),
    Case("predict: the SavedModel folder as the model", PREDICT, shots,
         "--model 'models/saved_model' is a TensorFlow SavedModel folder", "models/model.keras",
         args=predict_args(model="models/saved_model")),
    Case("predict: a model without its inference.json", PREDICT,
         lambda p: (shots(p), (p / "models/inference.json").unlink()), "models/inference.json' is missing",
         "copy models/inference.json"),
    Case("predict: --threshold 1.5", PREDICT, shots, "--threshold must be in [0, 1], got 1.5",
         args=predict_args(threshold=1.5)),
    Case("predict: an input folder with no images", PREDICT,
         lambda p: ((p / "shots").mkdir(), (p / "shots/README.txt").write_text("x")),
         "--input 'shots' holds no images", "expected files ending in"),
    Case("predict: a 16-bit image for a model trained on 8-bit images", PREDICT, sixteen_bit_shot,
         "'shots/deep.png': more than 8 bits per channel", "convert it to 8 bits"),
    Case("predict: an image over --max-image-pixels", PREDICT, shots,
         "'shots/shot0.png': 44x30 = 1,320 pixels, more than --max-image-pixels = 1,000", "raise --max-image-pixels",
         args=predict_args(max_image_pixels=1000)),
    # --------------------------------------------------------------------------- cross-validation
    Case("cv.folds: [0] (one fold)", "fold-rows@0", lambda p: edit_params(p, "cv.folds", [0]),
         "param 'cv.folds' has an invalid value [0]", "e.g. [0, 1, 2, 3, 4] for 5 folds"),
    Case("cv.folds: 5 (a number, not a list)", "evaluate", lambda p: edit_params(p, "cv.folds", 5),
         "param 'cv.folds' must be list, got 5", "dvc exp run -S 'cv.folds=[0,1,2,3,4]'"),
    Case("more folds than images", "fold-rows@0", lambda p: edit_params(p, "cv.folds", list(range(12))),
         "param 'cv.folds' has 12 folds, more than the 10 train and valid rows", "use at most 10 folds"),
    Case("more folds than groups (split_by: group)", "fold-rows@0",
         lambda p: (edit_params(p, "cv.folds", [0, 1]), edit_params(p, "build_csv.split_by", "group")),
         "build_csv.split_by: group has only 1 group(s)", "put each patient or volume in its own subfolder"),
    Case("a fold left without the foreground", "fold-rows@1", one_foreground_class_in_two_images,
         "has no pixel of class foreground, which the other folds have", "Use fewer folds"),
    Case("predict: a fold model missing from the ensemble", PREDICT, ensemble_with_a_missing_fold,
         "ensemble 'models/ensemble.json' lists 2 models, of which 1 are missing: cv/fold-1/model/model.keras",
         "run the pipeline (dvc repro", args=predict_args(model="models/ensemble.json")),
    Case("predict: a gray image for a colour model", PREDICT,
         lambda p: (shots(p), Image.fromarray(np.zeros((30, 44), np.uint8)).save(p / "shots/gray.png")),
         "predict: masks written to shots_masks", code=0),
]
SEEN: dict[str, tuple[int, str]] = {}


def limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def drop_write_anywhere() -> None:
    """preexec_fn: as root, leave out the capabilities that ignore file permissions (CAP_DAC_OVERRIDE = 1,
    CAP_FOWNER = 3) from the bounding set, so the child meets a read-only folder as any user would."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 3):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_clear_error_and_changes_nothing(case, finished, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(finished, project, symlinks=True)
    case.setup(project)
    before = snapshot(project)
    popen = {}
    if case.drop_capabilities and os.geteuid() == 0:
        popen["preexec_fn"] = drop_write_anywhere
    if case.file_size_limit:
        popen["preexec_fn"] = limit_file_size(case.file_size_limit)
    try:
        done = run(project, case.stage, case.args, **popen)
    finally:
        for folder in (project / "data", project / "data/png"):
            folder.chmod(0o755)
    output = done.stdout + done.stderr
    assert done.returncode == case.code, output
    if case.code == 0:
        assert case.expect in output, output
        SEEN[case.name] = (0, case.expect)
        return
    assert "Traceback" not in output, output
    errors = [line for line in done.stderr.splitlines()
              if line.startswith(f"{case.stage.split('@')[0]}: error:")]  # fold-rows@1 runs fold-rows
    assert len(errors) == 1, done.stderr
    message = done.stderr[done.stderr.index(errors[0]):].strip()
    assert case.expect in message and case.fix in message, message
    assert snapshot(project) == before, "the failed stage changed the project"
    SEEN[case.name] = (done.returncode, message.replace(str(project), "<project>"))


def mask_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name not in ("predict.json", "predict-files.jsonl")}


def test_predict_killed_mid_run_leaves_whole_files_and_a_rerun_resumes(finished, tmp_path):
    """kill -9 after two images, then kill -9 again halfway through a file's write: whole files only, and the
    third run predicts only what is missing and ends byte-identical to a run that was never killed."""
    project = tmp_path / "project"
    shutil.copytree(finished, project, symlinks=True)
    shots(project, count=4)
    args = predict_args(overlay=True)
    assert run(project, PREDICT, predict_args(output="reference", overlay=True)).returncode == 0
    for kill_at in ("image-2", "write"):
        done = run(project, PREDICT, args, {"SEGPIPE_KILL_AT": f"{PREDICT}:{kill_at}"}, start_new_session=True)
        assert done.returncode == -9, done.stderr
        for name, data in mask_bytes(project / "shots_masks").items():  # what is there is whole
            assert name.startswith(".") or data == mask_bytes(project / "reference")[name], name
    written = {name for name in mask_bytes(project / "shots_masks") if not name.startswith(".")}
    assert written == {"shot0.png", "shot0_overlay.png", "shot1.png", "shot1_overlay.png"}
    assert any(name.startswith(".shot2.png.") for name in mask_bytes(project / "shots_masks"))  # killed mid-write
    done = run(project, PREDICT, args)
    assert done.returncode == 0, done.stderr
    assert "4 image(s); 2 already written by an earlier run, skipped" in done.stdout
    assert mask_bytes(project / "shots_masks") == mask_bytes(project / "reference")  # and no temp file left


def test_predict_reruns_what_changed_and_never_touches_other_files(finished, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(finished, project, symlinks=True)
    shots(project, count=3)
    assert run(project, PREDICT).returncode == 0
    (project / "shots_masks/notes.txt").write_text("the user's notes")  # a file predict never writes
    Image.fromarray(pattern_image(30, 44, seed=99)).save(project / "shots/shot1.png")  # a new version of one
    done = run(project, PREDICT)
    assert done.returncode == 0, done.stderr
    assert "3 image(s); 2 already written by an earlier run, skipped" in done.stdout
    done = run(project, PREDICT, predict_args(threshold=0.2, colour=True))  # other settings: all again
    assert done.returncode == 0, done.stderr
    assert "3 image(s), model input" in done.stdout
    assert (project / "shots_masks/notes.txt").read_text() == "the user's notes"
    records = [json.loads(line) for line in (project / "shots_masks/predict-files.jsonl").read_text().splitlines()]
    assert [record["stem"] for record in records] == ["shot0", "shot1", "shot2"]  # one line per image
    assert records[0]["files"] == ["shot0.png", "shot0_colour.png"]


def render_table() -> str:
    lines = ["# Bad input: what each stage says", "",
             "Generated by tests/project/test_bad_inputs.py from the cases it runs (`SEGPIPE_WRITE_DOCS=1 "
             ".venv/bin/python -m pytest tests/project/test_bad_inputs.py`); do not edit by hand. Each case breaks "
             "one thing in a finished project and runs the stage (or `segpipe-predict`) that meets it. A failing "
             "stage exits with the "
             "code shown, prints one error (below, its first line and the lines it lists), and leaves every file "
             "as it was.", "",
             "| # | input | stage | exit | what the user sees |", "|---|---|---|---|---|"]
    for number, case in enumerate(CASES, 1):
        code, message = SEEN[case.name]
        shown = "goes through: " + message if code == 0 else message
        shown = shown.replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {number} | {case.name} | {case.stage} | {code} | {shown} |")
    return "\n".join(lines) + "\n"


def test_the_docs_table_is_current():
    if len(SEEN) != len(CASES):
        pytest.skip("runs after the whole corpus (run the module as a whole)")
    table = render_table()
    if os.environ.get("SEGPIPE_WRITE_DOCS"):
        DOCS_TABLE.parent.mkdir(exist_ok=True)
        DOCS_TABLE.write_text(table)
    assert DOCS_TABLE.is_file() and DOCS_TABLE.read_text() == table, (
        "docs/reference/bad-inputs.md is out of date: "
        "SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_bad_inputs.py")
