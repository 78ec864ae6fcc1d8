"""fold-rows via main([...]): held-out rows of the k folds partition train + valid (never test), each fold's
training rows get augment's copies or, for rows from valid.csv, the same copies made here."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
from test_augment import GEOMETRIC, make_train_csv

from conftest import write_params
from stages import augment, fold_rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 rows in csv/ split 8 train / 4 valid, with augment's copies of the 8 training rows."""
    folder = tmp_path_factory.mktemp("folds")
    rows = pd.read_csv(make_train_csv(folder / "png", count=12), dtype={"id": str, "group": str})
    rows["group"] = "all"
    (folder / "csv").mkdir()
    rows.iloc[:8].to_csv(folder / "csv/train.csv", index=False)
    rows.iloc[8:].to_csv(folder / "csv/valid.csv", index=False)
    rows.iloc[:0].to_csv(folder / "csv/test.csv", index=False)
    params = write_params(folder / "p", augment={"copies": 1, "transforms": GEOMETRIC, "num_workers": 1},
                          cv={"folds": [0, 1, 2]})
    augment.main(["--train-csv", str(folder / "csv/train.csv"), "--output-dir", str(folder / "augmented"),
                  "--params", str(params)])
    for fold in range(3):
        fold_rows.main(["--fold", str(fold), "--csv-dir", str(folder / "csv"), "--augmented-csv",
                        str(folder / "augmented/augmented.csv"), "--output-dir", str(folder / f"cv/fold-{fold}"),
                        "--params", str(params)])
    return folder


def read(path):
    return pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False)


def test_held_out_rows_partition_train_and_valid_and_every_fold_agrees_on_the_assignment(dataset):
    held = [read(dataset / f"cv/fold-{k}/valid.csv") for k in range(3)]
    everyone = sorted(pd.concat([read(dataset / "csv/train.csv"), read(dataset / "csv/valid.csv")])["id"])
    assert sorted(pd.concat(held)["id"]) == everyone  # each row held out exactly once
    assert [len(frame) for frame in held] == [4, 4, 4]
    for k in range(3):
        train = read(dataset / f"cv/fold-{k}/train.csv")
        assert not set(train["id"]) & set(held[k]["id"]) and len(train) + len(held[k]) == 12
        assert read(dataset / f"cv/fold-{k}/folds.csv").equals(read(dataset / "cv/fold-0/folds.csv"))
        subsets = pd.concat([read(p) for p in sorted((dataset / f"cv/fold-{k}/subsets").glob("*.csv"))])
        assert sorted(subsets["id"]) == sorted(train["id"])


def test_each_training_row_has_its_copies_the_same_bytes_as_augment_makes(dataset, tmp_path):
    params = write_params(tmp_path / "p", augment={"copies": 1, "transforms": GEOMETRIC, "num_workers": 1})
    shutil.copy(dataset / "csv/valid.csv", tmp_path / "as_train.csv")  # what augment would make of valid.csv
    augment.main(["--train-csv", str(tmp_path / "as_train.csv"), "--output-dir", str(tmp_path / "aug"),
                  "--params", str(params)])
    reference = {row.id: row for row in read(tmp_path / "aug/augmented.csv").itertuples()}
    checked = 0
    for k in range(3):
        train, copies = read(dataset / f"cv/fold-{k}/train.csv"), read(dataset / f"cv/fold-{k}/augmented.csv")
        assert sorted(copies["id"].str.replace("__aug00", "")) == sorted(train["id"])
        for row in copies.itertuples():
            if row.id in reference:  # made here from a valid.csv row: the bytes augment makes of it
                assert row.image_path.startswith(str(dataset / f"cv/fold-{k}/augmented"))
                with open(row.image_path, "rb") as mine, open(reference[row.id].image_path, "rb") as theirs:
                    assert mine.read() == theirs.read()
                checked += 1
    assert checked == 8  # the 4 valid.csv rows are in the training rows of 2 of the 3 folds


def test_a_fold_outside_cv_folds_is_refused(dataset):
    with pytest.raises(ValueError, match="fold 3 is not one of the 3 folds"):
        fold_rows.main(["--fold", "3", "--csv-dir", str(dataset / "csv"), "--augmented-csv",
                        str(dataset / "augmented/augmented.csv"), "--output-dir", str(dataset / "cv/fold-3"),
                        "--params", str(dataset / "p/params.yaml")])
    assert not (dataset / "cv/fold-3").exists()
