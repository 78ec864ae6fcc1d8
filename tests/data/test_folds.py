"""segpipe/data/splitting.py::assign_folds: k folds for cross-validation, stratified or by whole groups."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segpipe.data.splitting import assign_folds


def rows(count: int, *, groups: int = 1, seed: int = 0, empty: tuple[int, ...] = ()) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    fraction = rng.uniform(0.01, 0.6, count)
    fraction[list(empty)] = 0.0
    frame = pd.DataFrame({"id": [f"img{k:03d}" for k in range(count)],
                          "group": [f"g{k % groups}" for k in range(count)] if groups > 1 else "all",
                          "foreground_fraction": fraction})
    frame["class_pixels"] = [f"{int(1000 * (1 - f))} {int(1000 * f)}" for f in fraction]
    return frame


def folds_of(frame, k=5, **given):
    settings = dict(split_by="image", stratify_bins=4, seed=42, num_classes=1) | given
    return assign_folds(frame, folds=k, **settings)


@pytest.mark.parametrize("count, groups", [(23, 1), (40, 3), (7, 1)])
def test_folds_cover_every_row_once_with_sizes_within_one_and_each_stratum_spread(count, groups):
    frame = rows(count, groups=groups)
    fold = folds_of(frame, k=5 if count >= 10 else 3)
    k = fold.max() + 1
    assert fold.index.equals(frame.index) and set(fold) == set(range(k))
    sizes = fold.value_counts()
    assert sizes.max() - sizes.min() <= 1
    if groups > 1:
        for _, members in frame.groupby("group"):
            per_fold = fold[members.index].value_counts().reindex(range(k), fill_value=0)
            assert per_fold.max() - per_fold.min() <= 1  # stratified by group


def test_folds_are_seeded_and_do_not_depend_on_row_order():
    frame = rows(30)
    first = folds_of(frame)
    assert first.equals(folds_of(frame))
    shuffled = frame.sample(frac=1, random_state=1)
    assert folds_of(shuffled).sort_index().equals(first.sort_index())
    assert not folds_of(frame, seed=7).equals(first)


def test_groups_stay_whole_and_the_folds_stay_near_even():
    frame = rows(60, groups=12)
    frame.loc[frame.index < 15, "group"] = "big"  # one large patient
    fold = folds_of(frame, k=4, split_by="group")
    assert (frame.assign(fold=fold).groupby("group")["fold"].nunique() == 1).all()
    sizes = fold.value_counts()
    assert set(fold) == {0, 1, 2, 3} and sizes.max() - sizes.min() <= frame.groupby("group").size().max()


@pytest.mark.parametrize("frame, given, message", [
    (rows(10), dict(k=1), "must be \\[\\] \\(a single split\\) or at least 2 folds, got 1"),
    (rows(4), dict(k=5), "has 5 folds, more than the 4 train and valid rows"),
    (rows(20, groups=3), dict(k=4, split_by="group"), "has only 3 group\\(s\\)"),
    (rows(10, empty=tuple(range(1, 10))), dict(k=3), "fold \\d of 3 \\(\\d+ rows\\) has no pixel of class foreground"),
])
def test_impossible_folds_are_refused_naming_the_counts(frame, given, message):
    k = given.pop("k")
    with pytest.raises(ValueError, match=message):
        folds_of(frame, k=k, **given)


def test_a_fold_without_a_class_of_a_multi_class_set_is_refused():
    frame = rows(9)
    frame["class_pixels"] = ["10 5 0"] * 8 + ["10 5 3"]  # class 2 in one image only
    with pytest.raises(ValueError, match="has no pixel of class 2"):
        folds_of(frame, k=3, num_classes=3)
