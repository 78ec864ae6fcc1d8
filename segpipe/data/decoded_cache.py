"""The on-disk cache of decoded training rows (`train.cache: disk`, or `auto` when they do not fit in memory).

Each row is stored once as raw uint8 bytes, the image's channels then the mask, (height, width, channels + 1),
at the size training reads it (resized to the network input, or native for patches), in a file named by a hash
of what it was decoded from (the two PNGs' contents, fingerprinted cheaply: see `_png_fingerprint`) and how
(size, channels). So the cache is written once per data version and reused by every later run and experiment
on the same data, also from the copies `dvc exp run --temp/--queue` trains in (train keeps the folder in the
project itself); a row whose PNG changed gets a new file. Reading a row back is one file read and no PNG
decode or resize, and rows are read in parallel like PNGs. Files are written under a temporary name and
renamed, so a killed run leaves no half-written row. Several workers each fill only their own share. The
folder can be deleted at any time between runs (train writes what it needs again); nothing prunes it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

SUFFIX = ".rgbm"  # raw pixels only: the shape comes from the CSV (height, width) or the input size


# PNG fingerprint: the file's size, its first bytes (header, size, colour type) and its last bytes, which
# end the zlib stream with an Adler-32 checksum of every pixel byte: a file whose pixels change changes there.
FINGERPRINT_BYTES = 1 << 16


def _png_fingerprint(path, digest) -> None:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        digest.update(f"{size}\0".encode())
        digest.update(file.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            file.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(file.read())


def row_file(row, *, folder: Path, image_size: tuple[int, int] | None, channels: int) -> Path:
    """The cache file of one row (a CSV row with image_path, mask_path): named by its PNGs' contents, not
    their paths or times, so that a copy of the project (DVC's temporary experiments) finds it."""
    digest = hashlib.sha256()
    for path in (row["image_path"], row["mask_path"]):
        _png_fingerprint(path, digest)
    digest.update(f"{image_size}\0{channels}".encode())
    name = digest.hexdigest()[:32]
    return folder / name[:2] / (name + SUFFIX)


def row_shape(row, *, image_size: tuple[int, int] | None, channels: int) -> tuple[int, int, int]:
    height, width = (int(row["height"]), int(row["width"])) if image_size is None else image_size
    return height, width, channels + 1


def fill(rows: pd.DataFrame, *, folder: Path, image_size: tuple[int, int] | None, channels: int,
         decode) -> list[str]:
    """The cache files of `rows` (in row order), decoding and writing the ones missing.

    `decode(image_path, mask_path)` is the pipeline's decoder (uint8 image and mask at the cached size);
    the missing rows are decoded in parallel by tf.data and written here.
    """
    folder = Path(folder)
    files = [row_file(row, folder=folder, image_size=image_size, channels=channels) for _, row in rows.iterrows()]
    missing = [i for i, path in enumerate(files) if not path.is_file()]
    if missing:
        needed = sum(int(np.prod(row_shape(rows.iloc[i], image_size=image_size, channels=channels)))
                     for i in missing)
        free = free_bytes(folder)
        if needed > free:
            raise ValueError(f"train.cache: disk needs {needed / 2 ** 30:.1f} GiB in '{folder}' for {len(missing)} "
                             f"decoded rows, and {free / 2 ** 30:.1f} GiB are free; free disk space, or set "
                             "train.cache: none (decode the PNGs every step).")
        print(f"train: writing {len(missing):,} decoded rows to the disk cache '{folder}' "
              f"({needed / 2 ** 30:.2f} GiB; {len(files) - len(missing):,} already there)", flush=True)
        subset = rows.iloc[missing]
        dataset = tf.data.Dataset.from_tensor_slices(
            (subset["image_path"].to_numpy(str), subset["mask_path"].to_numpy(str))).map(
            lambda i, m: tf.concat(decode(i, m), axis=-1), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        for index, both in zip(missing, dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()):
            _write_atomically(files[index], both.tobytes())
    return [str(path) for path in files]


def read(path, shape, *, channels: int):
    """(uint8 image, uint8 mask) of a cached row, `shape` = (height, width, channels + 1) as int32."""
    both = tf.reshape(tf.io.decode_raw(tf.io.read_file(path), tf.uint8), shape)
    return both[..., :channels], both[..., channels:]


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds (or will hold) `folder`."""
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
