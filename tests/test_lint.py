"""The tree is lint-clean and formatted: ``ruff check`` and ``ruff format --check``, configured in
pyproject.toml, find nothing (scripts/test runs this, so CI does)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> str:
    beside_python = Path(sys.executable).parent / "ruff"
    found = str(beside_python) if beside_python.exists() else shutil.which("ruff")
    if found is None:
        # A development dependency like pytest itself: missing means a broken setup, not a skip.
        pytest.fail("ruff not found: scripts/setup installs it (the dev extra)")
    return found


@pytest.mark.parametrize(
    "command",
    [["check", "--no-fix"], ["format", "--check", "--diff"]],
    ids=["check", "format"],
)
def test_ruff_finds_nothing(command: list[str]) -> None:
    done = subprocess.run(
        [ruff(), *command, "--config", str(ROOT / "pyproject.toml"), "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout}{done.stderr}"
