"""split-balanced via main([...]): subsets by group or by foreground bins, and the summary contract."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_params
from segpipe.data.balancing import foreground_bin_edges, foreground_bins
from stages import split_balanced


def write_train(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    frame = pd.DataFrame([{"id": i, "image_path": f"p/{i}.png", "mask_path": f"m/{i}.png", "group": g,
                           "height": 8, "width": 8, "foreground_fraction": fg,
                           "class_pixels": f"{round(64 * (1 - fg))} {round(64 * fg)}"} for i, g, fg in rows])
    frame.to_csv(path, index=False)
    return path


def run(tmp_path: Path, train_csv: Path, **section):
    out, summary = tmp_path / "subsets", tmp_path / "subsets.json"
    params = write_params(tmp_path, split_balanced=section)
    split_balanced.main(["--train-csv", str(train_csv), "--output-dir", str(out), "--summary", str(summary),
                         "--params", str(params)])
    return out, json.loads(summary.read_text())


def test_subsets_by_group(tmp_path):
    rows = [(f"a{i}", "left hand", 0.1) for i in range(7)] + [(f"b{i}", "right", 0.2) for i in range(2)]
    out, summary = run(tmp_path, write_train(tmp_path / "train.csv", rows), key="auto")
    assert summary["key"] == "group" and summary["total_rows"] == 9 and summary["bin_edges"] is None
    assert [(s["name"], s["file"], s["rows"]) for s in summary["subsets"]] == [
        ("left hand", "00_left_hand.csv", 7), ("right", "01_right.csv", 2)]
    left = pd.read_csv(out / "00_left_hand.csv")
    assert list(left["id"]) == [f"a{i}" for i in range(7)]
    assert list(left.columns) == list(pd.read_csv(tmp_path / "train.csv").columns)


def test_subsets_by_foreground_bins_when_single_group(tmp_path):
    rows = [(f"x{i:02d}", "all", fg) for i, fg in enumerate([0.0] * 4 + [0.01, 0.02, 0.03, 0.04] + [0.5, 0.6, 0.7,
                                                                                                    0.8])]
    out, summary = run(tmp_path, write_train(tmp_path / "train.csv", rows), key="auto", num_bins=3)
    assert summary["key"] == "foreground"
    assert [s["rows"] for s in summary["subsets"]] == [4, 4, 4]
    assert [s["foreground_max"] for s in summary["subsets"]] == [0.0, 0.04, 0.8]
    # the edges in the summary put new (augmented) rows into the same bins
    assert list(foreground_bins(pd.Series([0.0, 0.035, 0.9]), summary["bin_edges"])) == [0, 1, 2]


def test_bin_edges_collapse_on_ties():
    assert foreground_bin_edges(pd.Series([0.2] * 10), num_bins=4) == []


def test_empty_train_csv_is_an_error(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,image_path,mask_path,group,height,width,foreground_fraction,class_pixels\n")
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    for path in (header_only, blank):
        with pytest.raises(ValueError, match=f"'{path}' has no rows"):
            run(tmp_path, path, key="auto")


@pytest.mark.parametrize("key", ["auto", "group"])
def test_thousands_of_groups_fall_back_to_foreground_bins(tmp_path, key, capsys):
    from segpipe.data.balancing import MAX_GROUP_SUBSETS

    rows = [(f"p{i:04d}", f"patient{i:04d}", (i % 97) / 97) for i in range(5000)]
    out, summary = run(tmp_path, write_train(tmp_path / "train.csv", rows), key=key, num_bins=4)
    assert summary["key"] == "foreground" and len(summary["subsets"]) == 4 < MAX_GROUP_SUBSETS
    assert sum(s["rows"] for s in summary["subsets"]) == 5000 and len(list(out.glob("*.csv"))) == 4
    assert "5000 groups are more than 64 balancing streams; balancing by 4 foreground-fraction bins" in \
        capsys.readouterr().out
