"""The Markdown report and the regression gate, in a temporary git + DVC repository with two commits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def sh(args, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)


def commit(repo: Path, message: str, *, valid_iou: float, lr: float) -> None:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/evaluate.json").write_text(json.dumps({"valid_iou": valid_iou, "valid_dice": 0.9}))
    (repo / "params.yaml").write_text(f"train:\n  learning_rate: {lr}\n")
    for args in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message]):
        assert sh(args, repo).returncode == 0


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    assert sh(["git", "init", "-q", "-b", "main"], repo).returncode == 0
    assert sh(["dvc", "init", "-q"], repo).returncode == 0
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/evaluate.json\nparams:\n  - params.yaml\n")
    commit(repo, "base", valid_iou=0.80, lr=0.001)
    return repo


def report(repo: Path, *args: str):
    done = sh([sys.executable, "-m", "segpipe.tracking.report", *args], repo)
    text = (repo / "report/report.md").read_text() if (repo / "report/report.md").exists() else ""
    return done, text


def test_two_commits_show_both_values_the_delta_and_the_param_change(repo):
    plots = repo / "plots/evaluate/png"
    plots.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(plots / "threshold_curve.png")
    commit(repo, "worse", valid_iou=0.75, lr=0.003)
    done, text = report(repo, "--base", "main~1")
    assert done.returncode == 0, done.stderr
    assert "| `valid_iou` | 0.8000 | 0.7500 | -0.0500 🔴 |" in text
    assert "| `learning_rate` | 0.0010 | 0.0030 |" in text or "| `train.learning_rate` | 0.0010 | 0.0030 |" in text
    assert "![threshold_curve](images/threshold_curve.png)" in text
    assert (repo / "report/images/threshold_curve.png").is_file()


def test_same_commit_still_shows_the_values(repo):
    done, text = report(repo, "--base", "main")
    assert done.returncode == 0, done.stderr
    assert "| `valid_iou` | 0.8000 | 0.8000 | 0 |" in text
    assert "No param changes versus `main`." in text


def test_gate_fails_on_a_regression_beyond_tolerance_and_passes_otherwise(repo):
    commit(repo, "worse", valid_iou=0.75, lr=0.001)
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.01")
    assert done.returncode == 3 and "gate FAILED" in done.stdout + text
    assert "❌ gate FAILED: `valid_iou` went from 0.8000 to 0.7500, worse by 0.0500 > tolerance 0.01." in text
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.1")
    assert done.returncode == 0 and "✅ gate passed" in text
    done, _ = report(repo, "--base", "main~1", "--gate", "valid_iuo")
    assert done.returncode == 3  # a misspelt gate metric fails loudly rather than passing


def test_unknown_base_is_a_clear_error(repo):
    done, _ = report(repo, "--base", "no-such-branch")
    assert done.returncode == 2 and "report: error:" in done.stderr and "--base names a git revision" in done.stderr


def write_train_metrics(repo: Path, metrics: dict) -> None:
    (repo / "metrics/train.json").write_text(json.dumps(metrics))
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/evaluate.json\n  - metrics/train.json\n"
                                   "params:\n  - params.yaml\n")


def test_only_metrics_with_a_direction_are_coloured_and_renamed_keys_still_compare(repo):
    # The base still has the old names and run facts in its metrics (the first PR after the rename).
    write_train_metrics(repo, {"best_val_iou": 0.70, "best_val_loss": 0.5, "epochs_run": 10, "images_per_second": 9.5,
                               "best_threshold": 0.5, "devices": "/cpu:0"})
    commit(repo, "old keys", valid_iou=0.80, lr=0.001)
    write_train_metrics(repo, {"best_valid_iou": 0.72, "best_valid_loss": 0.4, "best_threshold": 0.6})
    commit(repo, "new keys", valid_iou=0.80, lr=0.001)
    done, text = report(repo, "--base", "main~1")
    assert done.returncode == 0, done.stderr
    assert "| `best_valid_iou` | 0.7000 | 0.7200 | +0.0200 🟢 |" in text
    assert "| `best_valid_loss` | 0.5000 | 0.4000 | -0.1000 🟢 |" in text  # lower is better for a loss
    assert "| `best_threshold` | 0.5000 | 0.6000 | +0.1000 |" in text  # no better direction: no colour
    assert "best_val_iou" not in text
    assert "no longer DVC metrics" in text and "`epochs_run`" in text and "`images_per_second`" in text
    assert "the metrics committed at that revision" in text  # provenance of the base column
    done, text = report(repo, "--base", "main~1", "--gate", "best_valid_iou", "--tolerance", "0")
    assert done.returncode == 0 and "✅ gate passed" in text
    done, text = report(repo, "--base", "main~1", "--gate", "best_threshold")
    assert done.returncode == 3 and "has no better direction" in text


def test_base_reproduced_in_another_checkout_is_compared_and_named(repo, tmp_path):
    base = tmp_path / "base"
    assert sh(["git", "clone", "-q", str(repo), str(base)], tmp_path).returncode == 0
    (base / "metrics").mkdir(exist_ok=True)
    (base / "metrics/evaluate.json").write_text(json.dumps({"valid_iou": 0.81, "valid_dice": 0.9}))  # its own repro
    commit(repo, "change", valid_iou=0.78, lr=0.002)
    done, text = report(repo, "--base-dir", str(base), "--base-label", "origin/main", "--gate", "valid_iou",
                        "--tolerance", "0.01")
    assert done.returncode == 3, done.stderr
    assert "| `valid_iou` | 0.8100 | 0.7800 | -0.0300 🔴 |" in text
    assert "| `train.learning_rate` | 0.0010 | 0.0020 |" in text
    assert "both columns were reproduced by `dvc repro` on this machine, in this job: `origin/main`" in text
    done, _ = report(repo, "--base-dir", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "has no dvc.yaml" in done.stderr


def test_nested_per_class_metrics_have_a_direction():
    from segpipe.tracking.report import direction

    assert direction("valid_class_iou.sign_symbol") == "higher"  # DVC flattens {class: score} with a dot
    assert direction("valid_class_dice.road") == "higher"
    assert direction("best_threshold") is None


def per_image(seed: int = 0, *, count: int = 40, hurt: int = 0, share: float = 0.0):
    """A per_image.csv table (binary; the same numbers at both thresholds): `hurt` images lose `share` of
    their true positives to misses."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    tp = rng.integers(200, 800, count).astype(float)
    fp, fn = rng.integers(10, 120, count).astype(float), rng.integers(10, 120, count).astype(float)
    moved = np.round(tp * share) * (np.arange(count) < hurt)
    tp, fn = tp - moved, fn + moved
    table = pd.DataFrame({"id": [f"img{k:03d}" for k in range(count)], "group": "g", "foreground_fraction": 0.3,
                          "threshold": 0.5, "iou": tp / (tp + fp + fn), "dice": 2 * tp / (2 * tp + fp + fn),
                          "boundary_f": 0.9, "tp": tp, "fp": fp, "fn": fn, "tn": 5000.0})
    for column in ("iou", "dice", "boundary_f", "tp", "fp", "fn", "tn"):
        table[f"{column}_at_0.5"] = table[column]
    return table


def commit_with_per_image(repo: Path, message: str, table, *, valid_iou: float, lr: float = 0.001) -> None:
    (repo / "plots/evaluate").mkdir(parents=True, exist_ok=True)
    table.to_csv(repo / "plots/evaluate/per_image.csv", index=False)
    commit(repo, message, valid_iou=valid_iou, lr=lr)


def test_the_same_images_scored_the_same_are_within_noise_everywhere(repo):
    commit_with_per_image(repo, "base with per-image", per_image(), valid_iou=0.8)
    commit_with_per_image(repo, "same scores, another param", per_image(), valid_iou=0.8, lr=0.002)
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou")
    assert done.returncode == 0, done.stderr
    assert "| `valid_iou` | +0.0000 | [+0.0000, +0.0000] | within noise |" in text
    assert "| `valid_image_mean_iou` | +0.0000 | [+0.0000, +0.0000] | within noise |" in text
    assert "Paired on the 40 validation images both sides scored" in text


def test_a_drop_on_most_images_is_worse_and_fails_the_paired_gate(repo):
    commit_with_per_image(repo, "base with per-image", per_image(), valid_iou=0.8)
    commit_with_per_image(repo, "worse", per_image(hurt=36, share=0.1), valid_iou=0.75)
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.01")
    assert done.returncode == 3, text
    assert "worse |" in text and "gate FAILED: `valid_iou`" in text


def test_a_drop_within_the_noise_passes_the_paired_gate_and_fails_the_absolute_one(repo):
    """One image of 40 much worse: the pooled IoU falls, but resampling the images says it may be chance."""
    commit_with_per_image(repo, "base with per-image", per_image(count=12), valid_iou=0.8)
    commit_with_per_image(repo, "one image", per_image(count=12, hurt=1, share=0.9), valid_iou=0.76)
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.02")
    assert done.returncode == 0, text
    assert "within noise" in text and "gate passed: `valid_iou`" in text
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.02",
                        "--gate-rule", "absolute")
    assert done.returncode == 3 and "gate FAILED: `valid_iou` went from 0.8000 to 0.7600" in text


def test_a_base_from_before_per_image_counts_falls_back_to_the_absolute_gate_and_says_so(repo):
    old = per_image()[["id", "group", "foreground_fraction", "threshold", "iou", "dice", "boundary_f"]]
    commit_with_per_image(repo, "base without counts", old, valid_iou=0.8)
    commit_with_per_image(repo, "with counts", per_image(), valid_iou=0.79)
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.02")
    assert done.returncode == 0, text
    assert "No paired comparison: a side's plots/evaluate/per_image.csv has no per-image pixel counts" in text
    assert "(absolute rule: `valid_iou` has no paired comparison" in text


def test_cross_validated_sides_are_also_compared_out_of_fold_and_can_gate_there(repo):
    """Both sides cross-validated: a drop on most of 200 out-of-fold images is worse there, and `--gate oof_iou`
    fails on it while the 40 validation images stay the same."""
    (repo / "plots/evaluate").mkdir(parents=True, exist_ok=True)
    per_image(count=200).assign(fold=0).to_csv(repo / "plots/evaluate/oof_per_image.csv", index=False)
    commit_with_per_image(repo, "base, cross-validated", per_image(), valid_iou=0.8)
    per_image(count=200, hurt=180, share=0.1).assign(fold=0).to_csv(repo / "plots/evaluate/oof_per_image.csv",
                                                                   index=False)
    commit_with_per_image(repo, "worse out of fold", per_image(), valid_iou=0.8, lr=0.002)
    done, text = report(repo, "--base", "main~1", "--gate", "oof_iou", "--tolerance", "0.01")
    assert done.returncode == 3, text
    assert "### Did it help? Cross-validated (paired, out-of-fold)" in text
    assert "Paired on the 200 out-of-fold images" in text and "gate FAILED: `oof_iou`" in text
    assert "| `valid_iou` | +0.0000 | [+0.0000, +0.0000] | within noise |" in text
    done, text = report(repo, "--base", "main~1", "--gate", "valid_iou", "--tolerance", "0.01")
    assert done.returncode == 0 and "gate passed: `valid_iou`" in text
