"""Splitting rows for validation: one seeded train/valid split (build-csv), or k folds for cross-validation,
both stratified the same way (by group; with a single group by foreground bins, or by each image's rarest
class for multi-class data) or by whole groups (`build_csv.split_by: group`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from segpipe.data.balancing import foreground_bin_edges, foreground_bins, rarest_classes
from segpipe.data.rows import class_pixel_table


def strata_of(frame: pd.DataFrame, *, stratify_bins: int, num_classes: int) -> np.ndarray:
    """Each row's stratum (str): its group when there are several, else its rarest class (multi-class) or its
    foreground-fraction quantile bin (binary)."""
    if frame["group"].nunique() > 1:
        return frame["group"].astype(str).to_numpy()
    if num_classes > 1:
        return rarest_classes(class_pixel_table(frame, num_classes=num_classes)).astype(str)
    edges = foreground_bin_edges(frame["foreground_fraction"], num_bins=stratify_bins)
    return foreground_bins(frame["foreground_fraction"], edges).astype(str)


def _largest_remainder(sizes: np.ndarray, total: int) -> np.ndarray:
    """Integer shares of `total` proportional to `sizes` that add up to `total`, each <= its size."""
    exact = sizes * total / sizes.sum()
    shares = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - shares), kind="stable")[: total - shares.sum()]:
        shares[index] += 1
    return np.minimum(shares, sizes)


def stratified_split(frame: pd.DataFrame, *, valid_fraction: float, stratify_bins: int, seed: int,
                     num_classes: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of `frame` into (train, valid), stratified by group, foreground bins or rarest class.

    Args:
        frame: rows with at least id, group, foreground_fraction.
        valid_fraction: share of rows for validation; at least one row goes each way.
        stratify_bins: foreground-fraction quantile bins used when there is a single group.
        seed: the random seed; the same inputs and seed give the same split.
        num_classes: > 1 stratifies a single group by each row's rarest class (needs class_pixels).
    """
    if len(frame) < 2:
        raise ValueError(f"cannot split {len(frame)} image(s) into train and valid; add images "
                         "(at least 2, realistically dozens).")
    frame = frame.sort_values("id").reset_index(drop=True)
    strata = strata_of(frame, stratify_bins=stratify_bins, num_classes=num_classes)
    names, sizes = np.unique(strata, return_counts=True)
    total_valid = int(min(len(frame) - 1, max(1, round(len(frame) * valid_fraction))))
    shares = _largest_remainder(sizes, total_valid)
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(len(frame), dtype=bool)
    for name, share in zip(names, shares):
        members = np.flatnonzero(strata == name)
        is_valid[rng.permutation(members)[:share]] = True
    return frame[~is_valid], frame[is_valid]


def group_split(frame: pd.DataFrame, *, valid_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded split of `frame` into (train, valid) by whole groups: in a seeded order, each group goes to
    valid when that brings valid's row count closer to valid_fraction of the rows; at least one group
    goes each way (the smallest to valid when every group is larger than twice the target)."""
    frame = frame.sort_values("id").reset_index(drop=True)
    names, sizes = np.unique(frame["group"].astype(str), return_counts=True)
    if len(names) < 2:
        raise ValueError(f"param 'build_csv.split_by' is group, but all {len(frame)} images are in one group "
                         f"({names[0]!r}); put each patient or volume in its own subfolder (images/<group>/...), or "
                         "set build_csv.split_by: image.")
    order = np.random.default_rng(seed).permutation(len(names))
    target, taken, chosen = valid_fraction * len(frame), 0, []
    for index in order[:-1]:  # the last group stays in train
        if abs(taken + sizes[index] - target) < abs(taken - target):
            chosen.append(names[index])
            taken += sizes[index]
    if not chosen:  # every group is more than twice the target: the smallest one
        chosen = [names[np.argmin(sizes)]]
    is_valid = frame["group"].astype(str).isin(chosen).to_numpy()
    return frame[~is_valid], frame[is_valid]


def split(frame: pd.DataFrame, *, split_by: str, valid_fraction: float, stratify_bins: int, seed: int,
          num_classes: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) by `split_by`: image (stratified_split) or group (group_split)."""
    if split_by == "group":
        return group_split(frame, valid_fraction=valid_fraction, seed=seed)
    return stratified_split(frame, valid_fraction=valid_fraction, stratify_bins=stratify_bins, seed=seed,
                            num_classes=num_classes)


def assign_folds(frame: pd.DataFrame, *, folds: int, split_by: str, stratify_bins: int, seed: int,
                 num_classes: int) -> pd.Series:
    """Each row's fold (0..folds-1, a Series on `frame`'s index) for k-fold cross-validation: seeded; `split_by:
    image` stratified as the single split is (strata_of: within each stratum the rows are dealt out in turn, so
    every fold holds each stratum's rows to within one and the folds' sizes differ by at most one); `split_by:
    group` by whole groups, the largest first, each to the fold with the fewest rows so far (ties in a seeded
    order). A ValueError naming the counts when `folds` is under 2, above the rows or groups, or leaves a fold
    without a class that the others have."""
    if folds < 2:
        raise ValueError(f"param 'cv.folds' must be [] (a single split) or at least 2 folds, got {folds}: one "
                         "fold leaves nothing to train on.")
    ordered = frame.sort_values("id")
    rng = np.random.default_rng(seed)
    if split_by == "group":
        names, sizes = np.unique(ordered["group"].astype(str), return_counts=True)
        if folds > len(names):
            fix = (f"use at most {len(names)} folds" if len(names) >= 2 else
                   "put each patient or volume in its own subfolder (images/<group>/...)")
            raise ValueError(f"param 'cv.folds' has {folds} folds, but build_csv.split_by: group has only "
                             f"{len(names)} group(s) to share out (whole groups per fold); {fix}, or set "
                             "build_csv.split_by: image.")
        order = rng.permutation(len(names))
        order = order[np.argsort(-sizes[order], kind="stable")]
        rows_in, of_group = np.zeros(folds, int), {}
        for index in order:
            fold = int(np.argmin(rows_in))  # the first of the emptiest folds
            of_group[names[index]] = fold
            rows_in[fold] += sizes[index]
        assigned = ordered["group"].astype(str).map(of_group)
    else:
        if folds > len(ordered):
            raise ValueError(f"param 'cv.folds' has {folds} folds, more than the {len(ordered)} train and valid rows; "
                             f"use at most {len(ordered)} folds (realistically 5 with dozens of images per fold).")
        strata = strata_of(ordered.reset_index(drop=True), stratify_bins=stratify_bins, num_classes=num_classes)
        dealt = np.concatenate([rng.permutation(np.flatnonzero(strata == name)) for name in np.unique(strata)])
        fold_of = np.empty(len(ordered), int)
        fold_of[dealt] = (np.arange(len(dealt)) + int(rng.integers(folds))) % folds
        assigned = pd.Series(fold_of, index=ordered.index)
    _check_classes(ordered, assigned, folds=folds, num_classes=num_classes)
    return assigned.reindex(frame.index).astype(int)


def _check_classes(frame: pd.DataFrame, fold: pd.Series, *, folds: int, num_classes: int) -> None:
    """A ValueError when a fold's rows lack a class that the rows of another fold have: that fold's model
    would be validated on nothing of it, or trained without it."""
    if num_classes > 1:
        present = class_pixel_table(frame, num_classes=num_classes) > 0  # (rows, classes)
    else:
        present = (frame["foreground_fraction"].to_numpy() > 0)[:, None]
    by_fold = np.array([present[(fold == k).to_numpy()].any(axis=0) for k in range(folds)])
    anywhere = by_fold.any(axis=0)
    for k in range(folds):
        missing = np.flatnonzero(anywhere & ~by_fold[k])
        if len(missing):
            classes = "foreground" if num_classes <= 1 else ", ".join(str(c) for c in missing)
            raise ValueError(f"cross-validation fold {k} of {folds} ({int((fold == k).sum())} rows) has no pixel of "
                             f"class {classes}, which the other folds have: it could not score it. Use fewer "
                             "folds (param 'cv.folds'), or add images that show it.")


def fold_rows(rows: pd.DataFrame, *, fold: int, folds: int, split_by: str, stratify_bins: int, seed: int,
              num_classes: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows, every row's id and fold) of cross-validation fold `fold` of `folds` over
    `rows` (train + valid: a test split never enters a fold), by `assign_folds`; all sorted by id."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not one of the {folds} folds 0..{folds - 1} (param 'cv.folds').")
    rows = rows.sort_values("id").reset_index(drop=True)
    assigned = assign_folds(rows, folds=folds, split_by=split_by, stratify_bins=stratify_bins, seed=seed,
                            num_classes=num_classes)
    held_out = (assigned == fold).to_numpy()
    return rows[~held_out], rows[held_out], pd.DataFrame({"id": rows["id"], "fold": assigned})
