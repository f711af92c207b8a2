"""millrace on a real cluster: the chart's operator runs Dataflows as pods of the built image.

Run with ``scripts/e2e`` (see README). Every test works in a namespace of its own.
"""

from __future__ import annotations

import ast
import json
import os
import threading
import time
from collections import Counter
from typing import Any

import pytest
import yaml

from . import audit
from .conftest import CLUSTER, IMAGE, OPERATOR_NAMESPACE, RELEASE, ROOT, run
from .flows import SLEEPING_FLOW

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
    run(
        "kubectl",
        "wait",
        "-n",
        namespace,
        f"dataflow/{name}",
        f"--for=condition={condition}",
        f"--timeout={timeout}s",
        timeout=timeout + 30,
    )


class Logs:
    """Every run of every container of a Dataflow's pods, read while they come and go.

    A run is read again until it has ended: once a container restarted, its previous run is
    read once more with ``--previous``, so lines printed just before the restart are not missed.
    A deleted pod's last lines since the last poll cannot be read by anyone."""

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.runs: dict[tuple[str, int], str] = {}
        self._ended: set[tuple[str, int]] = set()
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
                for earlier in range(restarts):
                    if (uid, earlier) not in self._ended:
                        previous = self._read(pod_name, "--previous") if earlier == restarts - 1 else ""
                        self.runs[(uid, earlier)] = previous or self.runs.get((uid, earlier), "")
                        self._ended.add((uid, earlier))
                if (uid, restarts) not in self._ended:
                    self.runs[(uid, restarts)] = self._read(pod_name) or self.runs.get((uid, restarts), "")
                    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                        self._ended.add((uid, restarts))
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

    def text(self) -> str:
        return "\n".join(self.runs.values())

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


def restarts(pod: dict[str, Any]) -> int:
    return sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses") or [])


def uids(namespace: str, name: str) -> set[str]:
    return {pod["metadata"]["uid"] for pod in pods(namespace, name)}


def wait_until(what: str, check: Any, timeout: float = 300, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return found


def wait_for_new_pods(namespace: str, name: str, old: set[str], count: int) -> None:
    """Until ``count`` pods run, none of them one of ``old``, and the cluster formed again."""

    def replaced() -> bool:
        now = pods(namespace, name)
        return len(now) == count and not {p["metadata"]["uid"] for p in now} & old

    wait_until(f"{count} new pods of {name}", replaced)
    wait_for(namespace, name, "Ready")


def no_crash_loop(namespace: str, name: str) -> None:
    """No container of the Dataflow restarted: peers that lost one of theirs formed the
    cluster again in place, and new pods never met old ones."""
    assert {p["metadata"]["name"]: restarts(p) for p in pods(namespace, name)} == {
        p["metadata"]["name"]: 0 for p in pods(namespace, name)
    }


def patch_spec(namespace: str, name: str, spec: dict[str, Any], check: bool = True) -> Any:
    return run(
        "kubectl",
        "patch",
        "dataflow",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": spec}),
        check=check,
    )


def container_env(namespace: str, name: str) -> dict[str, str]:
    pod = pods(namespace, name)[0]
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def kill_worker(namespace: str, pod_name: str) -> None:
    """SIGKILL the worker process of a pod, from the node (no signal from inside a container
    can kill its PID 1): containerd's ``ctr`` on this machine for k8slocal, in the node
    container for kind."""
    pod = kubectl_json("get", "pod", pod_name, "-n", namespace)
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    ctr = ["ctr", "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", container]
    if os.environ.get("K8SLOCAL"):
        socket_path = f"{os.environ['K8SLOCAL']}/run/containerd/containerd.sock"
        run(ctr[0], "--address", socket_path, *ctr[1:])
    else:
        run("docker", "exec", pod["spec"]["nodeName"], *ctr)


def test_the_charts_helm_test_passes(kind_cluster):
    done = run("helm", "test", RELEASE, "-n", OPERATOR_NAMESPACE, "--timeout", "5m", "--logs", timeout=400)
    assert "Phase:          Succeeded" in done.stdout, done.stdout


def test_a_batch_dataflow_succeeds_and_its_output_stays_readable(namespace):
    manifest = yaml.safe_load((ROOT / "examples" / "dataflow-batch.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    apply(manifest)
    wait_for(namespace, "wordcount", "Completed")
    status = kubectl_json("get", "dataflow", "wordcount", "-n", namespace)["status"]
    assert status["phase"] == "Succeeded"
    # The pods stay, Completed: they hold no CPU or memory, and their logs are there to read
    # the way README and NOTES.txt say.
    wait_until(
        "every pod to end",
        lambda: (
            found
            if len(found := [p for p in pods(namespace, "wordcount") if p["status"].get("phase") == "Succeeded"]) == 3
            else None
        ),
    )
    assert len(pods(namespace, "wordcount")) == 3
    logs = run(
        "kubectl", "logs", "-n", namespace, "-l", "millrace.dev/dataflow=wordcount", "--prefix", "--tail=-1"
    ).stdout
    items = [ast.literal_eval(line.split("] ", 1)[1]) for line in logs.splitlines() if "] (" in line]
    assert final_counts(items) == EXPECTED_COUNTS
    one = run("kubectl", "logs", "-n", namespace, "job/wordcount-0").stdout
    assert "the flow completed" in one


def test_a_streaming_dataflow_is_ready_only_while_its_cluster_is_formed(namespace):
    manifest = yaml.safe_load((ROOT / "examples" / "dataflow-streaming.yaml").read_text())
    manifest["metadata"]["namespace"] = namespace
    apply(manifest)
    wait_for(namespace, "clicks", "Ready")
    status = kubectl_json("get", "dataflow", "clicks", "-n", namespace)["status"]
    assert status["phase"] == "Running" and status["readyProcesses"] == 2
    # Only the Dataflow's own pods may reach its worker port.
    policy = kubectl_json("get", "networkpolicy", "clicks", "-n", namespace)
    assert policy["spec"]["podSelector"] == {"matchLabels": {"millrace.dev/dataflow": "clicks"}}
    # Without process 1, process 0 is alone, not in a cluster: neither it nor the Dataflow is
    # ready until the replacement has joined.
    before = uids(namespace, "clicks")
    run("kubectl", "delete", "pod", "-n", namespace, "-l", "millrace.dev/dataflow=clicks,millrace.dev/process=1")

    def process_0_unready() -> bool:
        zero = [p for p in pods(namespace, "clicks") if p["metadata"]["labels"]["millrace.dev/process"] == "0"]
        ready = [c["status"] for c in zero[0]["status"].get("conditions") or [] if c["type"] == "Ready"]
        return ready == ["False"]

    def dataflow_unready() -> bool:
        status = kubectl_json("get", "dataflow", "clicks", "-n", namespace)["status"]
        return [c["status"] for c in status["conditions"] if c["type"] == "Ready"] == ["False"]

    wait_until("process 0 to be unready", process_0_unready, every=0.3)
    wait_until("the Dataflow to be unready", dataflow_unready, every=0.3)
    survivor = before & uids(namespace, "clicks")
    wait_for_new_pods(namespace, "clicks", before - survivor, 2)
    assert survivor <= uids(namespace, "clicks")  # process 0 stayed, and formed the cluster again
    no_crash_loop(namespace, "clicks")


def test_rescaling_up_keeps_the_recovered_state_and_down_is_refused(namespace):
    apply(
        dataflow(
            "ticks",
            namespace,
            TICKING_FLOW,
            processes=2,
            epochSeconds=1,
            recovery={"enabled": True, "volumeSize": "64Mi"},
        )
    )
    with Logs(namespace, "ticks") as logs:
        wait_for(namespace, "ticks", "Ready")
        wait_until("counts of every key", lambda: set(final_counts(logs.items())) == {f"k{i}" for i in range(8)})
        before = uids(namespace, "ticks")
        counted_before = final_counts(logs.items())
        patch_spec(namespace, "ticks", {"processes": 3})
        wait_for_new_pods(namespace, "ticks", before, 3)
        after_runs = lambda: {key for key in logs.runs if key[0] not in before}  # noqa: E731
        wait_until("output of the grown cluster", lambda: len(logs.items(after_runs())) > 16)
    no_crash_loop(namespace, "ticks")
    counted_after = logs.items(after_runs())
    # No key starts over: the smallest count printed after the rescale continues the old one.
    for key in counted_before:
        resumed = [count for k, count in counted_after if k == key]
        assert resumed and min(resumed) > 1, (key, resumed[:5])
    # Fewer workers than wrote the recovery state: the API server refuses it, saying why.
    refused = patch_spec(namespace, "ticks", {"processes": 2}, check=False)
    assert refused.returncode != 0 and "cannot shrink" in refused.stderr, refused.stderr
    # More workers, but each process's would be another's: its volume holds its own workers'.
    refused = patch_spec(namespace, "ticks", {"workersPerProcess": 2}, check=False)
    assert refused.returncode != 0 and "workersPerProcess cannot change" in refused.stderr, refused.stderr
    spec = kubectl_json("get", "dataflow", "ticks", "-n", namespace)["spec"]
    assert (spec["processes"], spec["workersPerProcess"]) == (3, 1)


@pytest.mark.parametrize("how", ["delete-pod", "sigkill"])
def test_a_lost_process_is_survived_with_complete_output(namespace, how):
    """A pod deleted (SIGTERM: it stops at once, committing nothing for the unfinished epoch)
    or a worker killed (SIGKILL: the container restarts in place): the others form the cluster
    again with its replacement, resume from the recovery volumes, and the counts come out
    exact, with no crash loop."""
    apply(
        dataflow(
            "slowcount",
            namespace,
            SLOW_WORDCOUNT,
            processes=2,
            epochSeconds=1,
            recovery={"enabled": True, "volumeSize": "64Mi"},
        )
    )
    with Logs(namespace, "slowcount") as logs:
        wait_for(namespace, "slowcount", "Ready")
        time.sleep(3)  # a few epochs into the run (it prints only at its end)
        victim = next(p for p in pods(namespace, "slowcount") if p["metadata"]["labels"]["millrace.dev/process"] == "1")
        if how == "delete-pod":
            run("kubectl", "delete", "pod", victim["metadata"]["name"], "-n", namespace)  # the 30 s grace
        else:
            kill_worker(namespace, victim["metadata"]["name"])
        wait_for(namespace, "slowcount", "Completed", timeout=600)
    assert final_counts(logs.items()) == EXPECTED_COUNTS
    text = logs.text()
    if how == "delete-pod":
        # Process 1 stopped on SIGTERM and told its peer, which formed the cluster again.
        assert "process 1 was stopped (SIGTERM); forming the cluster again" in text, text[-3000:]
        no_crash_loop(namespace, "slowcount")
    else:
        assert "forming the cluster again" in text, text[-3000:]
        counts = {p["metadata"]["labels"]["millrace.dev/process"]: restarts(p) for p in pods(namespace, "slowcount")}
        assert counts == {"0": 0, "1": 1}  # the killed container, once; no loop


def test_a_flows_life_suspend_restart_and_a_new_template(namespace):
    """Suspend and resume keep the recovered state; restartNonce and a code change restart
    every pod together, and the flow goes on from its state."""
    apply(
        dataflow(
            "life",
            namespace,
            TICKING_FLOW,
            processes=2,
            epochSeconds=1,
            recovery={"enabled": True, "volumeSize": "64Mi"},
        )
    )
    with Logs(namespace, "life") as logs:
        wait_for(namespace, "life", "Ready")
        wait_until("some counts", lambda: len(final_counts(logs.items())) == 8)
        patch_spec(namespace, "life", {"suspend": True})
        wait_until("no pods while suspended", lambda: not pods(namespace, "life"))
        phase = kubectl_json("get", "dataflow", "life", "-n", namespace)["status"]["phase"]
        assert phase == "Suspended"
        counted = final_counts(logs.items())
        seen: set[str] = set()

        def fresh() -> set[tuple[str, int]]:
            """The runs of the pods that were not there at the last change."""
            return {key for key in logs.runs if key[0] not in seen}

        for change in (
            {"suspend": False},
            {"restartNonce": "one"},
            {"flow": {"code": TICKING_FLOW.replace("0.05", "0.04")}},
        ):
            seen |= {key[0] for key in logs.runs}
            before = uids(namespace, "life")
            patch_spec(namespace, "life", change)
            wait_for_new_pods(namespace, "life", before, 2)
            wait_until(f"output after {change}", lambda: len(logs.items(fresh())) >= 8)
            resumed = final_counts(logs.items(fresh()))
            # Every key went on from where it was, not from 1.
            assert all(min(c for k, c in logs.items(fresh()) if k == key) > counted[key] * 0.5 for key in counted), (
                resumed
            )
            no_crash_loop(namespace, "life")
            counted = final_counts(logs.items())


def test_removed_env_and_a_switch_to_a_module_leave_the_pods(namespace):
    apply(
        dataflow(
            "envs",
            namespace,
            TICKING_FLOW,
            processes=1,
            env=[{"name": "COLOUR", "value": "blue"}],
            resources={"limits": {"memory": "512Mi"}},
        )
    )
    wait_for(namespace, "envs", "Ready")
    assert container_env(namespace, "envs")["COLOUR"] == "blue"
    before = uids(namespace, "envs")
    # A JSON merge patch: env and resources as the user now wants them, the flow from a module.
    patch_spec(
        namespace,
        "envs",
        {"env": [], "resources": None, "flow": {"code": None, "module": "millrace_operator.smoke:flow"}},
    )
    # The module's flow is finite: it ends Completed, its pod kept for a look.
    wait_for(namespace, "envs", "Completed")
    pod = pods(namespace, "envs")[0]
    assert pod["metadata"]["uid"] not in before
    env = container_env(namespace, "envs")
    assert "COLOUR" not in env and "MILLRACE_FLOW_FILE" not in env
    assert env["MILLRACE_FLOW"] == "millrace_operator.smoke:flow"
    assert "resources" not in pod["spec"]["containers"][0] or not pod["spec"]["containers"][0]["resources"]
    assert "flow" not in {v["name"] for v in pod["spec"]["volumes"]}
    gone = run("kubectl", "get", "configmap", "envs-flow", "-n", namespace, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_a_flow_that_cannot_load_fails_with_the_import_error(namespace):
    apply(dataflow("broken", namespace, "import no_such_module_anywhere\n", processes=2))
    wait_for(namespace, "broken", "Failed")
    status = kubectl_json("get", "dataflow", "broken", "-n", namespace)["status"]
    assert status["phase"] == "Failed"
    assert "No module named 'no_such_module_anywhere'" in status["message"], status
    wait_until(
        "the failed flow's pods to go",
        lambda: not [p for p in pods(namespace, "broken") if p["status"].get("phase") in ("Pending", "Running")],
    )


INVALID = [
    ({"processes": 0}, "spec.processes"),
    ({"flow": {"code": "x", "module": "a:b"}}, "exactly one of code and module"),
    ({"flow": {"module": "not a module path"}}, "spec.flow.module"),
    ({"env": [{"name": "MILLRACE_FLOW", "value": "x"}]}, "reserved for the operator"),
    ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy"),
    ({"recovery": {"enabled": True, "volumeSize": "lots"}}, "spec.recovery.volumeSize"),
    ({"epochSeconds": 0}, "spec.epochSeconds"),
]


def test_the_api_server_refuses_invalid_dataflows_naming_the_field(namespace):
    for change, named in INVALID:
        manifest = dataflow("invalid", namespace, "flow = None")
        manifest["spec"].update(change)
        if "flow" in change:
            manifest["spec"]["flow"] = change["flow"]
        done = run("kubectl", "create", "-f", "-", input=yaml.safe_dump(manifest), check=False)
        assert done.returncode != 0, (change, done.stdout)
        assert named in done.stderr, (change, done.stderr)
    assert not kubectl_json("get", "dataflows", "-n", namespace)["items"]


def helm_upgrade(setting: str) -> None:
    """Upgrade the chart's release in place, with one value changed."""
    run(
        "helm",
        "upgrade",
        RELEASE,
        str(ROOT / "charts" / "millrace"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--reuse-values",
        "--set",
        setting,
        "--wait",
        "--timeout",
        "5m",
        timeout=400,
    )


def test_the_operator_restarted_or_upgraded_never_restarts_a_flow(namespace):
    apply(dataflow("steady", namespace, TICKING_FLOW, processes=2))
    wait_for(namespace, "steady", "Ready")
    before = uids(namespace, "steady")
    run(
        "kubectl",
        "delete",
        "pod",
        "-n",
        OPERATOR_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=millrace-operator",
        "--wait=true",
    )
    run(
        "kubectl", "rollout", "status", "-n", OPERATOR_NAMESPACE, f"deployment/{RELEASE}", "--timeout=180s", timeout=240
    )
    helm_upgrade("operator.verbose=true")
    time.sleep(25)  # two of the new operator's timer periods: a restart, if any, would have begun
    assert uids(namespace, "steady") == before
    no_crash_loop(namespace, "steady")
    # The new operator took over: a change of the spec reaches the pods.
    patch_spec(namespace, "steady", {"epochSeconds": 5})
    wait_for_new_pods(namespace, "steady", before, 2)
    assert container_env(namespace, "steady")["MILLRACE_EPOCH_SECONDS"] == "5"


def job_uids(namespace: str, name: str) -> set[str]:
    jobs = kubectl_json("get", "jobs", "-n", namespace, "-l", f"millrace.dev/dataflow={name}")["items"]
    return {job["metadata"]["uid"] for job in jobs}


def worker_images(namespace: str, name: str) -> set[str]:
    return {pod["spec"]["containers"][0]["image"] for pod in pods(namespace, name)}


def test_an_upgrade_to_another_worker_image_moves_running_flows_and_leaves_finished_ones(namespace):
    """Flows that name no image run the operator's (the chart passes its own): an upgrade to
    another image restarts a running flow on it, and leaves a finished batch flow as it ended,
    not run again (its output would be written twice), also one whose completed pods are gone
    (its Jobs say which image it ran)."""
    batch = yaml.safe_load((ROOT / "examples" / "dataflow-batch.yaml").read_text())
    batch["metadata"]["namespace"] = namespace
    apply(batch)
    pruned = {**batch, "metadata": {"name": "pruned", "namespace": namespace}}
    pruned["spec"] = {**batch["spec"], "processes": 1}
    apply(pruned)
    apply(dataflow("steady", namespace, TICKING_FLOW, processes=1))
    wait_for(namespace, "wordcount", "Completed")
    wait_for(namespace, "pruned", "Completed")
    wait_for(namespace, "steady", "Ready")
    finished, running = uids(namespace, "wordcount"), uids(namespace, "steady")
    run("kubectl", "delete", "pods", "-n", namespace, "-l", "millrace.dev/dataflow=pruned", "--wait=true", timeout=120)
    pruned_jobs = job_uids(namespace, "pruned")
    # The same image under another tag: what an upgrade of the chart brings.
    run("docker", "tag", IMAGE, "millrace:e2e-next")
    run("kind", "load", "docker-image", "millrace:e2e-next", "--name", CLUSTER, timeout=900)
    try:
        helm_upgrade("image.tag=e2e-next")
        wait_for_new_pods(namespace, "steady", running, 1)
        assert worker_images(namespace, "steady") == {"millrace:e2e-next"}
        time.sleep(15)  # a restart of the finished flow, if any, would have begun
        status = kubectl_json("get", "dataflow", "wordcount", "-n", namespace)["status"]
        assert status["phase"] == "Succeeded", status
        assert uids(namespace, "wordcount") == finished
        assert worker_images(namespace, "wordcount") == {IMAGE}
        status = kubectl_json("get", "dataflow", "pruned", "-n", namespace)["status"]
        assert status["phase"] == "Succeeded", status
        assert job_uids(namespace, "pruned") == pruned_jobs and not pods(namespace, "pruned")
    finally:
        helm_upgrade("image.tag=e2e")


def test_deleting_the_dataflow_removes_every_child(namespace):
    apply(dataflow("doomed", namespace, TICKING_FLOW, processes=2, recovery={"enabled": True, "volumeSize": "64Mi"}))
    wait_for(namespace, "doomed", "Ready")
    selector = "millrace.dev/dataflow=doomed"
    kinds = "jobs,services,configmaps,secrets,networkpolicies,pods,persistentvolumeclaims"
    assert run("kubectl", "get", kinds, "-n", namespace, "-l", selector, "-o", "name").stdout.strip()
    run("kubectl", "delete", "dataflow", "doomed", "-n", namespace, "--wait=true", "--timeout=120s", timeout=180)
    deadline = time.monotonic() + 180
    while left := run("kubectl", "get", kinds, "-n", namespace, "-l", selector, "-o", "name").stdout.strip():
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(2)


IDLE = 3  # Dataflows left alone while the operator's requests are counted


def get_df(namespace: str) -> dict[str, tuple[str, str, str]]:
    """``kubectl get df`` as a user reads it: name -> (phase, processes, ready)."""
    lines = run("kubectl", "get", "df", "-n", namespace, "--no-headers").stdout.splitlines()
    return {line.split()[0]: tuple(line.split()[1:4]) for line in lines}  # type: ignore[misc]


def test_idle_dataflows_cost_the_api_server_no_write_and_at_most_a_read_a_minute(namespace):
    """The request budget, counted on the API server's side (k8slocal's audit log) for the
    operator's service account: over a minute, Running Dataflows that nothing changes cost no
    write and at most one read each."""
    log = audit.audit_log()
    assert log.exists(), f"the request budget is counted in the API server's audit log, and {log} does not exist"
    for i in range(IDLE):
        apply(dataflow(f"idle-{i}", namespace, SLEEPING_FLOW, processes=1))
    for i in range(IDLE):
        wait_for(namespace, f"idle-{i}", "Ready")
    user = audit.operator_user(OPERATOR_NAMESPACE, RELEASE)

    def quiet() -> bool:
        """No write by the operator in the last 10 s: the last statuses and events are out."""
        offset, since = audit.log_size(), time.time()
        time.sleep(10)
        return audit.requests_since(offset, user, since).writes == 0

    wait_until("the operator to be done with the new Dataflows", quiet, timeout=120, every=0)
    offset, since = audit.log_size(), time.time()
    time.sleep(60)
    counts = audit.requests_since(offset, user, since, since + 60)
    assert counts.writes == 0, f"writes of idle Dataflows:\n{counts.table()}"
    assert counts.reads <= IDLE, f"more than {IDLE} reads in a minute:\n{counts.table()}"
    # And the status stayed right all along.
    assert get_df(namespace) == {f"idle-{i}": ("Running", "1", "1") for i in range(IDLE)}
    assert uids(namespace, "idle-0") and all(restarts(p) == 0 for p in pods(namespace, "idle-0"))


def test_zz_helm_uninstall_removes_the_operator_and_keeps_the_crd(kind_cluster):
    """Last: after it, the operator is gone (the session's other tests are done)."""
    run("helm", "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "3m", timeout=240)
    left = run(
        "kubectl",
        "get",
        "deployments,serviceaccounts,clusterroles,clusterrolebindings",
        "-A",
        "-l",
        "app.kubernetes.io/instance=millrace",
        "-o",
        "name",
    ).stdout.strip()
    assert not left, left
    # Helm never deletes a CRD (it would delete every Dataflow with it).
    run("kubectl", "get", "crd", "dataflows.millrace.dev")
