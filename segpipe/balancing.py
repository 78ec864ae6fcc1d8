"""Stratification and balancing keys shared by build-csv, split-balanced and later stages.

A row's balancing subset is its `group` when the data has several groups, otherwise the quantile bin
of its `foreground_fraction` (so that images with tiny objects are not drowned by those with large ones).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd


def foreground_bin_edges(foreground_fraction: pd.Series, *, num_bins: int) -> list[float]:
    """Interior quantile edges of `foreground_fraction` for `num_bins` bins (fewer when values tie).

    Returns:
        Sorted, unique edges; bin i holds values v with edges[i-1] <= v < edges[i].
    """
    quantiles = np.quantile(foreground_fraction.to_numpy(dtype=float), np.linspace(0, 1, num_bins + 1)[1:-1])
    edges = sorted(set(round(float(q), 6) for q in quantiles))
    return [e for e in edges if e > float(foreground_fraction.min())]


def foreground_bins(foreground_fraction: pd.Series, edges: list[float]) -> np.ndarray:
    """The bin index (int, 0..len(edges)) of each value, with the edges of `foreground_bin_edges`."""
    return np.searchsorted(np.asarray(edges, dtype=float), foreground_fraction.to_numpy(dtype=float), side="right")


def safe_name(text: str) -> str:
    """A file-name-safe version of a group name ("left/hand 1" -> "left_hand_1")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unnamed"
