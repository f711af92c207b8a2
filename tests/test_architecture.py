"""The layers of millrace (entry points -> runtime -> transport -> flow description -> common)
and the separation of the worker from the operator, as the import contracts in pyproject.toml
write them down. A change that imports upwards, or brings a cycle back, fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    beside_python = Path(sys.executable).parent / "lint-imports"
    found = str(beside_python) if beside_python.exists() else shutil.which("lint-imports")
    if found is None:
        # A development dependency like pytest itself: missing means a broken setup, not a skip.
        pytest.fail("lint-imports not found: scripts/setup installs import-linter (the dev extra)")
    return found


def test_the_import_contracts_are_kept() -> None:
    done = subprocess.run(
        [lint_imports(), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The contracts ran: a configuration that lost them would pass with none kept.
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", done.stdout)
    assert kept is not None and int(kept.group(1)) >= 3, done.stdout
