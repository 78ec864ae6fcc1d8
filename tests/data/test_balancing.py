"""Balancing subsets: which subset a row (original or augmented) belongs to."""
from __future__ import annotations

import pandas as pd
import pytest

from segpipe.data.balancing import assign_subsets


def test_assign_subsets_for_original_and_augmented_rows():
    rows = pd.DataFrame({"group": ["a", "b", "a"], "foreground_fraction": [0.0, 0.5, 0.9]})
    by_group = {"key": "group", "bin_edges": None, "subsets": [{"name": "a"}, {"name": "b"}]}
    assert [len(s) for s in assign_subsets(rows, by_group)] == [2, 1]
    by_bins = {"key": "foreground", "bin_edges": [0.4], "subsets": [{"name": "foreground_bin_0"},
                                                                    {"name": "foreground_bin_1"}]}
    assert [len(s) for s in assign_subsets(rows, by_bins)] == [1, 2]
    with pytest.raises(ValueError, match=r"subset \['c'\]"):
        assign_subsets(pd.DataFrame({"group": ["c"], "foreground_fraction": [0.1]}), by_group)
