"""Every `dvc exp run -S` line of the README and the docs works exactly as written: DVC parses it, the values
are the ones meant (braces, regex backslashes, lists), and the resulting params.yaml passes segpipe's own
checks."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from conftest import REPO
from segpipe.core.params import Params
from segpipe.core.schema import SECTIONS
from segpipe.data.pairing import Naming


def readme_exp_lines() -> list[str]:
    """The `dvc exp run` lines with -S in the bash blocks of the README and docs/, except queued grids (Hydra
    sweeps)."""
    lines, in_bash = [], False
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    for line in (line for page in pages for line in page.read_text(encoding="utf-8").splitlines()):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        command = line.split("  #")[0].strip()
        if in_bash and command.startswith("dvc exp run") and " -S" in command and "--queue" not in command:
            lines.append(command)
    return lines


def overrides(line: str) -> list[str]:
    args = shlex.split(line)
    return [args[i + 1] for i, arg in enumerate(args) if arg == "-S"]


def value_of(params: dict, key: str):
    for part in key.split("."):
        params = params[part]
    return params


EXPECTED = {  # what the README's brace and regex lines must deliver to params.yaml
    "convert.mask_stem_pattern": "{stem}_lesion",
    "convert.image_folder": "{split}",
    "convert.mask_folder": {"{split}annot", "1st_manual"},
    "class_names": ["sky", "road", "car"],
}


def test_the_readme_documents_the_brace_and_regex_forms():
    text = "\n".join(readme_exp_lines())
    for form in ("'{stem}_lesion'", "'(case\\d+)_'", "'{split}annot'", "\\d{4}"):
        assert form in text, form
    assert len(readme_exp_lines()) >= 7


@pytest.mark.parametrize("line", readme_exp_lines())
def test_readme_params_line_parses_and_validates(tmp_path, line):
    params_path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_path)
    apply_overrides(str(params_path), overrides(line))  # what `dvc exp run -S` does to params.yaml
    values = yaml.safe_load(params_path.read_text())
    for override in overrides(line):
        key = override.split("=", 1)[0]
        expected = EXPECTED.get(key)
        if isinstance(expected, set):
            assert value_of(values, key) in expected
        elif expected is not None:
            assert value_of(values, key) == expected
        if key.endswith("_key"):  # a regex arrives with single backslashes and compiles with a group
            assert "\\\\" not in value_of(values, key) and "\\d" in value_of(values, key)
    params = Params(params_path)
    for section in SECTIONS:
        params.section(section)
    params.class_names()
    convert = params.section("convert")
    Naming(**{k: convert[k] for k in ("image_folder", "mask_folder", "mask_stem_pattern", "image_key",
                                      "mask_key")}).check()


def test_unquoted_braces_fail_in_dvc_as_the_readme_says(tmp_path):
    params_path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_path)
    with pytest.raises(Exception, match="Invalid `--set-param` value") as err:
        apply_overrides(str(params_path), ["convert.mask_stem_pattern={stem}_lesion"])
    assert "no viable alternative at input '{stem}'" in str(err.value.__cause__)


@pytest.mark.slow
def test_readme_lines_through_a_real_dvc_exp_run(tmp_path):
    """The lines run as `dvc exp run` in a git repo whose one stage records the params it was given."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")

    def sh(*args):
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    stage = {"cmd": "python -c \"import json, yaml; json.dump(yaml.safe_load(open('params.yaml')), "
                    "open('seen.json', 'w'))\"",
             "params": ["num_classes", "class_names", "convert", "train", "split_balanced", "cv"],
             "outs": [{"seen.json": {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"record": stage}}))
    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@example.com")
    sh("git", "config", "user.name", "t")
    sh("dvc", "init", "-q")
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "base")
    for line in readme_exp_lines():
        sh(*shlex.split(line))
        seen = json.loads((tmp_path / "seen.json").read_text())
        expected_path = tmp_path / "expected.yaml"
        shutil.copy(REPO / "params.yaml", expected_path)
        apply_overrides(str(expected_path), overrides(line))
        expected = yaml.safe_load(expected_path.read_text())
        for override in overrides(line):
            key = override.split("=", 1)[0]
            assert value_of(seen, key) == value_of(expected, key), line
        sh("git", "checkout", "-q", "--", "params.yaml")
