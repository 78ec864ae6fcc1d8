"""Predict masks for new images with a trained model.

    segpipe-predict --model models/model.keras --input <file or folder> --output <folder>
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
Images go through segpipe/inference/prediction.py, the path the evaluate stage measures.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from segpipe.core.cli import run_stage, start_tensorflow
from segpipe.core.outputs import write_text
from segpipe.core.schema import TTA_MODES
from segpipe.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SUPPORTED_EXTENSIONS,
    image_pages,
    read_white_level,
    write_png,
)
from segpipe.data.palette import colour_mask
from segpipe.evaluation.overlays import class_overlay


def find_inputs(path: Path) -> list[tuple[Path, int, Path]]:
    """[(file, page, output-relative stem)] for a file or every supported image under a folder, sorted.
    Each page of a multi-page file (a TIFF stack) is an image, written as <stem>/<page:04d>, the ids that
    convert-to-png gives a stack's pages."""
    path = Path(path)
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
        root = path
    else:
        raise ValueError(f"--input '{path}' does not exist; give an image file or a folder of images.")
    if not files:
        raise ValueError(f"no images under '{path}'; expected files ending in {', '.join(SUPPORTED_EXTENSIONS)}.")
    inputs = []
    for file in files:
        stem, pages = file.relative_to(root).with_suffix(""), image_pages(file)
        inputs += [(file, 0, stem)] if len(pages) == 1 else [(file, page, stem / f"{index:04d}")
                                                             for index, page in enumerate(pages)]
    return inputs


def evaluated_settings(model_path: Path) -> tuple[dict, str]:
    """{threshold, tta, tile_overlap} as evaluate measured them (threshold.json beside the model), else defaults."""
    file = Path(model_path).with_name("threshold.json")
    defaults = {"threshold": 0.5, "tta": "flips", "tile_overlap": 0.5}
    if file.is_file():
        saved = json.loads(file.read_text())
        return {key: saved.get(key, value) for key, value in defaults.items()}, f"from {file}"
    return defaults, "default (no threshold.json beside the model; run the evaluate stage)"


def write_outputs(target: Path, image: np.ndarray, ids: np.ndarray, probability: np.ndarray, *, overlay: bool,
                  colour: bool, probabilities: bool) -> None:
    """<target>.png (binary: 0/255, so it is viewable; multi-class: class ids), and the optional extras."""
    num_classes = probability.shape[-1]
    write_png(target.with_suffix(".png"), ids * 255 if num_classes == 1 else ids)
    if overlay:
        gray_or_color = image[..., 0] if image.shape[-1] == 1 else image
        write_png(target.with_name(f"{target.name}_overlay.png"),
                  class_overlay(gray_or_color, ids, num_classes=num_classes))
    if colour:
        write_png(target.with_name(f"{target.name}_colour.png"), colour_mask(ids, num_classes=num_classes))
    if probabilities:
        if probability.shape[-1] == 1:
            scaled = np.round(np.clip(probability[..., 0], 0, 1) * 65535).astype(np.uint16)
            Image.fromarray(scaled).save(target.with_name(f"{target.name}_probability.png"))
        else:
            np.save(target.with_name(f"{target.name}_probabilities.npy"), probability.astype(np.float16))


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained model (models/model.keras)")
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
    if not args.model.is_file():
        raise ValueError(f"--model '{args.model}' not found; train one first (dvc repro).")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.max_image_pixels < 1:
        raise ValueError(f"--max-image-pixels must be >= 1, got {args.max_image_pixels}.")
    if args.tile_overlap is not None and not 0 <= args.tile_overlap < 1:
        raise ValueError(f"--tile-overlap must be in [0, 1), got {args.tile_overlap}.")
    inputs = find_inputs(args.input)
    settings, source = evaluated_settings(args.model)
    given = {"threshold": args.threshold, "tta": args.tta, "tile_overlap": args.tile_overlap}
    settings.update({key: value for key, value in given.items() if value is not None})
    threshold = settings.pop("threshold")
    start_tensorflow()  # after the cheap checks: see its docstring
    import keras

    from segpipe.inference.prediction import predict_files, read_input_mode, to_class_ids

    input_mode = read_input_mode(args.model.with_name("inference.json"))
    white_level = read_white_level(args.model.with_name("inference.json"))
    model = keras.models.load_model(args.model, compile=False)
    print(f"predict: {len(inputs)} image(s), model input {model.input_shape[1:]} ({input_mode}), threshold "
          f"{threshold:g}, tta {settings['tta']}, tile overlap {settings['tile_overlap']:g} (unless given: {source})")
    predictions = predict_files(model, [path for path, _, _ in inputs], pages=[page for _, page, _ in inputs],
                                batch_size=args.batch_size, desc="predict", input_mode=input_mode,
                                white_level=white_level, max_pixels=args.max_image_pixels, **settings)
    # strict: zip then runs the generator to its end, so its progress prints the closing line.
    for (_, _, stem), (image, probability) in zip(inputs, predictions, strict=True):
        (args.output / stem).parent.mkdir(parents=True, exist_ok=True)
        write_outputs(args.output / stem, image, to_class_ids(probability, threshold=threshold), probability,
                      overlay=args.overlay, colour=args.colour, probabilities=args.probabilities)
    write_text(args.output / "predict.json", json.dumps({"model": str(args.model), "threshold": threshold,
                                                          "input": input_mode, **settings,
                                                          "defaults_source": source, "images": len(inputs)},
                                                         indent=2) + "\n")
    print(f"predict: masks written to {args.output}")


def cli() -> None:
    """The `segpipe-predict` command."""
    run_stage("predict", main)


if __name__ == "__main__":
    cli()
