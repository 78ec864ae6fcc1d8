"""The demo data generator: deterministic, mixed formats, two unequal groups, converts cleanly."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from stages import make_demo_data


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_mixed_and_grouped(tmp_path):
    make_demo_data.main(["--output", str(tmp_path / "a"), "--seed", "3", "--scale", "0.5"])
    make_demo_data.main(["--output", str(tmp_path / "b"), "--seed", "3", "--scale", "0.5"])
    files = digest(tmp_path / "a")
    assert files == digest(tmp_path / "b")
    images = [Path(p) for p in files if p.startswith("images/")]
    masks = [Path(p) for p in files if p.startswith("masks/")]
    assert {p.suffix for p in images} == {".jpg", ".png", ".bmp", ".tif"}
    assert {p.suffix for p in masks} >= {".png", ".bmp", ".jpg"}
    groups = Counter(p.parts[1] for p in images)
    assert len(groups) == 2 and len(set(groups.values())) == 2  # two groups of different size
    sizes = {Image.open(tmp_path / "a" / p).size for p in images}
    assert len(sizes) > 1
    object_share = [np.mean(np.asarray(Image.open(tmp_path / "a" / p).convert("L")) > 127)
                    for p in masks if p.suffix == ".png"]
    assert min(object_share) < 0.02 and max(object_share) > 0.1  # tiny and large objects


def test_never_overwrites(tmp_path):
    (tmp_path / "raw").mkdir()
    import pytest
    with pytest.raises(ValueError, match="already exists"):
        make_demo_data.main(["--output", str(tmp_path / "raw")])
