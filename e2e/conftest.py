"""The e2e suite's cluster: kind, the image built from this checkout, the chart installed.

Needs docker (with a running engine), kind, helm and kubectl; where one is missing every test
is skipped with a message naming what is missing, except under ``MILLRACE_REQUIRE_TOOLS=1`` or
``CI=true``, where that is an error. Environment:

- ``MILLRACE_E2E_CLUSTER``: kind cluster name (default ``millrace-e2e``); an existing cluster
  of that name is reused and left alone, a new one is deleted at the end
- ``MILLRACE_E2E_KEEP=1``: keep a cluster this suite created, for a look around afterwards
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "millrace:e2e"
CLUSTER = os.environ.get("MILLRACE_E2E_CLUSTER", "millrace-e2e")
RELEASE, OPERATOR_NAMESPACE = "millrace", "millrace-system"


def _tool(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name  # scripts/k8s-tools puts helm and kubectl here
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def _missing() -> list[str]:
    missing = [name for name in ("docker", "kind", "helm", "kubectl") if _tool(name) is None]
    if "docker" not in missing:
        engine = subprocess.run([_tool("docker"), "info"], capture_output=True, text=True)  # type: ignore[list-item]
        if engine.returncode != 0:
            missing.append("a running Docker engine (docker info failed)")
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _missing()
    required = os.environ.get("MILLRACE_REQUIRE_TOOLS") == "1" or os.environ.get("CI") == "true"
    for item in items:
        item.add_marker(pytest.mark.e2e)
        if missing and not required:
            item.add_marker(pytest.mark.skip(reason=f"e2e needs {', '.join(missing)}"))
    if missing and required:
        # In CI nothing is skipped: a suite that cannot run is a failure, saying why.
        raise pytest.UsageError(f"e2e needs {', '.join(missing)} (MILLRACE_REQUIRE_TOOLS=1 or CI: no skipping)")


def run(
    *args: str, timeout: float = 600, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    tool = _tool(args[0]) or args[0]
    done = subprocess.run([tool, *args[1:]], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def kind_cluster() -> Iterator[str]:
    """A kind cluster with the image loaded and the chart installed; yields its kubeconfig."""
    name = CLUSTER
    existing = run("kind", "get", "clusters").stdout.split()
    created = name not in existing
    if created:
        run("kind", "create", "cluster", "--name", name, "--wait", "180s", timeout=900)
    kubeconfig = str(ROOT / ".e2e" / f"{name}.kubeconfig")
    Path(kubeconfig).parent.mkdir(exist_ok=True)
    Path(kubeconfig).write_text(run("kind", "get", "kubeconfig", "--name", name).stdout)
    os.environ["KUBECONFIG"] = kubeconfig
    try:
        run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
        run("kind", "load", "docker-image", IMAGE, "--name", name, timeout=900)
        run(
            "helm",
            "upgrade",
            "--install",
            RELEASE,
            str(ROOT / "charts" / "millrace"),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            "image.repository=millrace",
            "--set",
            "image.tag=e2e",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "5m",
            timeout=600,
        )
        yield kubeconfig
    finally:
        if created and os.environ.get("MILLRACE_E2E_KEEP") != "1":
            run("kind", "delete", "cluster", "--name", name, timeout=600, check=False)


@pytest.fixture
def namespace(kind_cluster: str) -> Iterator[str]:
    """A namespace of its own for each test, deleted (with everything in it) afterwards."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    run("kubectl", "create", "namespace", name)
    try:
        yield name
    finally:
        run("kubectl", "delete", "namespace", name, "--wait=true", "--timeout=180s", check=False, timeout=240)
