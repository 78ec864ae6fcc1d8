"""The documentation: the site builds strictly (no broken link, anchor or missing page), the README's links
resolve, and the generated pages are current: docs/reference/params.md, from segpipe/core/schema.py (what each
key accepts) and params.yaml (defaults and their comments), and docs/reference/stages.md, from dvc.yaml and
the stages' docstrings:

    SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_docs.py
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from conftest import REPO, dvc_stages
from segpipe.core.schema import SECTIONS, SHARED

PARAMS_PAGE = REPO / "docs" / "reference" / "params.md"
KINDS = {bool: "true/false", int: "integer", float: "number", str: "text", list: "list", dict: "mapping",
         type(None): "null"}


def params_comments() -> dict[str, str]:
    """{'train.input': 'its comment', 'seed': ...}: each key's comment in params.yaml, continuation lines joined;
    a key without one takes the comment lines right above it."""
    comments, section, last, above = {}, None, None, []
    for line in (REPO / "params.yaml").read_text().splitlines():
        key = re.match(r"^( *)(\w+):(.*)$", line)
        if key and len(key.group(1)) in (0, 2):
            indent, name, rest = len(key.group(1)), key.group(2), key.group(3)
            if indent == 0:
                section = name if not rest.split("#")[0].strip() else None
            full = name if indent == 0 else f"{section}.{name}"
            inline = re.split(r"\s#\s?", rest, maxsplit=1)
            comments[full] = inline[1].strip() if len(inline) == 2 else " ".join(above)
            last, above = full, []
        elif line.strip().startswith("#"):
            text = line.strip()[1:].strip()
            if line.index("#") > 2 and last is not None:  # a continuation of the last key's comment
                comments[last] = f"{comments[last]} {text}".strip()
            elif line.index("#") == 2:
                above.append(text)
        elif not line.strip():
            above = []
        else:  # a list item or a value's next line: a comment under it belongs to it, not to the key
            last = None
    return comments


def allowed(rule: dict) -> str:
    kinds = rule["kind"] if isinstance(rule["kind"], tuple) else (rule["kind"],)
    if rule.get("choices") is not None:
        words = " \\| ".join("null" if c is None else f"`{c}`" for c in rule["choices"])
    else:
        words = " or ".join(KINDS[k] for k in kinds)
    low, high = rule.get("minimum"), rule.get("maximum")
    if low is not None or high is not None:
        words += ", " + (f"{low} to {high}" if low is not None and high is not None else
                         f">= {low}" if low is not None else f"<= {high}")
    return words


def shown(value) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return f"{len(value)} entries (params.yaml)"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return f"`{text.removesuffix(chr(10) + '...').removesuffix('...').strip()}`"


def render_params_page() -> str:
    values, comments = yaml.safe_load((REPO / "params.yaml").read_text()), params_comments()
    lines = ["# Params", "",
             "Every key of `params.yaml`: its default, what it accepts and what it does. Generated from",
             "`segpipe/core/schema.py` and the comments in `params.yaml` by `tests/project/test_docs.py`",
             "(`SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_docs.py`); do not edit by hand.",
             "Each stage declares in `dvc.yaml` the sections it reads, so `dvc exp run -S section.key=value` reruns",
             "only the stages that use the key.",
             ""]
    groups = [("Shared", "", SHARED, values)] + [(f"`{name}`", f"{name}.", rules, values[name])
                                                 for name, rules in SECTIONS.items()]
    for title, prefix, rules, defaults in groups:
        lines += [f"## {title}", "", "| key | default | accepts | what it does |", "|---|---|---|---|"]
        for key, rule in rules.items():
            text = comments.get(f"{prefix}{key}", "").replace("|", "\\|")
            lines.append(f"| `{prefix}{key}` | {shown(defaults[key]).replace('|', chr(92) + '|')} | {allowed(rule)} "
                         f"| {text} |")
        lines.append("")
    return "\n".join(lines)


def check_generated(path, page: str) -> None:
    """A generated page equals what its generator gives now (SEGPIPE_WRITE_DOCS=1 writes it first)."""
    if os.environ.get("SEGPIPE_WRITE_DOCS"):
        path.write_text(page)
    assert path.is_file() and path.read_text() == page, (
        f"{path.relative_to(REPO)} is out of date: "
        "SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_docs.py")


def test_the_params_page_is_current():
    check_generated(PARAMS_PAGE, render_params_page())


STAGES_PAGE = REPO / "docs" / "reference" / "stages.md"


def _path_list(entries) -> str:
    """dvc.yaml's deps or outs as code spans; an out with options shows them (persist, cache: false)."""
    shown = []
    for entry in entries:
        name, options = (next(iter(entry.items())) if isinstance(entry, dict) else (entry, {}))
        notes = [key if value is True else f"{key}: {str(value).lower()}" for key, value in (options or {}).items()]
        shown.append(f"`{name}`" + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(shown)


def render_stages_page() -> str:
    """docs/reference/stages.md from dvc.yaml (what each stage reads, writes and which params it declares) and
    the first sentence of each stage's docstring."""
    stages = dvc_stages()
    lines = ["# Stages and their files", "",
             "Generated from `dvc.yaml` and the stages' docstrings by `tests/project/test_docs.py`",
             "(`SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_docs.py`); do not edit by hand.",
             "Reads leave out the project's own code files (below).", "",
             "| stage | what it does | reads | writes | params |", "|---|---|---|---|---|"]
    for name, stage in stages.items():
        module = REPO / "stages" / (stage["cmd"].split()[2].removeprefix("stages.") + ".py")
        summary = re.sub(r"\s+", " ", module.read_text().split('"""')[1].split("\n\n")[0]).split(": ", 1)[-1]
        summary = summary.split(". ")[0].rstrip(".") + "."
        reads = [dep for dep in stage.get("deps", []) if not dep.startswith(("segpipe/", "stages/"))]
        writes = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
        params = ", ".join(f"`{param}`" for param in stage.get("params", []))
        lines.append(f"| `{name}` | {summary.replace('|', chr(92) + '|')} | {_path_list(reads)} | "
                     f"{_path_list(writes)} | {params} |")
    lines += ["", "Each stage also depends on exactly the project files its command imports (directly or not, "
              "package", "`__init__.py` files included), so editing one reruns just the stages that run it; "
              "`tests/project/test_stage_deps.py`", "reads every import statement of each stage's code and fails "
              "when `dvc.yaml` misses one or lists one too many.", "(Depending on the whole `segpipe/` folder "
              "would be simpler, but every edit of, say, the report would then", "convert a user's whole "
              "dataset again.) `persist`: DVC keeps the output between runs (train's resume backup); `cache: "
              "false`:", "the file is versioned by git, not DVC's cache. `<name>@<k>`: one stage per item of "
              "`cv.folds`", "(`fold-rows@0`, `fold-rows@1`, ...; none with `cv.folds: []`): "
              "[cross-validation](../how-to/cross-validation.md).", ""]
    return "\n".join(lines)


def test_the_stages_page_is_current():
    check_generated(STAGES_PAGE, render_stages_page())


COMMANDS_PAGE = REPO / "docs" / "reference" / "commands.md"
# (what a user types, the module whose main() parses it)
COMMANDS = [("segpipe-predict", "segpipe.inference.predict"), ("segpipe-report", "segpipe.tracking.report"),
            ("segpipe-lockcheck", "segpipe.tracking.lockcheck"),
            *dict.fromkeys((f"python -m {stage['cmd'].split()[2]}", stage["cmd"].split()[2])
                           for stage in dvc_stages().values())]  # train-fold@<k> runs stages.train too


def command_help(command: str, module: str) -> str:
    """`command --help` as a user sees it at 100 columns, from the module's own parser (no process, no run)."""
    import contextlib
    import importlib
    import io

    out, argv, columns = io.StringIO(), sys.argv[:], os.environ.get("COLUMNS")
    sys.argv[0], os.environ["COLUMNS"] = command, "100"
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            importlib.import_module(module).main(["--help"])
    finally:
        sys.argv[:] = argv
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue().rstrip()


def render_commands_page() -> str:
    lines = ["# Commands", "",
             "Every command's `--help`, generated from its parser by `tests/project/test_docs.py`",
             "(`SEGPIPE_WRITE_DOCS=1 .venv/bin/python -m pytest tests/project/test_docs.py`); do not edit by hand.",
             "The stages run through `dvc repro`, which passes them the arguments in `dvc.yaml`;",
             "`segpipe-preflight` runs `python -m stages.preflight` with those arguments from the project root.", ""]
    for command, module in COMMANDS:
        lines += [f"## `{command}`", "", "```text", command_help(command, module), "```", ""]
    return "\n".join(lines)


def test_the_commands_page_is_current_and_no_description_stops_mid_sentence():
    for command, module in COMMANDS:
        usage_and_description = command_help(command, module).split("\n\n")
        assert usage_and_description[1].rstrip().endswith("."), f"{command}: {usage_and_description[1]!r}"
    check_generated(COMMANDS_PAGE, render_commands_page())


def test_every_params_key_has_a_comment():
    comments = params_comments()
    keys = list(SHARED) + [f"{section}.{key}" for section, rules in SECTIONS.items() for key in rules]
    assert not [key for key in keys if not comments.get(key)], "params.yaml keys without a comment"


def test_the_readme_links_resolve():
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert targets and not [t for t in targets if not (REPO / t).exists()]


def test_the_docs_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def doc_pages() -> list[tuple[str, str]]:
    """(path, text) of README.md and every page under docs/."""
    return [(page.relative_to(REPO).as_posix(), page.read_text())
            for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]]


def code_in(text: str) -> list[str]:
    """Every fenced block's lines and every inline code span of a Markdown text, backslash continuations joined."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    outside = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", outside)


def wrong_flags_and_params(pages: list[tuple[str, str]]) -> list[str]:
    """`segpipe-*` or `python -m stages.*` flags their parser lacks, and `-S key=value` keys params.yaml lacks."""
    known = {command.removeprefix("python -m "): set(re.findall(r"--[a-z][a-z-]*", command_help(command, module)))
             for command, module in COMMANDS}
    known["segpipe-preflight"] = known["stages.preflight"]
    params = set(SHARED) | {f"{section}.{key}" for section, rules in SECTIONS.items() for key in rules}
    wrong = []
    for name, text in pages:
        if name.endswith(("commands.md", "changelog.md")):  # generated from the parsers; history
            continue
        for code in code_in(text):
            for command, flags in known.items():
                for use in re.findall(rf"(?<![\w.-]){re.escape(command)}(?![\w-])([^|;&#]*)", code):
                    wrong += [f"{name}: {command} {flag}"
                              for flag in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", use) if flag not in flags]
            wrong += [f"{name}: -S {key}" for key in re.findall(r"-S\s+'?([a-z_]+(?:\.[a-z_]+)?)=", code)
                      if key not in params and key != "section.key"]  # params.md's placeholder
    return wrong


def missing_paths(pages: list[tuple[str, str]]) -> list[str]:
    """Project paths named in prose or code (segpipe/..., stages/..., tests/..., bench/..., docs/...) that do not
    exist, and every mention of ../shared (the developers' datasets, which users do not have)."""
    missing = []
    for name, text in pages:
        missing += [f"{name}: ../shared" for _ in re.findall(r"\.\./shared", text)]
        for path in re.findall(r"(?<![\w/.-])((?:segpipe|stages|tests|bench|docs)/[\w/.-]*\w\.(?:py|md|yaml|json))",
                               text):
            if not (REPO / path).exists() and not (REPO / "docs" / path).exists():
                missing.append(f"{name}: {path}")
    return missing


def test_every_flag_and_param_the_docs_show_exists():
    wrong = wrong_flags_and_params(doc_pages())
    assert not wrong, "flags or params the code does not have:\n" + "\n".join(wrong)


def test_every_path_the_docs_name_resolves_and_none_points_at_shared():
    missing = missing_paths(doc_pages())
    assert not missing, "paths that do not exist (or ../shared):\n" + "\n".join(missing)


def test_the_docs_checks_catch_a_wrong_flag_a_wrong_param_and_a_moved_page():
    planted = [("docs/x.md", "Run `segpipe-predict --model m --input i --output o --treshold 0.4`, then\n"
                             "```bash\ndvc exp run -S train.lerning_rate=3e-4\n```\nand read "
                             "docs/how-to/several_machines.md or ../shared/datasets.")]
    assert sorted(wrong_flags_and_params(planted)) == ["docs/x.md: -S train.lerning_rate",
                                                       "docs/x.md: segpipe-predict --treshold"]
    assert missing_paths(planted) == ["docs/x.md: ../shared", "docs/x.md: docs/how-to/several_machines.md"]
