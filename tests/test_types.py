"""The engine's and the operator's type hints hold: mypy, strict, over both packages finds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_mypy_strict_finds_no_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    # --strict as well as the configuration's `strict = true`: a configuration that lost it
    # would still be held to every check here.
    args = ["--config-file", str(ROOT / "pyproject.toml"), "--strict", "--cache-dir", str(tmp_path)]
    out, err, status = api.run(args)
    assert status == 0, out + err
