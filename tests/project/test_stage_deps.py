"""Every stage's code deps in dvc.yaml are exactly the project files its command imports, directly or not.

A stage that imports a file it does not depend on keeps stale results when that file changes; a dep it
never imports reruns it for nothing. Imports are read from the source (every `import` statement, also
those inside functions), starting at the module that the stage's `cmd` runs with `python -m`.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO, dvc_stages

PACKAGES = ("segpipe", "stages")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None outside the project."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of the modules a file imports anywhere in its body (absolute and relative imports)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module
            names.add(base)
            # `from segpipe.evaluation import metrics` imports the module segpipe.evaluation.metrics
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_files_imported(module: str) -> set[str]:
    """Repo-relative paths of every project file that running `python -m module` imports, itself included.

    Importing a.b.c also runs the package files a/__init__.py and a/b/__init__.py."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:end]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return {path.relative_to(REPO).as_posix() for path in seen}


def stages() -> dict:
    return dvc_stages()


@pytest.mark.parametrize("stage", sorted(stages()))
def test_code_deps_are_exactly_the_imported_project_files(stage):
    definition = stages()[stage]
    module = re.search(r"python -m ([\w.]+)", definition["cmd"]).group(1)
    imported = project_files_imported(module)
    code_deps = {dep for dep in definition["deps"] if dep.endswith(".py")}
    assert not imported - code_deps, \
        f"stage '{stage}' imports {sorted(imported - code_deps)} but dvc.yaml does not list them as deps"
    assert not code_deps - imported, \
        f"stage '{stage}' lists {sorted(code_deps - imported)} as deps but never imports them"


def test_the_import_reader_follows_imports_inside_functions_and_package_files():
    files = project_files_imported("stages.evaluate")
    # inference and tracking are imported inside main() of stages/evaluate.py; balancing by plots.py
    assert {"stages/__init__.py", "stages/evaluate.py", "segpipe/__init__.py", "segpipe/inference/prediction.py",
            "segpipe/tracking/runs.py", "segpipe/data/balancing.py"} <= files
    assert "stages/train.py" not in files and "segpipe/training/model.py" not in files


def test_stages_do_not_depend_on_outputs_they_never_read():
    assert "models/saved_model" not in stages()["evaluate"]["deps"]
