"""The code passes the pinned linter (ruff, configured in pyproject.toml: line length 120, pycodestyle,
pyflakes, import order, bugbear, pyupgrade): CI runs it through this test."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{done.stdout}"
