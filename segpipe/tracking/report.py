"""A Markdown report of what a change did: params diff, metrics with deltas versus a base, the main
plots as PNG (rendered offline by the evaluate stage), and an optional regression gate.

    python -m segpipe.tracking.report --base main [--output report/report.md] [--gate valid_iou --tolerance 0.01]
        [--gate-rule paired|absolute]
    python -m segpipe.tracking.report --base-dir ../base --base-label origin/main [--gate ...]

Two kinds of base, and the report says which one it used (numbers from different machines or
precisions differ without any change in the code, so only the second compares like with like):
- `--base REV`: the metrics committed at a git revision, from `dvc params diff REV --json` and
  `dvc metrics diff REV --json --all` (--all also returns unchanged metrics);
- `--base-dir DIR`: another checkout in which `dvc repro` just ran (CI reproduces the base branch on
  the same runner); its params.yaml and metrics files are read from there.
Run it from the project root after `dvc repro`. Deltas are coloured only for metrics with a better
direction (IoU up, loss down). The headline scores are also compared image by image on the validation
images both sides scored (plots/evaluate/per_image.csv, matched by id): the difference, its 95% paired
bootstrap interval and a verdict, better, worse or "within noise" (segpipe/evaluation/intervals.py); with
cross-validation on both sides, also on every train + valid image out of fold (plots/evaluate/oof_per_image.csv:
`--gate oof_iou` gates on those, five times the images of a 20% validation split). The gate exits 3 when the
chosen metric got worse beyond the noise: the whole interval of its paired difference below -tolerance
(`--gate-rule absolute`: the point value fell by more than the tolerance), or is missing.
Metrics renamed since the base (`best_val_iou` -> `best_valid_iou`) are matched by their new names; run
facts that left the metrics files (timings, devices) are listed.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import yaml

from segpipe.core.cli import describe, run_stage
from segpipe.core.outputs import write_text
from segpipe.core.params import flatten
from segpipe.tracking.paired import OOF_PER_IMAGE, paired_gate, paired_rows, paired_table, read_per_image

HEADLINE = ("valid_iou", "valid_dice", "valid_iou_at_best_threshold", "valid_image_mean_boundary_f", "valid_mean_iou",
            "best_threshold", "test_iou", "best_valid_iou", "best_valid_dice", "best_valid_loss")
HIGHER_IS_BETTER = ("iou", "dice", "precision", "recall", "accuracy", "specificity", "boundary", "f1")  # name words
LOWER_IS_BETTER = ("loss",)
# Old metric names -> new ones, so the first report after a rename still compares (prefix replacements).
RENAMED_PREFIXES = {"best_val_": "best_valid_"}
PLOTS = ("learning_curves_loss", "learning_curves_iou", "threshold_curve", "precision_recall", "confusion_matrix",
         "class_scores", "per_image_iou")
GATE_FAILED = 3


def dvc_json(*args: str, cwd: Path | None = None) -> dict:
    done = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise ValueError(f"`dvc {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}; "
                         "check that --base names a git revision (branch, tag or commit) of this repository.")
    return json.loads(done.stdout or "{}")


def _number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def direction(name: str) -> str | None:
    """"higher" or "lower" when a metric has a better direction, None for numbers that have none
    (best_threshold, counts). Decided by the words of the name: `valid_iou_at_best_threshold` is an IoU."""
    words = re.split(r"[_.]", name)  # nested metrics come flattened: valid_class_iou.road
    if any(word in LOWER_IS_BETTER for word in words):
        return "lower"
    if any(word in HIGHER_IS_BETTER for word in words):
        return "higher"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _delta(old, new, name: str) -> str:
    if not _is_number(old) or not _is_number(new):
        return ""
    diff = new - old
    if diff == 0:
        return "0"
    better = direction(name)
    if better is None:
        return f"{diff:+.4f}"
    return f"{diff:+.4f} {'🟢' if (diff > 0) == (better == 'higher') else '🔴'}"


def current_name(name: str) -> str:
    for old, new in RENAMED_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def metrics_rows(metrics_diff: dict) -> tuple[list[tuple[str, str, object, object]], list[str]]:
    """([(file, metric, old, new)] with the headline metrics first, [base-only names that are no quality metric]).

    A base revision may still use old names (merged with their new names here) and may still have run facts
    (timings, devices) in its metrics files: those have no counterpart now and are returned apart."""
    merged: dict[tuple[str, str], dict] = {}
    for file, metrics in metrics_diff.items():
        for name, values in metrics.items():
            entry = merged.setdefault((file, current_name(name)), {})
            for side in ("old", "new"):
                if values.get(side) is not None:
                    entry[side] = values[side]
    rows, dropped = [], []
    for (file, name), values in merged.items():
        if "new" not in values and (direction(name) is None or not _is_number(values.get("old"))):
            dropped.append(name)
        else:
            rows.append((file, name, values.get("old"), values.get("new")))
    order = {name: index for index, name in enumerate(HEADLINE)}
    return sorted(rows, key=lambda row: (order.get(row[1], len(order)), row[0], row[1])), sorted(dropped)


def table(rows: list[tuple[str, str, object, object]], base: str) -> str:
    lines = [f"| metric | {base} | this change | delta |", "|---|---:|---:|---:|"]
    lines += [f"| `{name}` | {_number(old)} | {_number(new)} | {_delta(old, new, name)} |"
              for _, name, old, new in rows]
    return "\n".join(lines)


def gate(rows, *, metric: str, tolerance: float) -> tuple[bool, str]:
    """(passed, message) for `metric` not dropping more than `tolerance` below the base."""
    found = [(old, new) for _, name, old, new in rows if name == metric]
    if not found or not _is_number(found[0][1]):
        return False, f"gate: metric '{metric}' not found in this change's metrics; expected one of " \
                      f"{sorted({name for _, name, _, _ in rows})[:12]}..."
    if direction(metric) is None:
        return False, f"gate: metric '{metric}' has no better direction (neither a score nor a loss); gate on " \
                      "a score such as valid_iou."
    old, new = found[0]
    if not _is_number(old):
        return True, f"gate: `{metric}` = {new:.4f}; the base has no value, nothing to compare."
    drop = (new - old) if direction(metric) == "lower" else (old - new)
    if drop > tolerance:
        return False, (f"gate FAILED: `{metric}` went from {old:.4f} to {new:.4f}, worse by {drop:.4f} > "
                       f"tolerance {tolerance}.")
    return True, f"gate passed: `{metric}` {old:.4f} → {new:.4f} (tolerance {tolerance})."


def build_report(*, base: str, provenance: str, params_diff: dict, metrics_diff: dict, plots_dir: Path,
                 output: Path, gate_metric: str | None, tolerance: float, gate_rule: str = "paired",
                 per_image: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
                 oof_per_image: tuple[pd.DataFrame | None, pd.DataFrame | None] = (None, None),
                 by_group: bool = False) -> tuple[str, bool]:
    """The Markdown text (images copied beside `output`) and whether the gate passed. `per_image`: (this
    change's, the base's) per-image tables, for the paired comparison (`by_group`: resampling whole groups)
    and the `paired` gate rule; `oof_per_image`: their out-of-fold tables (cross-validation), compared the
    same way when both sides have one (metrics oof_iou, ...: a gate may name them)."""
    rows, dropped = metrics_rows(metrics_diff)
    headline = [row for row in rows if row[1] in HEADLINE]
    paired, paired_note = paired_rows(*per_image, by_group=by_group)
    oof, oof_note = [], ""
    if all(table is not None for table in oof_per_image):
        oof, oof_note = paired_rows(*oof_per_image, by_group=by_group, split="oof")
    parts = [f"## segpipe report vs `{base}`", provenance]
    passed = True
    if gate_metric:
        found = paired_gate(paired + oof, metric=gate_metric, tolerance=tolerance) if gate_rule == "paired" \
            else None
        if found is None:
            passed, message = gate(rows, metric=gate_metric, tolerance=tolerance)
            if gate_rule == "paired":
                message += (f" (absolute rule: `{gate_metric}` has no paired comparison; paired metrics: "
                            f"{', '.join(f'`{row[0]}`' for row in paired + oof) or 'none'})")
        else:
            passed, message = found
        parts.append(("✅ " if passed else "❌ ") + message)
    if paired:
        parts += ["### Did it help? (paired, same images)", paired_note, paired_table(paired)]
    else:
        parts.append(paired_note)
    if oof:
        parts += ["### Did it help? Cross-validated (paired, out-of-fold)", oof_note, paired_table(oof)]
    elif oof_note:
        parts.append(oof_note)
    changes = [(f"{file}: {name}" if len(params_diff) > 1 else name, values.get("old"), values.get("new"))
               for file, params in params_diff.items() for name, values in sorted(params.items())]
    parts.append("### Params")
    parts.append("\n".join(["| param | base | this change |", "|---|---|---|"] +
                           [f"| `{n}` | {_number(o)} | {_number(v)} |" for n, o, v in changes])
                 if changes else f"No param changes versus `{base}`.")
    parts.append("### Metrics")
    if not rows:
        parts.append("No metrics found: run `dvc repro` first.")
    else:
        parts.append(table(headline or rows, base))
        if headline and len(rows) > len(headline):
            parts.append("<details><summary>All metrics</summary>\n\n" + table(rows, base) + "\n\n</details>")
    if dropped:
        parts.append(f"Only in the base's metrics files, no longer DVC metrics (run facts moved to "
                     f"`models/train_facts.json` and MLflow): {', '.join(f'`{name}`' for name in dropped)}.")
    images = [plots_dir / f"{name}.png" for name in PLOTS if (plots_dir / f"{name}.png").is_file()]
    if images:
        parts.append("### Plots (this change)")
        folder = output.parent / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, folder / image.name)
            parts.append(f"![{image.stem}](images/{image.name})")
    return "\n\n".join(parts) + "\n", passed


def workspace_metrics(folder: Path) -> dict[str, dict]:
    """{metrics file: flat {name: value}} of the workspace in `folder` (`dvc metrics show --json` there)."""
    shown = dvc_json("metrics", "show", cwd=folder).get("", {}).get("data", {})
    return {file: flatten(entry.get("data", {})) for file, entry in shown.items()}


def workspace_diff(base_dir: Path) -> tuple[dict, dict]:
    """(params diff, metrics diff) of this workspace against the workspace in `base_dir`, in DVC's diff format."""
    old_params = flatten(yaml.safe_load((base_dir / "params.yaml").read_text()) or {})
    new_params = flatten(yaml.safe_load(Path("params.yaml").read_text()) or {})
    params = {name: {"old": old_params.get(name), "new": new_params.get(name)}
              for name in sorted(set(old_params) | set(new_params)) if old_params.get(name) != new_params.get(name)}
    old, new = workspace_metrics(base_dir), workspace_metrics(Path("."))
    metrics = {file: {name: {"old": old.get(file, {}).get(name), "new": new.get(file, {}).get(name)}
                      for name in sorted(set(old.get(file, {})) | set(new.get(file, {})))}
               for file in sorted(set(old) | set(new))}
    return ({"params.yaml": params} if params else {}), metrics


def run_facts(folder: Path) -> str:
    """"commit abc1234, mixed_bfloat16 on /cpu:0" from a workspace's git HEAD and models/train_facts.json."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True)
    facts_file = folder / "models" / "train_facts.json"
    facts = json.loads(facts_file.read_text()) if facts_file.is_file() else {}
    where = f", {facts['precision_policy']} on {facts['devices']}" if "precision_policy" in facts else ""
    return f"commit {commit.stdout.strip() or 'unknown'}{where}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="git revision whose committed metrics to compare with, e.g. origin/main")
    base.add_argument("--base-dir", type=Path, help="a checkout of the base in which `dvc repro` has run")
    parser.add_argument("--base-label", help="how to name --base-dir in the report (default: the folder)")
    parser.add_argument("--output", type=Path, default=Path("report/report.md"),
                        help="the Markdown file to write (default report/report.md; images go beside it)")
    parser.add_argument("--plots-dir", type=Path, default=Path("plots/evaluate/png"),
                        help="this change's rendered plots to include (default plots/evaluate/png)")
    parser.add_argument("--gate", default=None, metavar="METRIC",
                        help="exit 3 when METRIC got worse than the base (see --gate-rule)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed worsening for --gate: paired, the drop whose whole interval must lie below "
                             "-tolerance; absolute, the largest drop of the point value")
    parser.add_argument("--gate-rule", choices=("paired", "absolute"), default="paired",
                        help="paired (default): fail only on a drop beyond the noise, image by image; absolute: "
                             "fail when the metric fell by more than --tolerance")
    parser.add_argument("--by-group", action="store_true",
                        help="resample whole groups of images (per_image.csv's group: patients, scenes) in the "
                             "paired comparison, as evaluate.bootstrap_unit: group does for the intervals")
    args = parser.parse_args(argv)
    if args.base_dir:
        if not (args.base_dir / "dvc.yaml").is_file():
            raise ValueError(f"--base-dir '{args.base_dir}' has no dvc.yaml; expected a checkout of the base "
                             "revision in which `dvc repro` has run.")
        label = args.base_label or str(args.base_dir)
        params_diff, metrics_diff = workspace_diff(args.base_dir)
        provenance = (f"**Where the numbers come from:** both columns were reproduced by `dvc repro` on this "
                      f"machine, in this job: `{label}` ({run_facts(args.base_dir)}) and this change "
                      f"({run_facts(Path('.'))}).")
    else:
        label = args.base
        params_diff = dvc_json("params", "diff", args.base)
        metrics_diff = dvc_json("metrics", "diff", args.base, "--all")
        provenance = (f"**Where the numbers come from:** `{label}`: the metrics committed at that revision, "
                      f"reproduced wherever its author ran `dvc repro`; this change: this workspace "
                      f"({run_facts(Path('.'))}). Hardware and precision alone can move these numbers.")
    base_table = read_per_image(args.base_dir) if args.base_dir else read_per_image(rev=args.base)
    base_oof = read_per_image(args.base_dir, path=OOF_PER_IMAGE) if args.base_dir else \
        read_per_image(rev=args.base, path=OOF_PER_IMAGE)
    text, passed = build_report(base=label, provenance=provenance, params_diff=params_diff,
                                metrics_diff=metrics_diff, plots_dir=args.plots_dir, output=args.output,
                                gate_metric=args.gate, tolerance=args.tolerance, gate_rule=args.gate_rule,
                                per_image=(read_per_image(), base_table), by_group=args.by_group,
                                oof_per_image=(read_per_image(path=OOF_PER_IMAGE), base_oof))
    write_text(args.output, text)
    gate = "" if args.gate is None else f"; gate {'passed' if passed else 'FAILED'}"
    print(f"report: written to {args.output}{gate}")
    return 0 if passed else GATE_FAILED


def cli() -> None:
    """The `segpipe-report` command."""
    run_stage("report", main)


if __name__ == "__main__":
    cli()
