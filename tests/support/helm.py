"""The chart, rendered by the real helm binary (scripts/k8s-tools installs it into the venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .required import unavailable

CHART = Path(__file__).resolve().parents[2] / "charts" / "millrace"


def helm_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "helm"
    return str(beside_python) if beside_python.exists() else shutil.which("helm")


def require_helm() -> str:
    """The helm binary; without one the test is skipped, unless the suite is told tools are
    required (scripts/test installs them and sets MILLRACE_REQUIRE_TOOLS=1, so CI never skips)."""
    found = helm_binary()
    if found is None:
        unavailable("helm not found: scripts/k8s-tools installs it into the venv")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([require_helm(), *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def render(
    values: dict[str, Any] | None = None,
    *,
    release: str = "millrace",
    namespace: str = "millrace-system",
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values``: every manifest it would apply, CRDs included."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        done = helm(
            "template", release, str(CHART), "--namespace", namespace, "--include-crds", "--values", file.name, *extra
        )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
