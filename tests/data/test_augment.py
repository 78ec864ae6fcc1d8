"""augment via main([...]): alignment, class ids, determinism, copies/multipliers, bad params."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import write_params
from stages import augment

GEOMETRIC = [
    {"__class_fullname__": "HorizontalFlip", "p": 0.5},
    {"__class_fullname__": "RandomRotate90", "p": 1.0},
    {"__class_fullname__": "Affine", "p": 1.0, "scale": [0.8, 1.2], "rotate": [-30, 30]},
    {"__class_fullname__": "GridDistortion", "p": 1.0},
    {"__class_fullname__": "ElasticTransform", "p": 1.0, "alpha": 30, "sigma": 5},
]


def make_train_csv(folder: Path, count: int = 3) -> Path:
    """Rows whose mask is derived from the image's own pixels: mask = 1 where the red channel is high.

    Every geometric transform must then keep mask == (red > 127) away from interpolated edges.
    """
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        blocks = rng.integers(0, 2, (6, 6)).astype(bool)
        red = np.kron(blocks, np.ones((8, 8), bool))  # 48x48, 8-px blocks: edges are few and sharp
        image = np.dstack([red * 255, rng.integers(0, 255, (48, 48)), np.full((48, 48), 60)]).astype(np.uint8)
        for kind, array in (("images", image), ("masks", red.astype(np.uint8))):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / kind / f"x{index}.png")
        rows.append({"id": f"x{index}", "image_path": str(folder / "images" / f"x{index}.png"),
                     "mask_path": str(folder / "masks" / f"x{index}.png"), "group": "a" if index else "b",
                     "height": 48, "width": 48, "foreground_fraction": red.mean(),
                     "class_pixels": f"{np.sum(~red)} {np.sum(red)}"})
    path = folder / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run(tmp_path: Path, train_csv: Path, out: Path | None = None, **section) -> tuple[Path, pd.DataFrame]:
    out = out or tmp_path / "augmented"
    section = {"copies": 2, "transforms": GEOMETRIC, "num_workers": 1, "group_multipliers": {}} | section
    params = write_params(tmp_path / "p", augment=section)
    augment.main(["--train-csv", str(train_csv), "--output-dir", str(out), "--params", str(params)])
    return out, pd.read_csv(out / "augmented.csv", dtype={"id": str, "group": str}, keep_default_na=False)


def test_masks_stay_aligned_and_keep_class_ids(tmp_path):
    out, rows = run(tmp_path, make_train_csv(tmp_path / "train"))
    assert len(rows) == 6
    assert list(rows.columns) == list(pd.read_csv(tmp_path / "train/train.csv").columns)
    for row in rows.itertuples():
        image = np.asarray(Image.open(row.image_path))
        mask = np.asarray(Image.open(row.mask_path))
        assert set(np.unique(mask)) <= {0, 1, 255}  # 255: padding is void, never class 0
        labelled = mask != 255
        agreement = np.mean(mask[labelled] == (image[..., 0] > 127)[labelled])
        assert agreement > 0.9, (row.id, agreement)  # edge pixels may differ; a misaligned mask gives ~0.5
        assert row.foreground_fraction == pytest.approx(np.mean(mask[labelled] == 1), abs=1e-6)
        assert row.class_pixels == f"{np.sum(mask == 0)} {np.sum(mask == 1)}"
    padded = [np.asarray(Image.open(path)) for path in rows["mask_path"]]
    assert any((m == 255).any() for m in padded), "the test's transforms pad; padding must be void (255)"


def test_deterministic_and_independent_of_workers(tmp_path):
    csv = make_train_csv(tmp_path / "train", count=8)

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(
            p.read_bytes().replace(str(folder).encode(), b"OUT")).hexdigest() for p in sorted(folder.rglob("*.*"))}

    first, _ = run(tmp_path, csv, out=tmp_path / "a", num_workers=1)
    second, _ = run(tmp_path, csv, out=tmp_path / "b", num_workers=2)
    assert digest(first) == digest(second)
    third, _ = run(tmp_path, csv, out=tmp_path / "c", num_workers=1, transforms=GEOMETRIC[1:])
    assert digest(first) != digest(third)


def test_zero_copies_and_group_multipliers(tmp_path):
    csv = make_train_csv(tmp_path / "train")
    _, rows = run(tmp_path, csv, copies=0)
    assert rows.empty and list(rows.columns)[:3] == ["id", "image_path", "mask_path"]
    _, rows = run(tmp_path, csv, copies=1, group_multipliers={"b": 3})
    assert rows["group"].value_counts().to_dict() == {"b": 3, "a": 2}
    assert sorted(rows["id"])[:3] == ["x0__aug00", "x0__aug01", "x0__aug02"]


@pytest.mark.parametrize("transforms, message", [
    ([{"__class_fullname__": "HorizFlip", "p": 0.5}],
     r"augment.transforms\[0\]': unknown transform 'HorizFlip' \(did you mean 'HorizontalFlip'\?\); "
     r"valid choices: .*HorizontalFlip"),
    ([{"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "GaussianBlur", "blur_lmit": 3}],
     r"augment.transforms\[1\]': invalid arguments for transform 'GaussianBlur'.*blur_lmit"),
    ([{"name": "HorizontalFlip"}], r"must be a mapping with '__class_fullname__'"),
])
def test_bad_transforms_are_named(tmp_path, transforms, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, make_train_csv(tmp_path / "train"), transforms=transforms)


def test_unknown_group_multiplier(tmp_path):
    with pytest.raises(ValueError, match="names group 'zz'"):
        run(tmp_path, make_train_csv(tmp_path / "train"), group_multipliers={"zz": 2})


def test_default_params_transforms_build():
    import yaml

    from conftest import REPO
    from segpipe.data.augmentations import build_compose
    transforms = yaml.safe_load((REPO / "params.yaml").read_text())["augment"]["transforms"]
    assert len(build_compose(transforms).transforms) == len(transforms)
