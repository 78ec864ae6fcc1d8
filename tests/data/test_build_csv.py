"""build-csv via main([...]): given splits kept, seeded stratified splits, sorted, byte-identical."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import write_params
from segpipe.data import splitting
from stages import build_csv

COLUMNS = ["id", "image_path", "mask_path", "group", "height", "width", "foreground_fraction", "class_pixels"]


def write_manifest(png_dir: Path, rows: list[tuple[str, str, str, float]]) -> None:
    """rows: (id, split, group, foreground_fraction)."""
    png_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{
        "id": i, "split": split, "group": group, "image_path": f"images/{i}.png", "mask_path": f"masks/{i}.png",
        "height": 16, "width": 20, "foreground_fraction": fg,
        "class_pixels": f"{round(320 * (1 - fg))} {round(320 * fg)}", "source_image": f"images/{i}.png",
        "source_mask": f"masks/{i}.png"} for i, split, group, fg in rows])
    frame.to_csv(png_dir / "manifest.csv", index=False)


def run(tmp_path: Path, png_dir: Path, seed: int = 42, **section):
    out = tmp_path / "csv"
    params = write_params(tmp_path, seed=seed, build_csv=section)
    build_csv.main(["--png-dir", str(png_dir), "--output-dir", str(out), "--params", str(params)])

    def read(name):
        return pd.read_csv(out / f"{name}.csv", dtype={"id": str, "group": str}, keep_default_na=False)

    return read("train"), read("valid"), read("test"), out


def test_given_split_is_kept(tmp_path):
    png = tmp_path / "png"
    write_manifest(png, [("train/a", "train", "all", 0.1), ("train/b", "train", "all", 0.2),
                         ("valid/a", "valid", "all", 0.3), ("test/z", "test", "all", 0.0)])
    train, valid, test, _ = run(tmp_path, png)
    assert list(train["id"]) == ["train/a", "train/b"]
    assert list(valid["id"]) == ["valid/a"]
    assert list(test["id"]) == ["test/z"]
    assert list(train.columns) == COLUMNS
    assert train["image_path"][0] == f"{png.as_posix()}/images/train/a.png"


def test_relative_png_dir_gives_repo_relative_posix_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "data/png", [(f"g/x{i}", "", "g", i / 10) for i in range(5)])
    train, valid, _, _ = run(tmp_path, Path("data/png"))
    assert set(pd.concat([train, valid])["image_path"]) == {f"data/png/images/g/x{i}.png" for i in range(5)}


def test_stratified_by_group_seeded_sorted_and_disjoint(tmp_path):
    png = tmp_path / "png"
    rows = [(f"big/b{i:02d}", "", "big", 0.1) for i in range(40)] + [(f"small/s{i}", "", "small",
                                                                      0.1) for i in range(10)]
    write_manifest(png, rows)
    train, valid, test, out = run(tmp_path, png, valid_fraction=0.2)
    assert len(valid) == 10 and len(train) == 40 and test.empty
    assert valid["group"].value_counts().to_dict() == {"big": 8, "small": 2}  # proportional to group size
    assert not set(train["id"]) & set(valid["id"])
    assert list(train["id"]) == sorted(train["id"]) and list(valid["id"]) == sorted(valid["id"])
    first = {name: (out / f"{name}.csv").read_bytes() for name in ("train", "valid", "test")}
    run(tmp_path, png, valid_fraction=0.2)
    assert first == {name: (out / f"{name}.csv").read_bytes() for name in ("train", "valid", "test")}
    _, valid_other_seed, _, _ = run(tmp_path, png, seed=7, valid_fraction=0.2)
    assert set(valid_other_seed["id"]) != set(valid["id"])


def test_split_by_group_keeps_every_group_on_one_side(tmp_path):
    """Patients (or volumes) of different sizes: whole groups go to valid, about valid_fraction of the rows."""
    png = tmp_path / "png"
    sizes = {f"patient{p}": 5 + 3 * p for p in range(8)}  # 5..26 slices, 124 in all
    write_manifest(png, [(f"{group}/s{i:02d}", "", group, 0.1) for group, size in sizes.items() for i in range(size)])
    train, valid, _, out = run(tmp_path, png, valid_fraction=0.2, split_by="group")
    assert not set(train["group"]) & set(valid["group"]) and set(train["group"]) | set(valid["group"]) == set(sizes)
    assert abs(len(valid) - 0.2 * 124) <= max(sizes.values()) / 2  # as close as whole groups allow
    assert len(train) + len(valid) == 124
    first = (out / "valid.csv").read_bytes()
    run(tmp_path, png, valid_fraction=0.2, split_by="group")
    assert (out / "valid.csv").read_bytes() == first  # seeded
    picks = {frozenset(run(tmp_path, png, seed=seed, valid_fraction=0.2, split_by="group")[1]["group"])
             for seed in range(5)}
    assert len(picks) > 1  # another seed, other groups

    _, by_image, _, _ = run(tmp_path, png, valid_fraction=0.2)
    assert set(by_image["group"]) == set(sizes)  # the default splits inside every group

    write_manifest(png, [(f"big/s{i:02d}", "", "big", 0.1) for i in range(90)] + [(f"small/s{i}", "", "small", 0.1)
                                                                                for i in range(10)])
    for seed in range(4):  # whichever comes first, the 90-slice group is never the validation set
        assert set(run(tmp_path, png, seed=seed, valid_fraction=0.2, split_by="group")[1]["group"]) == {"small"}

    write_manifest(png, [(f"s{i}", "", "all", 0.1) for i in range(10)])
    with pytest.raises(ValueError,
                       match=r"'build_csv.split_by' is group, but all 10 images are in one group \('all'\)"):
        run(tmp_path, png, split_by="group")


def test_single_group_stratifies_by_foreground_bins(tmp_path):
    png = tmp_path / "png"
    # 20 tiny-object images and 20 large-object ones: each half must get its share of valid rows.
    rows = [(f"t{i:02d}", "", "all", 0.001 + i * 1e-4) for i in range(20)] + \
           [(f"l{i:02d}", "", "all", 0.5 + i * 1e-2) for i in range(20)]
    write_manifest(png, rows)
    _, valid, _, _ = run(tmp_path, png, valid_fraction=0.25, stratify_bins=2)
    assert sum(v.startswith("t") for v in valid["id"]) == 5
    assert sum(v.startswith("l") for v in valid["id"]) == 5


def test_given_train_without_valid_is_split(tmp_path):
    png = tmp_path / "png"
    write_manifest(png, [(f"train/x{i}", "train", "all", i / 10) for i in range(10)] + [("test/t", "test", "all", 0.2)])
    train, valid, test, _ = run(tmp_path, png, valid_fraction=0.3)
    assert (len(train), len(valid), len(test)) == (7, 3, 1)


def test_missing_manifest_and_too_few_images(tmp_path):
    with pytest.raises(ValueError, match="run the convert-to-png stage first"):
        run(tmp_path, tmp_path / "nowhere")
    png = tmp_path / "png"
    write_manifest(png, [("only", "", "all", 0.1)])
    with pytest.raises(ValueError, match="cannot split 1 image"):
        run(tmp_path, png)


def test_single_group_multiclass_split_is_stratified_by_rarest_class():
    # 20 street scenes hold sky and road; 5 of them also hold a bicyclist (class 2), 10 a car (class 3).
    rows = []
    for index in range(20):
        counts = [500, 400, 3 if index % 4 == 0 else 0, 50 if index % 2 == 1 else 0]
        rows.append({"id": f"f{index:02d}", "group": "all", "foreground_fraction": 0.5,
                     "class_pixels": " ".join(map(str, counts))})
    frame = pd.DataFrame(rows)
    for seed in range(5):
        train, valid = splitting.stratified_split(frame, valid_fraction=0.2, stratify_bins=4, seed=seed, num_classes=4)
        with_bicyclist = {f"f{i:02d}" for i in range(0, 20, 4)}
        assert len(valid) == 4 and len(set(valid["id"]) & with_bicyclist) == 1  # 20% of the 5, every seed
        assert len(set(valid["id"]) & {f"f{i:02d}" for i in range(1, 20, 2)}) == 2  # car-rarest: 20% of 10
