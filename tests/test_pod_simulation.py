"""Tier 3: the pods of a Dataflow's generated Jobs run as local processes, each on its own
simulated host, so manifest -> env -> proc_id -> addresses -> cluster -> output runs for real."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import threading
import time

import pytest

from millrace_operator import manifests

from .support import podsim
from .support.required import unavailable

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _pods_can_be_simulated() -> None:
    """Network namespaces (root, ``ip``, ``unshare``): skipped without them, a failure where the
    suite requires them (scripts/test, so CI never skips these silently)."""
    reason = podsim.available()
    if reason is not None:
        unavailable(reason)


FLOW = """
import time
from datetime import timedelta

from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualEpochOutputConfig

COUNT = {count}

def numbers(worker_index, worker_count, resume_state):
    start = resume_state or 0
    for i in range(start, COUNT):
        time.sleep({delay})
        yield i + 1, (f"{{worker_index}}-{{i % 4}}", i)

def output(worker_index, worker_count):
    return lambda epoch_item: print(repr(epoch_item), flush=True)

flow = Dataflow()
flow.input("numbers", ManualInputConfig(numbers))
flow.stateful_map("sums", lambda: 0, lambda total, i: (total + i, total + i))
flow.capture(ManualEpochOutputConfig(output))
"""


def dataflow(count: int, delay: float, recovery: bool) -> dict:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": "sums", "namespace": "jobs", "uid": "u-1", "generation": 1},
        "spec": {
            "processes": 3,
            "workersPerProcess": 1,
            "epochSeconds": 0.2,
            "recovery": {"enabled": recovery},
            "flow": {"code": FLOW.format(count=count, delay=delay)},
        },
    }


def expected(count: int) -> set[tuple[str, int]]:
    out = set()
    for worker in range(3):
        sums: dict[str, int] = {}
        for i in range(count):
            key = f"{worker}-{i % 4}"
            sums[key] = sums.get(key, 0) + i
            out.add((key, sums[key]))
    return out


def outputs(text: str) -> list[tuple[int, tuple[str, int]]]:
    return [ast.literal_eval(line) for line in text.splitlines() if line.startswith("(")]


def simulation(df: dict, tmp_path) -> podsim.PodSimulation:
    children = manifests.children(df, "the-cluster-key")
    return podsim.PodSimulation(manifests.jobs(df, suspend=False), children, tmp_path)


def test_the_pods_form_a_cluster_and_complete(tmp_path):
    df = dataflow(count=40, delay=0.0, recovery=False)
    with simulation(df, tmp_path) as sim:
        assert [(pod.hostname, pod.subdomain) for pod in sim.pods] == [(f"sums-{i}", "sums") for i in range(3)]
        procs = [sim.start(i) for i in range(3)]
        results = [proc.communicate(timeout=120) for proc in procs]
        for proc, (_, stderr) in zip(procs, results, strict=True):
            assert proc.returncode == 0, stderr
        got = [item for stdout, _ in results for _, item in outputs(stdout)]
        assert sorted(got) == sorted(expected(40))
        assert "process 1 of 3" in results[1][1]
        assert all(sim.termination_message(i) == "millrace: completed" for i in range(3))
        # A container restarted after completion reports it again and runs nothing.
        again = sim.start(0)
        stdout, stderr = again.communicate(timeout=60)
        assert again.returncode == 0 and outputs(stdout) == []
        assert "already completed" in stderr


def test_a_killed_pod_restarted_as_a_kubelet_would_loses_nothing(tmp_path):
    df = dataflow(count=300, delay=0.02, recovery=True)
    with simulation(df, tmp_path) as sim:
        first = [sim.start(i) for i in range(3)]
        # Ready (the readinessProbe passes) once in a formed cluster.
        sim.wait_ready([0, 1, 2], timeout=60)
        assert all(proc.poll() is None for proc in first), [
            p.communicate()[1][-2000:] for p in first if p.poll() is not None
        ]
        first[1].send_signal(signal.SIGKILL)
        killed = first[1].communicate(timeout=60)
        assert first[1].returncode != 0
        # The kubelet restarts the crashed container (restartPolicy OnFailure); the other
        # processes form the cluster again with it. The recovery volumes persist.
        again = sim.start(1)
        procs = [first[0], again, first[2]]
        reruns = [proc.communicate(timeout=120) for proc in procs]
        for proc, (_, stderr) in zip(procs, reruns, strict=True):
            assert proc.returncode == 0, stderr
        assert "forming the cluster again" in reruns[0][1]
        runs = [killed]
        got = {item for stdout, _ in runs + reruns for _, item in outputs(stdout)}
        assert got == expected(300)


def test_the_batch_example_runs_as_pods(tmp_path):
    import collections
    from pathlib import Path

    import yaml

    example = Path(__file__).resolve().parents[1] / "examples" / "dataflow-batch.yaml"
    df = yaml.safe_load(example.read_text())
    df["metadata"].update(namespace="default", uid="u-batch", generation=1)
    with simulation(df, tmp_path) as sim:
        procs = [sim.start(i) for i in range(len(sim.pods))]
        results = [proc.communicate(timeout=120) for proc in procs]
        for proc, (_, stderr) in zip(procs, results, strict=True):
            assert proc.returncode == 0, stderr
    counts = dict(
        ast.literal_eval(line) for stdout, _ in results for line in stdout.splitlines() if line.startswith("(")
    )
    text = "the river turns the wheel and the wheel turns the stones " * 50
    assert counts == dict(collections.Counter(text.split()))


TICKS = """
import time

from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualEpochOutputConfig

def ticks(worker_index, worker_count, resume_state):
    if worker_index != 0:
        return  # one reader: its state means the same on any number of workers
    for tick in range(resume_state or 0, {count}):
        time.sleep({delay})
        yield tick + 1, (f"k{{tick % 6}}", 1)

def output(worker_index, worker_count):
    return lambda epoch_item: print(repr(epoch_item), flush=True)

flow = Dataflow()
flow.input("ticks", ManualInputConfig(ticks))
flow.stateful_map("count", lambda: 0, lambda seen, one: (seen + one, seen + one))
flow.capture(ManualEpochOutputConfig(output))
"""


def _every_key_snapshotted(printed: list[tuple[int, tuple[str, int]]], keys: int) -> bool:
    """Every key has counted, and the cluster has since gone two epochs on. No worker reads
    epoch e + 1 before every worker has ended (and snapshotted) epoch e, so by then each
    key's count is in the stores."""
    first: dict[str, int] = {}
    for epoch, (key, _) in printed:
        first[key] = min(epoch, first.get(key, epoch))
    return len(first) == keys and max(epoch for epoch, _ in printed) >= max(first.values()) + 2


def _stdout_lines(procs: list[subprocess.Popen[str]]) -> tuple[list[str], list[threading.Thread]]:
    """The lines ``procs`` print, read on threads as they come, so a test can wait for what
    it needs to see; the threads end when the processes' stdout closes."""
    lines: list[str] = []

    def read(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threads = [threading.Thread(target=read, args=(proc,), daemon=True) for proc in procs]
    for thread in threads:
        thread.start()
    return lines, threads


def test_rescaling_2_to_3_pods_keeps_every_keys_count(tmp_path):
    count = 240
    df = dataflow(count, 0.0, recovery=True)
    df["spec"].update(processes=2, flow={"code": TICKS.format(count=count, delay=0.05)})
    with simulation(df, tmp_path) as sim:
        first = [sim.start(i) for i in range(2)]
        # Stop the first cluster once every key's count is in the stores (not after a guess
        # at how long that takes), well before the input's 12 s are over.
        lines, readers = _stdout_lines(first)
        deadline = time.monotonic() + 60
        while not _every_key_snapshotted(outputs("".join(lines)), keys=6):
            assert all(proc.poll() is None for proc in first), "the first cluster ended early"
            assert time.monotonic() < deadline, ("no progress within 60 s", lines[-20:])
            time.sleep(0.05)
        for proc in first:  # the operator deletes every pod of the old template
            os.killpg(proc.pid, signal.SIGKILL)
        for reader in readers:
            reader.join(30)
        ended = [proc.communicate(timeout=30) for proc in first]
        before = [item for _, item in outputs("".join(lines))]
    assert before, ("the first cluster printed nothing before it was stopped", [err[-3000:] for _, err in ended])
    df["spec"]["processes"] = 3
    # New pods: processes 0 and 1 mount their recovery claims again; process 2's claim is new.
    with simulation(df, tmp_path) as sim:
        second = [sim.start(i) for i in range(3)]
        runs = [proc.communicate(timeout=120) for proc in second]
        for proc, (_, stderr) in zip(second, runs, strict=True):
            assert proc.returncode == 0, stderr
    after = [item for stdout, _ in runs for _, item in outputs(stdout)]
    expected_counts = {(f"k{k}", n) for k in range(6) for n in range(1, count // 6 + 1)}
    assert set(before) | set(after) == expected_counts
    # No key started over on the grown cluster: its counts go on from the recovered state.
    last_before = {}
    for key, n in before:
        last_before[key] = max(last_before.get(key, 0), n)
    for key, n in after:
        assert key not in last_before or n > 1, f"{key} restarted at {n}"
