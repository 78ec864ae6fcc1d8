"""Predict masks for new images with a trained model.

    python -m segpipe.predict --model models/model.keras --input <file or folder> --output <folder>
        [--threshold T] [--overlay] [--probabilities] [--batch-size 8]

Accepts every format the convert stage accepts (PNG, JPEG, BMP, TIFF, GIF, WebP; 16-bit, palette,
EXIF-rotated), applies the EXIF orientation, predicts at the model's input size and writes each mask
at the image's ORIGINAL (upright) size as <output>/<relative path stem>.png:
binary models write 0/255 (viewable), multi-class models write class ids 0..K-1.
The threshold (binary) defaults to the best validation threshold from the evaluate stage
(threshold.json beside the model), else 0.5. --overlay adds <stem>_overlay.png (prediction tinted
green), --probabilities adds <stem>_probability.png (16-bit, 65535 = 1.0; binary) or
<stem>_probabilities.npy (float16, H x W x K; multi-class).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

from segpipe.image_io import SUPPORTED_EXTENSIONS, apply_orientation, exif_orientation, image_to_array, open_image
from segpipe.outputs import write_text


def find_inputs(path: Path) -> list[tuple[Path, Path]]:
    """[(file, output-relative stem)] for a file or every supported image under a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [(path, Path(path.stem))]
    if not path.is_dir():
        raise ValueError(f"--input '{path}' does not exist; give an image file or a folder of images.")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not files:
        raise ValueError(f"no images under '{path}'; expected files ending in {', '.join(SUPPORTED_EXTENSIONS)}.")
    return [(p, p.relative_to(path).with_suffix("")) for p in files]


def default_threshold(model_path: Path) -> tuple[float, str]:
    """The evaluated best threshold from threshold.json beside the model, else 0.5."""
    file = Path(model_path).with_name("threshold.json")
    if file.is_file():
        return float(json.loads(file.read_text())["threshold"]), f"from {file}"
    return 0.5, "default (no threshold.json beside the model; run the evaluate stage)"


def load_upright(path: Path, *, channels: int) -> np.ndarray:
    try:
        im = open_image(path)
    except ValueError as err:
        raise ValueError(f"'{path}': {err}; remove or replace the file.") from None
    im = apply_orientation(im, exif_orientation(im))
    array = image_to_array(im, image_mode="L" if channels == 1 else "RGB")
    return array[..., None] if array.ndim == 2 else array


def predict_probabilities(model, images: list[np.ndarray]) -> list[np.ndarray]:
    """Probabilities (H, W, C) at each image's own size; inputs resized as the training pipeline does."""
    import tensorflow as tf

    from segpipe.input_pipeline import resize_image, resize_probabilities, to_unit_range

    size = tuple(model.input_shape[1:3])
    batch = to_unit_range(tf.stack([resize_image(image, size) for image in images]))
    probabilities = model(batch, training=False)
    return [resize_probabilities(p, *image.shape[:2]) for p, image in zip(probabilities, images)]


def write_outputs(output: Path, stem: Path, image: np.ndarray, probability: np.ndarray, *, threshold: float,
                  overlay: bool, probabilities: bool) -> None:
    from segpipe.image_io import write_png
    from segpipe.plots import overlay as tint

    target = Path(output) / stem
    if probability.shape[-1] == 1:
        mask = probability[..., 0] >= threshold
        write_png(target.with_suffix(".png"), mask.astype(np.uint8) * 255)
    else:
        ids = np.argmax(probability, axis=-1)
        write_png(target.with_suffix(".png"), ids.astype(np.uint8))
        mask = ids > 0
    if overlay:
        gray = image[..., 0] if image.shape[-1] == 1 else image
        write_png(target.with_name(f"{target.name}_overlay.png"), tint(gray, mask, mask))
    if probabilities:
        if probability.shape[-1] == 1:
            scaled = np.round(np.clip(probability[..., 0], 0, 1) * 65535).astype(np.uint16)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scaled).save(target.with_name(f"{target.name}_probability.png"))
        else:
            np.save(target.with_name(f"{target.name}_probabilities.npy"), probability.astype(np.float16))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="an image file or a folder (searched recursively)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=None, help="binary models; default: the evaluated best")
    parser.add_argument("--overlay", action="store_true")
    parser.add_argument("--probabilities", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        raise ValueError(f"--model '{args.model}' not found; train one first (dvc repro).")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}.")
    inputs = find_inputs(args.input)
    threshold, source = (args.threshold, "given") if args.threshold is not None else default_threshold(args.model)

    import keras
    from tqdm import tqdm

    model = keras.models.load_model(args.model, compile=False)
    channels = model.input_shape[-1]
    print(f"predict: {len(inputs)} image(s), model input {model.input_shape[1:]}, threshold {threshold:g} ({source})")
    with tqdm(total=len(inputs), desc="predict", disable=None) as bar:
        for start in range(0, len(inputs), args.batch_size):
            chunk = inputs[start:start + args.batch_size]
            images = [load_upright(path, channels=channels) for path, _ in chunk]
            for (path, stem), image, probability in zip(chunk, images, predict_probabilities(model, images)):
                write_outputs(args.output, stem, image, probability, threshold=threshold, overlay=args.overlay,
                              probabilities=args.probabilities)
            bar.update(len(chunk))
    write_text(args.output / "predict.json", json.dumps({"model": str(args.model), "threshold": threshold,
                                                          "threshold_source": source, "images": len(inputs)},
                                                         indent=2) + "\n")
    print(f"predict: masks written to {args.output}")


if __name__ == "__main__":
    from segpipe.cli import run_stage

    run_stage("predict", main)
