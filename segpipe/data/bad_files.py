"""Naming the PNG files behind a TensorFlow decode error: TF says "Invalid PNG data" without the path."""
from __future__ import annotations

from contextlib import contextmanager

import pandas as pd
import tensorflow as tf
from PIL import Image


def find_undecodable(rows: pd.DataFrame) -> list[str]:
    """Paths among the rows that PIL cannot fully decode (used to name the file behind a TF error)."""
    bad = []
    for path in list(rows["image_path"]) + list(rows["mask_path"]):
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, ValueError):
            bad.append(path)
    return bad


@contextmanager
def naming_bad_files(rows: pd.DataFrame):
    """Turns a TF decode error while iterating over `rows` into a ValueError that names the files."""
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        bad = find_undecodable(rows)
        if not bad:
            raise
        raise ValueError(f"cannot decode {len(bad)} PNG file(s): {', '.join(bad[:10])} "
                         f"(TensorFlow said: {err.message.splitlines()[0]}). Rerun the data stages "
                         "(dvc repro) or remove these rows.") from None
