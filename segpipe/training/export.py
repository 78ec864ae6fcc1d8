"""What train hands over: the best epoch's model as a .keras file (the plain variant when it trained with
recomputed blocks) and as a TF SavedModel for TF Serving.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import keras

from segpipe.core.outputs import replace_dir, write_bytes
from segpipe.training.model import build_unet


def save_best_model(best: Path, to: Path, *, remat: bool, input_shape: tuple[int, int, int],
                    architecture: dict) -> keras.Model:
    """Writes the best epoch's model `best` (resume's best.keras) to `to` and returns it loaded. A model trained
    with `remat` is written as the plain variant (same layers, names and weights): recomputation only matters
    while training, and loading it then needs no segpipe class."""
    if not remat:
        write_bytes(to, best.read_bytes())
        return keras.models.load_model(to, compile=False)
    model = build_unet(input_shape=input_shape, remat=False, **architecture)
    model.set_weights(keras.models.load_model(best, compile=False).get_weights())
    with tempfile.TemporaryDirectory() as folder:
        model.save(Path(folder) / "model.keras")
        write_bytes(to, (Path(folder) / "model.keras").read_bytes())
    return model


def export_saved_model(model: keras.Model, folder: Path, *, input_mode: str, tile_overlap: float = 0.5) -> None:
    """`model` as a TF SavedModel for TF Serving, replacing `folder` atomically. Signatures:
    - `serve`: one uint8 image (H, W, C) of any size -> float32 probabilities (H, W, K) at that size, by
      segpipe/inference/prediction.py's own function (resize, or blended sliding windows for `patches` models) with
      flips as test-time augmentation: what evaluate measures with its default `evaluate.tta: flips`;
    - `serve_no_tta` and (square inputs) `serve_tta_flips_rotations`: the same for the other `evaluate.tta`;
    - `serve_model_input`: float32 batches (B, h, w, C) in [0, 1] at the model's input size -> probabilities.
    """
    import tensorflow as tf

    from segpipe.inference.prediction import prediction_function

    archive = keras.export.ExportArchive()
    archive.track(model)
    square = model.input_shape[1] == model.input_shape[2]
    names = {"flips": "serve", "none": "serve_no_tta", "flips_rotations": "serve_tta_flips_rotations"}
    for tta, name in names.items():
        if tta != "flips_rotations" or square:
            archive.add_endpoint(name, prediction_function(model, input_mode=input_mode, tile_overlap=tile_overlap,
                                                           tta=tta, batch_size=8))
    archive.add_endpoint("serve_model_input", lambda images: model(images, training=False),
                         input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    with replace_dir(folder) as tmp:
        archive.write_out(str(tmp), verbose=False)
