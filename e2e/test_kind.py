"""millrace on a real cluster: the chart's operator runs Dataflows as pods of the built image.

Run with ``scripts/e2e`` (see README). Every test works in a namespace of its own.
"""

from __future__ import annotations

import ast
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import yaml

from .conftest import OPERATOR_NAMESPACE, RELEASE, ROOT, run

pytestmark = pytest.mark.timeout(900)

TEXT = "the river turns the wheel and the wheel turns the stones " * 50
EXPECTED_COUNTS = dict(Counter(TEXT.split()))

# Counts ticks per key; worker 0 reads the ticks, so its resume state does not depend on the
# worker count and a grown cluster goes on where the smaller one stopped.
TICKING_FLOW = """\
import time
from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import StdOutputConfig

def ticks(worker_index, worker_count, resume_state):
    if worker_index != 0:
        return
    tick = resume_state or 0
    next_at = time.monotonic()
    while True:
        if time.monotonic() < next_at:
            yield None
            continue
        next_at += 0.05
        tick += 1
        yield tick, (f"k{tick % 8}", 1)

flow = Dataflow()
flow.input("ticks", ManualInputConfig(ticks))
flow.stateful_map("count", lambda: 0, lambda seen, one: (seen + one, seen + one))
flow.capture(StdOutputConfig())
"""

# The batch word count, slowed down so that a pod can be deleted while it runs.
SLOW_WORDCOUNT = f"""\
import time
from datetime import timedelta
from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import StdOutputConfig
from millrace.window import SystemClockConfig, TumblingWindowConfig

WORDS = {TEXT!r}.split()

def words(worker_index, worker_count, resume_state):
    for i in range(resume_state or 0, len(WORDS)):
        if i % worker_count == worker_index:
            time.sleep(0.05)
            yield i + 1, WORDS[i]

flow = Dataflow()
flow.input("words", ManualInputConfig(words))
flow.map(lambda word: (word, 1))
flow.reduce_window("count", SystemClockConfig(), TumblingWindowConfig(timedelta(hours=1)),
                   lambda total, one: total + one)
flow.capture(StdOutputConfig())
"""


def dataflow(name: str, namespace: str, code: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"flow": {"code": code}, **spec},
    }


def apply(manifest: dict[str, Any]) -> None:
    run("kubectl", "apply", "-f", "-", input=yaml.safe_dump(manifest))


def kubectl_json(*args: str) -> dict[str, Any]:
    return json.loads(run("kubectl", *args, "-o", "json").stdout)


def pods(namespace: str, name: str) -> list[dict[str, Any]]:
    return kubectl_json("get", "pods", "-n", namespace, "-l", f"millrace.dev/dataflow={name}")["items"]


def wait_for(namespace: str, name: str, condition: str, timeout: int = 300) -> None:
    run("kubectl", "wait", "-n", namespace, f"dataflow/{name}", f"--for=condition={condition}",
        f"--timeout={timeout}s", timeout=timeout + 30)


class Logs:
    """Every run of every container of a Dataflow's pods, read while they come and go (a
    finished pod is scaled away, so its output must be read before that)."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.runs: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _read(self, pod: str, *flags: str) -> str:
        return run("kubectl", "logs", "-n", self.namespace, pod, "-c", "worker", *flags, check=False, timeout=60).stdout

    def _poll_once(self) -> None:
        try:
            for pod in pods(self.namespace, self.name):
                uid, pod_name = pod["metadata"]["uid"], pod["metadata"]["name"]
                statuses = pod.get("status", {}).get("containerStatuses") or []
                restarts = statuses[0]["restartCount"] if statuses else 0
                self.runs[(uid, restarts)] = self._read(pod_name) or self.runs.get((uid, restarts), "")
                if restarts and (uid, restarts - 1) not in self.runs:
                    self.runs[(uid, restarts - 1)] = self._read(pod_name, "--previous")
        except AssertionError:
            pass  # a pod went away between listing and reading

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._poll_once()
            self._stop.wait(1.0)

    def items(self, runs: set[tuple[str, int]] | None = None) -> list[Any]:
        found = []
        for key, text in list(self.runs.items()):
            if runs is not None and key not in runs:
                continue
            for line in text.splitlines():
                if line.startswith("("):
                    found.append(ast.literal_eval(line))
        return found

    def __enter__(self) -> Logs:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._poll_once()


def final_counts(items: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for word, count in items:
        counts[word] = max(counts.get(word, 0), count)
    return counts


def test_the_charts_helm_test_passes(kind_cluster):
    done = run("helm", "test", RELEASE, "-n", OPERATOR_NAMESPACE, "--timeout", "5m", "--logs", timeout=400)
    assert "Phase:          Succeeded" in done.stdout, done.stdout


def test_a_batch_dataflow_succeeds_with_the_right_output(namespace):
    manifest = yaml.safe_load((ROOT / "examples" / "dataflow-batch.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    with Logs(namespace, "wordcount") as logs:
        apply(manifest)
        wait_for(namespace, "wordcount", "Completed")
    status = kubectl_json("get", "dataflow", "wordcount", "-n", namespace)["status"]
    assert status["phase"] == "Succeeded"
    assert final_counts(logs.items()) == EXPECTED_COUNTS


def test_a_streaming_dataflow_becomes_ready(namespace):
    manifest = yaml.safe_load((ROOT / "examples" / "dataflow-streaming.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    apply(manifest)
    wait_for(namespace, "clicks", "Ready")
    status = kubectl_json("get", "dataflow", "clicks", "-n", namespace)["status"]
    assert status["phase"] == "Running" and status["readyProcesses"] == 2
    # Only the Dataflow's own pods may reach its worker port.
    policy = kubectl_json("get", "networkpolicy", "clicks", "-n", namespace)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"millrace.dev/dataflow": "clicks"}}


def test_rescaling_restarts_every_pod_and_keeps_the_recovered_state(namespace):
    apply(dataflow("ticks", namespace, TICKING_FLOW, processes=2, epochSeconds=1,
                   recovery={"enabled": True, "volumeSize": "64Mi"}))
    with Logs(namespace, "ticks") as logs:
        wait_for(namespace, "ticks", "Ready")
        time.sleep(15)
        before = {pod["metadata"]["uid"] for pod in pods(namespace, "ticks")}
        counted_before = final_counts(logs.items())
        assert set(counted_before) == {f"k{i}" for i in range(8)}
        run("kubectl", "patch", "dataflow", "ticks", "-n", namespace, "--type=merge", "-p", '{"spec":{"processes":3}}')
        deadline = time.monotonic() + 300
        while True:
            now = pods(namespace, "ticks")
            uids = {pod["metadata"]["uid"] for pod in now}
            if len(now) == 3 and not uids & before:
                break
            assert time.monotonic() < deadline, f"pods after rescale: {[p['metadata']['name'] for p in now]}"
            time.sleep(2)
        wait_for(namespace, "ticks", "Ready")
        time.sleep(15)
    after_runs = {key for key in logs.runs if key[0] not in before}
    counted_after = logs.items(after_runs)
    assert counted_after, "the grown cluster printed nothing"
    # No key starts over: the smallest count printed after the rescale continues the old one.
    for key in counted_before:
        resumed = [count for k, count in counted_after if k == key]
        assert resumed and min(resumed) > 1, (key, resumed[:5])
        assert max(resumed) > counted_before[key]


def test_a_deleted_pod_is_survived_with_complete_output(namespace):
    apply(dataflow("slowcount", namespace, SLOW_WORDCOUNT, processes=2, epochSeconds=1,
                   recovery={"enabled": True, "volumeSize": "64Mi"}))
    with Logs(namespace, "slowcount") as logs:
        wait_for(namespace, "slowcount", "Ready")
        time.sleep(3)
        run("kubectl", "delete", "pod", "slowcount-1", "-n", namespace, "--wait=false")
        wait_for(namespace, "slowcount", "Completed", timeout=600)
    assert final_counts(logs.items()) == EXPECTED_COUNTS


def test_deleting_the_dataflow_removes_every_child(namespace):
    apply(dataflow("doomed", namespace, TICKING_FLOW, processes=2,
                   recovery={"enabled": True, "volumeSize": "64Mi"}))
    wait_for(namespace, "doomed", "Ready")
    selector = "millrace.dev/dataflow=doomed"
    kinds = "statefulsets,services,configmaps,secrets,networkpolicies,pods,persistentvolumeclaims"
    assert run("kubectl", "get", kinds, "-n", namespace, "-l", selector, "-o", "name").stdout.strip()
    run("kubectl", "delete", "dataflow", "doomed", "-n", namespace, "--wait=true", "--timeout=120s", timeout=180)
    deadline = time.monotonic() + 180
    while left := run("kubectl", "get", kinds, "-n", namespace, "-l", selector, "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(2)
