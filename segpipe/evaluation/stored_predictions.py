"""Out-of-fold predictions on disk: one file per image, probabilities quantised to uint8 (q = round(255 p)).

Binary models: an 8-bit gray PNG of the foreground probability (viewable: white = 1); multi-class models: a
compressed .npz of the (H, W, K) uint8 probabilities. Both are lossless for the uint8 values, so a read gives
q / 255: within 1/510 of the model's probability, finer than the threshold sweep's 0.05 steps. Size: at most
H x W x K bytes plus a header, and far less where the model is sure (zlib compresses long runs of 0 and 255).
Each file is written atomically, named by a digest of the image's id (ids may hold characters a file name
cannot); predictions.csv lists id, file and bytes, in the order of the rows predicted.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from segpipe.core.outputs import write_bytes, write_csv
from segpipe.data.image_io import encode_png, read_png

INDEX = "predictions.csv"


def quantise(probabilities: np.ndarray) -> np.ndarray:
    """float probabilities (H, W, K) -> uint8 (H, W, K), 255 = 1.0."""
    return np.round(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode(probabilities: np.ndarray) -> tuple[bytes, str]:
    """(file bytes, suffix) of the quantised probabilities (H, W, K): see the module docstring."""
    levels = quantise(probabilities)
    if levels.shape[-1] == 1:
        return encode_png(levels[..., 0]), ".png"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=levels)
    return buffer.getvalue(), ".npz"


def read_prediction(path: Path) -> np.ndarray:
    """The stored probabilities of one image as float32 (H, W, K) in [0, 1]."""
    path = Path(path)
    if path.suffix == ".png":
        levels = read_png(path)[..., None]
    else:
        with np.load(path) as stored:
            levels = stored["probabilities"]
    return levels.astype(np.float32) / 255.0


def file_name(row_id: str, suffix: str) -> str:
    return hashlib.sha1(str(row_id).encode()).hexdigest()[:16] + suffix


def write_predictions(folder: Path, ids, predictions) -> pd.DataFrame:
    """Writes each probabilities array of the iterable `predictions` (in the order of `ids`) into `folder`,
    then its index; returns the index (id, file, bytes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for row_id, probabilities in zip(ids, predictions, strict=True):
        data, suffix = encode(probabilities)
        name = file_name(row_id, suffix)
        write_bytes(folder / name, data, clean=False)
        index.append({"id": row_id, "file": name, "bytes": len(data)})
    frame = pd.DataFrame(index, columns=["id", "file", "bytes"])
    write_csv(folder / INDEX, frame)
    return frame


def read_index(folder: Path, *, ids: list[str]) -> list[Path]:
    """The stored file of each of `ids` in `folder`, checked: a ValueError naming the folder when its index
    is missing or does not list exactly those ids (predictions of other rows: rerun the stage)."""
    folder = Path(folder)
    if not (folder / INDEX).is_file():
        raise ValueError(f"'{folder / INDEX}' not found: the out-of-fold predictions of this fold were not "
                         "written; run the pipeline (dvc repro).")
    index = pd.read_csv(folder / INDEX, dtype={"id": str, "file": str})
    if list(index["id"]) != [str(i) for i in ids]:
        raise ValueError(f"'{folder / INDEX}' lists {len(index)} image(s) that are not this fold's {len(ids)} "
                         "held-out rows; its predictions are from another fold assignment: rerun dvc repro.")
    return [folder / name for name in index["file"]]
