"""Predict masks for new images with a trained model.

    segpipe-predict --model models/model.keras --input <file or folder> --output <folder>
    segpipe-predict --model models/ensemble.json ...   (the fold models of cross-validation, averaged)
        [--threshold T] [--tta none|flips|flips_rotations] [--tile-overlap 0.5] [--overlay] [--colour]
        [--probabilities] [--batch-size 8]

Accepts every format the convert stage accepts (PNG, JPEG, BMP, TIFF, GIF, WebP; 16-bit, palette,
EXIF-rotated), applies the EXIF orientation, predicts the way the model was trained (inference.json
beside the model: resized to its input, or sliding windows at native resolution; images of more than 8
bits scaled by the training data's white level) and writes each mask
at the image's ORIGINAL (upright) size as <output>/<relative path stem>.png (each page of a multi-page
TIFF stack as <output>/<stem>/<page:04d>.png):
binary models write 0/255 (viewable), multi-class models write class ids 0..K-1.
The threshold (binary), test-time augmentation and window overlap default to what the evaluate stage
measured with (threshold.json beside the model), else 0.5, flips and 0.5. --overlay adds
<stem>_overlay.png (the image in gray, the prediction tinted in the class colours), --colour adds
<stem>_colour.png (the mask in the class colours of evaluate's overlays: viewable class-id masks),
--probabilities adds <stem>_probability.png (16-bit, 65535 = 1.0; binary) or <stem>_probabilities.npy
(float16, H x W x K; multi-class).
Images go through segpipe/inference/prediction.py, the path the evaluate stage measures. --model may be
the manifest models/ensemble.json (segpipe/inference/ensemble.py): its models each predict the way they were
trained and their probabilities are averaged; its threshold, tta and tile overlap are the defaults then.

Nothing the user owns is replaced: an output folder that is the input folder, lies inside it or holds an
input is refused, and so is a run that would replace a file predict did not write there (its record,
<output>/predict-files.jsonl, lists what it wrote). Every file is written atomically; a rerun skips the
images whose masks are already there for the same input file, model and settings, so a killed run resumes.
Bad arguments, models and inputs are refused with one error (exit 2) before anything is written.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

from segpipe.core import faults
from segpipe.core.cli import describe, run_stage, start_tensorflow
from segpipe.core.outputs import write_bytes, write_text
from segpipe.core.schema import TTA_MODES
from segpipe.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SUPPORTED_EXTENSIONS,
    encode_png,
    read_header,
    read_white_level,
    too_many_pixels,
)
from segpipe.data.palette import colour_mask
from segpipe.evaluation.overlays import class_overlay
from segpipe.inference.ensemble import averaged, read_ensemble
from segpipe.inference.model_file import check_model_file
from segpipe.inference.output_record import (
    RECORD_NAME,
    SUMMARY_NAME,
    OutputRecord,
    check_output_folder,
    settings_digest,
    source_of,
)


def find_inputs(path: Path) -> tuple[list[tuple[Path, int, Path]], dict[Path, tuple | str]]:
    """([(file, page, output-relative stem)] for a file or every supported image under a folder, sorted;
    {file: its read_header, or why it cannot be read}). Each page of a multi-page file (a TIFF stack) is an
    image, written as <stem>/<page:04d>, the ids that convert-to-png gives a stack's pages. Each file's header
    is read once, here."""
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
        root = path
    else:
        raise ValueError(f"--input '{path}' does not exist; give an image file or a folder of images.")
    if not files:
        raise ValueError(f"--input '{path}' holds no images (searched recursively); expected files ending in "
                         f"{', '.join(SUPPORTED_EXTENSIONS)}.")
    inputs, headers = [], {}
    for file in files:
        try:
            headers[file] = read_header(file)
        except ValueError as err:
            headers[file] = str(err)
        pages = headers[file][3] if isinstance(headers[file], tuple) else [0]
        stem = file.relative_to(root).with_suffix("")
        inputs += [(file, 0, stem)] if len(pages) == 1 else [(file, page, stem / f"{index:04d}")
                                                             for index, page in enumerate(pages)]
    return inputs, headers


def check_headers(headers: dict[Path, tuple | str], *, max_pixels: int, eight_bit_model: bool) -> None:
    """One ValueError listing every input that cannot be predicted, from its header (find_inputs), before any
    prediction: not an image, more than `max_pixels`, or more than 8 bits for a model trained on 8-bit
    images (`eight_bit_model`: its intensities would have no known scale)."""
    problems = []
    for file, header in headers.items():
        if isinstance(header, str):
            problems.append(f"'{file}': {header}; remove or replace the file")
            continue
        width, height, high_bit_depth, _ = header
        if width * height > max_pixels:
            problems.append(f"'{file}': " + too_many_pixels(width, height, max_pixels=max_pixels,
                                                             max_pixels_name="--max-image-pixels"))
        elif high_bit_depth and eight_bit_model:
            problems.append(f"'{file}': more than 8 bits per channel, but the model was trained on 8-bit images "
                            "(inference.json: white_level null), so its intensities have no known scale; convert "
                            "it to 8 bits the way the training images were made, or train on images like it")
    if problems:
        raise ValueError(f"{len(problems)} of the {len(headers)} input file(s) cannot be predicted; "
                         "nothing was written:\n" + "\n".join(f"  - {line}" for line in problems))


def evaluated_settings(model_path: Path) -> tuple[dict, str]:
    """{threshold, tta, tile_overlap} as evaluate measured them (threshold.json beside the model), else defaults."""
    file = Path(model_path).with_name("threshold.json")
    defaults = {"threshold": 0.5, "tta": "flips", "tile_overlap": 0.5}
    if file.is_file():
        saved = json.loads(file.read_text())
        return {key: saved.get(key, value) for key, value in defaults.items()}, f"from {file}"
    return defaults, "default (no threshold.json beside the model; run the evaluate stage)"


def output_names(stem: Path, *, num_classes: int, overlay: bool, colour: bool, probabilities: bool) -> dict:
    """{kind: path relative to the output folder} of what predict writes for the image `stem`."""
    names = {"mask": stem.with_suffix(".png")}
    if overlay:
        names["overlay"] = stem.with_name(f"{stem.name}_overlay.png")
    if colour:
        names["colour"] = stem.with_name(f"{stem.name}_colour.png")
    if probabilities:
        names["probabilities"] = stem.with_name(f"{stem.name}_probability.png" if num_classes == 1
                                                else f"{stem.name}_probabilities.npy")
    return {kind: name.as_posix() for kind, name in names.items()}


def write_outputs(folder: Path, names: dict, image: np.ndarray, ids: np.ndarray, probability: np.ndarray) -> None:
    """Each of `names` (output_names) into `folder`, atomically: the mask (binary: 0/255, so it is viewable;
    multi-class: class ids) and the extras asked for."""
    num_classes = probability.shape[-1]
    contents = {"mask": lambda: encode_png(ids * 255 if num_classes == 1 else ids),
                "overlay": lambda: encode_png(class_overlay(image[..., 0] if image.shape[-1] == 1 else image, ids,
                                                            num_classes=num_classes)),
                "colour": lambda: encode_png(colour_mask(ids, num_classes=num_classes)),
                "probabilities": lambda: _probability_bytes(probability)}
    for kind, name in names.items():
        write_bytes(folder / name, contents[kind](), clean=False)  # the record removed leftovers once


def _probability_bytes(probability: np.ndarray) -> bytes:
    """Binary: a 16-bit PNG (65535 = 1.0); multi-class: a float16 (H, W, K) .npy."""
    if probability.shape[-1] == 1:
        return encode_png(np.round(np.clip(probability[..., 0], 0, 1) * 65535).astype(np.uint16))
    buffer = io.BytesIO()
    np.save(buffer, probability.astype(np.float16))
    return buffer.getvalue()


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--model", type=Path, required=True,
                        help="a trained model (models/model.keras), or models/ensemble.json (averages its models)")
    parser.add_argument("--input", type=Path, required=True, help="an image file or a folder (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the masks (created)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="binary models: foreground where probability >= this; default: the evaluated best")
    parser.add_argument("--tta", choices=TTA_MODES, default=None,
                        help="test-time augmentation; default: what evaluate used")
    parser.add_argument("--tile-overlap", type=float, default=None,
                        help="sliding windows (patch-trained models): overlap share; default: what evaluate used")
    parser.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    parser.add_argument("--colour", "--color", action="store_true",
                        help="also write <stem>_colour.png, the mask in class colours")
    parser.add_argument("--probabilities", action="store_true", help="also write the probabilities")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model call (default 8)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"larger images are refused before decoding (default {DEFAULT_MAX_IMAGE_PIXELS:,}, "
                             "as convert.max_image_pixels)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    members, manifest = read_ensemble(args.model) if args.model.suffix == ".json" else ([args.model], None)
    if manifest is None:
        check_model_file(args.model)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.max_image_pixels < 1:
        raise ValueError(f"--max-image-pixels must be >= 1, got {args.max_image_pixels}.")
    if args.tile_overlap is not None and not 0 <= args.tile_overlap < 1:
        raise ValueError(f"--tile-overlap must be in [0, 1), got {args.tile_overlap}.")
    inputs, headers = find_inputs(args.input)
    check_output_folder(args.output, input=args.input, input_files=list(headers))
    records = [json.loads(member.with_name("inference.json").read_text()) for member in members]
    if len({json.dumps(record.get("white_level")) for record in records}) > 1:
        raise ValueError(f"the models of ensemble '{args.model}' were trained on data of different white levels "
                         f"({[record.get('white_level') for record in records]}); retrain them on one dataset.")
    check_headers(headers, max_pixels=args.max_image_pixels,
                  eight_bit_model="white_level" in records[0] and records[0]["white_level"] is None)
    settings, source = evaluated_settings(args.model) if manifest is None else (
        {"threshold": 0.5, "tta": "flips", "tile_overlap": 0.5, **manifest}, f"from {args.model}")
    given = {"threshold": args.threshold, "tta": args.tta, "tile_overlap": args.tile_overlap}
    settings.update({key: value for key, value in given.items() if value is not None})
    threshold = settings.pop("threshold")
    start_tensorflow()  # after the cheap checks: see its docstring

    from segpipe.inference.prediction import check_tta, predict_files, read_input_mode, to_class_ids

    input_modes = [read_input_mode(member.with_name("inference.json")) for member in members]
    white_level = read_white_level(members[0].with_name("inference.json"))
    models = [load_model(member) for member in members]
    for model in models:
        check_tta(settings["tta"], input_size=tuple(model.input_shape[1:3]), param="--tta")
    if len({int(model.output_shape[-1]) for model in models}) > 1:
        raise ValueError(f"the models of ensemble '{args.model}' predict different numbers of classes "
                         f"({[int(model.output_shape[-1]) for model in models]}); retrain them with one num_classes.")
    model, input_mode = models[0], " and ".join(sorted(set(input_modes)))
    num_classes = int(model.output_shape[-1])
    written = OutputRecord(args.output)
    digest = settings_digest(members[0], threshold=threshold, **settings) if manifest is None else settings_digest(
        args.model, members=[settings_digest(member) for member in members], threshold=threshold, **settings)
    plan = [(file, page, stem.as_posix(), source_of(file, page),
             output_names(stem, num_classes=num_classes, overlay=args.overlay, colour=args.colour,
                          probabilities=args.probabilities)) for file, page, stem in inputs]
    todo = [item for item in plan if not written.is_done(item[2], source=item[3], settings=digest,
                                                         files=list(item[4].values()))]
    written.refuse_foreign([name for *_, names in todo for name in names.values()] + [SUMMARY_NAME])
    written.remove_leftovers()
    done_before = f"; {len(plan) - len(todo)} already written by an earlier run, skipped" if len(todo) < len(plan) \
        else ""
    print(f"predict: {len(plan)} image(s){done_before}, "
          + (f"an ensemble of {len(models)} models, " if manifest is not None else "")
          + f"model input {model.input_shape[1:]} ({input_mode}), "
          f"threshold {threshold:g}, tta {settings['tta']}, tile overlap {settings['tile_overlap']:g} (unless "
          f"given: {source})")
    predictions = averaged([predict_files(
        member, [file for file, *_ in todo], pages=[page for _, page, *_ in todo], batch_size=args.batch_size,
        desc="predict" if len(models) == 1 else f"predict (model {index + 1} of {len(models)})", input_mode=mode,
        white_level=white_level, max_pixels=args.max_image_pixels, **settings)
        for index, (member, mode) in enumerate(zip(models, input_modes, strict=True))])
    # strict: zip then runs the generator to its end, so its progress prints the closing line.
    for count, ((_, _, stem, identity, names), (image, probability)) in enumerate(
            zip(todo, predictions, strict=True), 1):
        written.claim(stem, source=identity, settings=digest, files=list(names.values()))
        write_outputs(args.output, names, image, to_class_ids(probability, threshold=threshold), probability)
        faults.reached(f"image-{count}")
    written.close()
    write_text(args.output / SUMMARY_NAME, json.dumps({"model": str(args.model), "threshold": threshold,
                                                        "input": input_mode, **settings,
                                                        "defaults_source": source, "images": len(inputs),
                                                        "predicted": len(todo)}, indent=2) + "\n")
    print(f"predict: masks written to {args.output} (what predict wrote there: {args.output / RECORD_NAME})")


def load_model(path: Path):
    """The Keras model at `path` (checked by check_model_file), or a ValueError saying why Keras could not
    load it (an archive whose parts are whole but do not make a model: another Keras version, a hand edit)."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many kinds here (ValueError, TypeError, OSError from h5py, ...)
        raise ValueError(f"--model '{path}' is a .keras archive that Keras cannot load ({err.__class__.__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); it may come from another Keras "
                         "version: retrain (dvc repro) or load it with the Keras version that wrote it.") from None


def cli() -> None:
    """The `segpipe-predict` command."""
    run_stage("segpipe-predict", main)


if __name__ == "__main__":
    cli()
