"""Packaging: pins that agree, every imported package declared, commands that start without TensorFlow."""
from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(lines) -> dict[str, str]:
    """{"tensorflow-cpu": "2.21.0", ...} from requirement strings (extras dropped from the name)."""
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            found[name.split("[")[0].lower()] = version
    return found


def test_requirements_txt_is_pyproject_with_its_cpu_and_dev_extras():
    extras = PYPROJECT["optional-dependencies"]
    expected = pins(PYPROJECT["dependencies"] + extras["cpu"] + extras["dev"])
    assert pins((REPO / "requirements.txt").read_text().splitlines()) == expected


def test_tensorflow_is_chosen_by_an_extra_not_a_base_dependency():
    extras = PYPROJECT["optional-dependencies"]
    assert not {"tensorflow", "tensorflow-cpu"} & set(pins(PYPROJECT["dependencies"]))
    assert set(pins(extras["cpu"])) == {"tensorflow-cpu"} and set(pins(extras["gpu"])) == {"tensorflow"}


def third_party_imports() -> set[str]:
    names = set()
    for path in [*REPO.glob("segpipe/**/*.py"), *REPO.glob("stages/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("segpipe", "stages")}


def test_every_imported_package_is_pinned():
    declared = set(pins(PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["cpu"]))
    distributions = packages_distributions()
    for module in sorted(third_party_imports()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert names & declared, (f"'{module}' is imported (distribution {sorted(names)}) but not pinned in "
                                  "pyproject.toml")
    assert "scipy" in third_party_imports()  # the import walk sees imports inside functions too


COMMANDS = [["-m", f"stages.{stage}"] for stage in ("convert_to_png", "build_csv", "split_balanced", "augment",
                                                      "preflight", "train", "evaluate", "make_demo_data")] + [
    ["-m", "segpipe.inference.predict"], ["-m", "segpipe.tracking.report"], ["-m", "segpipe.tracking.lockcheck"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help_starts_without_tensorflow(command):
    """`--help` answers at once: TensorFlow (seconds to import) is made unimportable, and it still works."""
    blocker = ("import runpy, sys; sys.modules.update(tensorflow=None, keras=None); "
               f"sys.argv = ['{command[-1]}', '--help']; runpy.run_module('{command[-1]}', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "--" in done.stdout


def test_installed_commands_run_from_any_directory(tmp_path):
    scripts = Path(sys.executable).parent
    if not (scripts / "segpipe-predict").exists():
        pytest.skip("segpipe is not installed in this environment (setup.sh installs it)")
    for command in ("segpipe-predict", "segpipe-report", "segpipe-lockcheck"):
        done = subprocess.run([str(scripts / command), "--help"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, env={"PATH": str(scripts), "HOME": str(tmp_path)})
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stderr)
