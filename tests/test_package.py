"""What the image runs, without Docker: the wheel installed into a fresh virtual environment,
both entrypoints, and a worker with a pod's environment on loopback."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .support.required import unavailable

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the built wheel and only its runtime dependencies, and
    the extras the image installs (the operator's, Kafka's)."""
    work = tmp_path_factory.mktemp("package")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = (work / "dist").glob("millrace-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[operator,kafka]"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return env_dir / "bin"


def test_the_wheel_holds_both_entrypoints_and_no_dev_dependencies(installed):
    for command in ("millrace", "millrace-worker", "millrace-operator"):
        done = subprocess.run([str(installed / command), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout.lower()
    missing = subprocess.run(
        [str(installed / "python"), "-c", "import pytest"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0
    kafka = subprocess.run(
        [str(installed / "python"), "-c", "import millrace.runtime.kafka_client"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert kafka.returncode == 0, kafka.stderr


def test_the_wheel_prints_a_manifest(installed, tmp_path):
    """`millrace manifest` needs PyYAML at run time: a runtime dependency, not a dev one."""
    flow = tmp_path / "flow.py"
    flow.write_text("from millrace.dataflow import Dataflow\nflow = Dataflow()\n")
    done = subprocess.run(
        [str(installed / "millrace"), "manifest", str(flow), "--name", "flow"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("apiVersion: millrace.dev/v1alpha1\nkind: Dataflow\n")


def pod_env(installed: Path, flow: Path, secret: Path, state: Path, termination_log: Path) -> dict[str, str]:
    """What the operator's StatefulSet gives a worker (docs/pod-contract.md), for pod 0 of 1."""
    return {
        "PATH": f"{installed}:/usr/bin:/bin",
        "MILLRACE_POD_NAME": "sums-0",
        "MILLRACE_POD_INDEX": "0",
        "MILLRACE_NAMESPACE": "jobs",
        "MILLRACE_SERVICE": "sums",
        "MILLRACE_PROCESSES": "1",
        "MILLRACE_WORKERS_PER_PROCESS": "2",
        "MILLRACE_FLOW_FILE": str(flow),
        "MILLRACE_CLUSTER_SECRET_FILE": str(secret),
        "MILLRACE_STATE_DIR": str(state),
        "MILLRACE_TERMINATION_LOG": str(termination_log),
    }


def test_a_worker_with_a_pods_environment_runs_a_flow(installed, tmp_path):
    flow = tmp_path / "flow.py"
    flow.write_text(
        "from millrace.dataflow import Dataflow\n"
        "from millrace.inputs import TestingInputConfig\n"
        "from millrace.outputs import StdOutputConfig\n"
        "flow = Dataflow()\n"
        "flow.input('inp', TestingInputConfig([('a', 1), ('b', 2), ('a', 3)]))\n"
        "flow.reduce('sum', lambda x, y: x + y, lambda total: total >= 4)\n"
        "flow.capture(StdOutputConfig())\n"
    )
    secret = tmp_path / "key"
    secret.write_text("k3y")
    state = tmp_path / "state"
    state.mkdir()
    env = pod_env(installed, flow, secret, state, tmp_path / "termination-log")
    done = subprocess.run([str(installed / "millrace-worker")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["('a', 4)"]
    assert (tmp_path / "termination-log").read_text() == "millrace: completed"
    assert (state / "completed").exists()


def test_the_worker_and_operator_tools_run_on_a_read_only_root_filesystem(installed, tmp_path):
    """As in a pod with readOnlyRootFilesystem: everything read-only but the mounted volumes
    (here one tmpfs standing for /tmp, the state dir and the termination log)."""
    flow = tmp_path / "flow.py"
    flow.write_text(
        "from millrace.dataflow import Dataflow\n"
        "from millrace.inputs import TestingInputConfig\n"
        "from millrace.outputs import StdOutputConfig\n"
        "flow = Dataflow()\n"
        "flow.input('inp', TestingInputConfig(list(range(10))))\n"
        "flow.map(lambda n: ('sum', n))\n"
        "flow.reduce('sum', lambda x, y: x + y, lambda total: total == 45)\n"
        "flow.capture(StdOutputConfig())\n"
    )
    (tmp_path / "key").write_text("k3y")
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    env = pod_env(installed, flow, tmp_path / "key", volumes / "state", volumes / "termination-log")
    env["TMPDIR"] = str(volumes / "tmp")
    script = (
        'mount --bind / / && mount -o remount,bind,ro / && mount -t tmpfs tmpfs "$VOLUMES" '
        '&& mkdir "$VOLUMES/tmp" "$VOLUMES/state" '
        '&& ! touch "$ROOT_PROBE" 2>/dev/null '
        "&& millrace-operator --help >/dev/null && python -m millrace_operator.smoke --help >/dev/null "
        '&& millrace-worker && cat "$MILLRACE_TERMINATION_LOG"'
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        env={**env, "VOLUMES": str(volumes), "ROOT_PROBE": str(installed / "probe")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        unavailable(f"no mount namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["('sum', 45)", "millrace: completed"]
    assert not (installed / "probe").exists()
