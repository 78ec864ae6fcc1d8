"""A Markdown report of what a change did: params diff, metrics with deltas versus a base revision, the main
plots as PNG (rendered offline by the evaluate stage), and an optional regression gate.

    python -m segpipe.report --base main [--output report/report.md] [--gate valid_iou --tolerance 0.01]

Values come from `dvc params diff <base> --json` and `dvc metrics diff <base> --json --all` (with --all DVC
also returns unchanged metrics, so a base equal to the workspace still shows its values instead of DVC's
empty table). Run it from the project root after `dvc repro`. The gate exits 3 when the chosen metric
dropped more than the tolerance below the base (or is missing), so CI can fail the pull request.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from segpipe.outputs import write_text

HEADLINE = ("valid_iou", "valid_dice", "valid_iou_at_best_threshold", "valid_image_mean_boundary_f", "valid_mean_iou",
            "best_threshold", "test_iou", "best_val_iou", "best_epoch", "epochs_run", "images_per_second")
LOWER_IS_BETTER = ("loss", "seconds")
PLOTS = ("learning_curves_loss", "learning_curves_iou", "threshold_curve", "precision_recall", "confusion_matrix",
         "per_image_iou")
GATE_FAILED = 3


def dvc_json(*args: str) -> dict:
    done = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True)
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


def _delta(old, new, name: str) -> str:
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)) or isinstance(old, bool):
        return ""
    diff = new - old
    if diff == 0:
        return "0"
    better = (diff < 0) if any(word in name for word in LOWER_IS_BETTER) else (diff > 0)
    return f"{diff:+.4f} {'🟢' if better else '🔴'}"


def metrics_rows(metrics_diff: dict) -> list[tuple[str, str, object, object]]:
    """[(file, metric, old, new)] with the headline metrics first."""
    rows = [(file, name, values.get("old"), values.get("new"))
            for file, metrics in metrics_diff.items() for name, values in metrics.items()]
    order = {name: index for index, name in enumerate(HEADLINE)}
    return sorted(rows, key=lambda row: (order.get(row[1], len(order)), row[0], row[1]))


def table(rows: list[tuple[str, str, object, object]], base: str) -> str:
    lines = [f"| metric | {base} | this change | delta |", "|---|---:|---:|---:|"]
    lines += [f"| `{name}` | {_number(old)} | {_number(new)} | {_delta(old, new, name)} |" for _, name, old, new in rows]
    return "\n".join(lines)


def gate(rows, *, metric: str, tolerance: float) -> tuple[bool, str]:
    """(passed, message) for `metric` not dropping more than `tolerance` below the base."""
    found = [(old, new) for _, name, old, new in rows if name == metric]
    if not found or not isinstance(found[0][1], (int, float)):
        return False, f"gate: metric '{metric}' not found in this change's metrics; expected one of " \
                      f"{sorted({name for _, name, _, _ in rows})[:12]}..."
    old, new = found[0]
    if not isinstance(old, (int, float)):
        return True, f"gate: `{metric}` = {new:.4f}; the base has no value, nothing to compare."
    lower_better = any(word in metric for word in LOWER_IS_BETTER)
    drop = (new - old) if lower_better else (old - new)
    if drop > tolerance:
        return False, f"gate FAILED: `{metric}` went from {old:.4f} to {new:.4f}, worse by {drop:.4f} > tolerance {tolerance}."
    return True, f"gate passed: `{metric}` {old:.4f} → {new:.4f} (tolerance {tolerance})."


def build_report(*, base: str, params_diff: dict, metrics_diff: dict, plots_dir: Path, output: Path,
                 gate_metric: str | None, tolerance: float) -> tuple[str, bool]:
    """The Markdown text (images copied beside `output`) and whether the gate passed."""
    rows = metrics_rows(metrics_diff)
    headline = [row for row in rows if row[1] in HEADLINE]
    parts = [f"## segpipe report vs `{base}`"]
    passed = True
    if gate_metric:
        passed, message = gate(rows, metric=gate_metric, tolerance=tolerance)
        parts.append(("✅ " if passed else "❌ ") + message)
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
    images = [plots_dir / f"{name}.png" for name in PLOTS if (plots_dir / f"{name}.png").is_file()]
    if images:
        parts.append("### Plots (this change)")
        folder = output.parent / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, folder / image.name)
            parts.append(f"![{image.stem}](images/{image.name})")
    return "\n\n".join(parts) + "\n", passed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare with, e.g. main or origin/main")
    parser.add_argument("--output", type=Path, default=Path("report/report.md"))
    parser.add_argument("--plots-dir", type=Path, default=Path("plots/evaluate/png"))
    parser.add_argument("--gate", default=None, metavar="METRIC", help="fail when METRIC drops below the base")
    parser.add_argument("--tolerance", type=float, default=0.0, help="allowed drop for --gate (absolute)")
    args = parser.parse_args(argv)
    params_diff = dvc_json("params", "diff", args.base)
    metrics_diff = dvc_json("metrics", "diff", args.base, "--all")
    text, passed = build_report(base=args.base, params_diff=params_diff, metrics_diff=metrics_diff,
                                plots_dir=args.plots_dir, output=args.output, gate_metric=args.gate,
                                tolerance=args.tolerance)
    write_text(args.output, text)
    print(f"report: written to {args.output}" + ("" if args.gate is None else f"; gate {'passed' if passed else 'FAILED'}"))
    return 0 if passed else GATE_FAILED


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as err:
        print(f"report: error: {err}", file=sys.stderr)
        sys.exit(2)
