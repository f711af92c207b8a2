"""The operator at scale, on the real cluster (k8slocal): what many Dataflows cost it and the
API server, and what a failover costs them.

Needs the chart installed (release ``millrace`` in ``millrace-system``, as ``scripts/e2e``
leaves it, or ``helm upgrade --install``) and k8slocal's audit log. Subcommands:

- ``idle N``: N sleeping Dataflows; once all Running, the operator's requests over a minute
  (``--batch``: flows that end at once; once all Succeeded).
- ``scale N``: N Dataflows (1 process, a flow that sleeps) applied at once: time from apply to
  Running (median, worst), the operator's CPU and peak memory, its requests per minute while
  idle, how long a spec change to one takes to reach its pod, and that deleting them all
  leaves nothing behind.
- ``failover N``: with the chart at ``operator.replicas=2``, N Dataflows Running: kill the
  active operator (SIGKILL of its container, or ``kubectl delete pod``), measure until the
  standby took over (a spec change reaches its pod), and that no flow's pod restarted.

Results as one JSON line on stdout (and progress on stderr); benchmarks/RESULTS.md has them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2e.audit import log_size, operator_user, requests_since  # noqa: E402
from e2e.flows import SLEEPING_FLOW  # noqa: E402

RELEASE, OPERATOR_NAMESPACE = "millrace", "millrace-system"
USER = operator_user(OPERATOR_NAMESPACE, RELEASE)


# A flow that ends at once: its Dataflow is Succeeded, its pod Completed (holding no node's pod slot).
BATCH_FLOW = """\
from millrace.dataflow import Dataflow
from millrace.inputs import TestingInputConfig
from millrace.outputs import StdOutputConfig

flow = Dataflow()
flow.input("one", TestingInputConfig([1]))
flow.capture(StdOutputConfig())
"""


def say(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 600) -> str:
    tool = ROOT / ".venv" / "bin" / "kubectl"
    done = subprocess.run(
        [str(tool) if tool.exists() else "kubectl", *args], capture_output=True, text=True, input=input, timeout=timeout
    )
    if check and done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr}")
    return done.stdout


def dataflow(namespace: str, name: str, code: str = SLEEPING_FLOW, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "processes": 1,
            "flow": {"code": code},
            "resources": {"requests": {"cpu": "1m", "memory": "32Mi"}},
            **spec,
        },
    }


def create(namespace: str, count: int, code: str = SLEEPING_FLOW) -> float:
    kubectl("create", "namespace", namespace)
    docs = [dataflow(namespace, f"nap-{i:03d}", code) for i in range(count)]
    started = time.time()
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return started


def dataflows(namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl("get", "dataflows", "-n", namespace, "-o", "json"))["items"]
    return items


def running_times(namespace: str, count: int, timeout: float, phase: str = "Running") -> dict[str, float]:
    """When each Dataflow was first seen in ``phase`` (polled, once a second)."""
    seen: dict[str, float] = {}
    deadline = time.time() + timeout
    while len(seen) < count and time.time() < deadline:
        now = time.time()
        for df in dataflows(namespace):
            if (df.get("status") or {}).get("phase") == phase:
                seen.setdefault(df["metadata"]["name"], now)
        say(f"{len(seen)}/{count} {phase}")
        time.sleep(1)
    return seen


def operator_pods() -> list[dict[str, Any]]:
    found = json.loads(
        kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=millrace-operator", "-o", "json")
    )
    return [p for p in found["items"] if not p["metadata"].get("deletionTimestamp")]


def cgroup_usage(pod: dict[str, Any]) -> tuple[float, int]:
    """(CPU seconds, peak memory bytes) of the operator's container, read from its cgroup (v1)
    on this node (k8slocal: the node is this machine)."""
    uid = pod["metadata"]["uid"]
    qos = pod["status"].get("qosClass", "Burstable").lower()
    base = "kubepods" if qos == "guaranteed" else f"kubepods/{qos}"
    cpu = Path(f"/sys/fs/cgroup/cpuacct/{base}/pod{uid}/cpuacct.usage")
    mem = Path(f"/sys/fs/cgroup/memory/{base}/pod{uid}/memory.max_usage_in_bytes")
    return int(cpu.read_text()) / 1e9, int(mem.read_text())


def active_operator() -> dict[str, Any]:
    """The operator pod that is not paused (with one replica: the one)."""
    pods = operator_pods()
    if len(pods) == 1:
        return pods[0]
    for pod in pods:
        log = kubectl("logs", "-n", OPERATOR_NAMESPACE, pod["metadata"]["name"], check=False)
        # A standby starts paused and says nothing until it resumes.
        resumed, paused = log.rfind("Resuming operations"), log.rfind("Pausing operations")
        if resumed >= 0 and resumed > paused:
            return pod
    raise SystemExit("no active operator found")


def idle_requests(namespace_count: int, seconds: float = 60) -> dict[str, Any]:
    offset, since = log_size(), time.time()
    time.sleep(seconds)
    counts = requests_since(offset, USER, since, since + seconds)
    return {
        "seconds": seconds,
        "reads": counts.reads,
        "writes": counts.writes,
        "by_request": {f"{v} {r}": n for (v, r), n in sorted(counts.by_request.items())},
    }


def pod_uids(namespace: str) -> dict[str, str]:
    found = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in found}


def restarts(namespace: str) -> int:
    found = json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    return sum(c.get("restartCount", 0) for p in found for c in p["status"].get("containerStatuses") or [])


def spec_change_latency(namespace: str, name: str, timeout: float = 300) -> float:
    """From a patch of the spec (an env variable) to a pod of the new template Running and Ready."""
    stamp = str(time.time())
    started = time.time()
    patch = {"spec": {"env": [{"name": "BENCH_STAMP", "value": stamp}]}}
    kubectl("patch", "dataflow", name, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    while time.time() - started < timeout:
        found = json.loads(kubectl("get", "pods", "-n", namespace, "-l", f"millrace.dev/dataflow={name}", "-o", "json"))
        for pod in found["items"]:
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
            ready = [c for c in pod["status"].get("conditions") or [] if c["type"] == "Ready"]
            if env.get("BENCH_STAMP") == stamp and ready and ready[0]["status"] == "True":
                return time.time() - started
        time.sleep(0.5)
    raise SystemExit(f"the spec change did not reach {name}'s pods in {timeout}s")


def delete_all(namespace: str, timeout: float = 600) -> dict[str, Any]:
    started = time.time()
    kubectl(
        "delete", "dataflows", "--all", "-n", namespace, "--wait=true", f"--timeout={int(timeout)}s", timeout=timeout
    )
    kinds = "jobs,services,configmaps,secrets,networkpolicies,pods,persistentvolumeclaims"
    while left := kubectl("get", kinds, "-n", namespace, "-l", "millrace.dev/dataflow", "-o", "name").split():
        if time.time() - started > timeout:
            break
        time.sleep(2)
    result = {"seconds": round(time.time() - started, 1), "left_behind": len(left)}
    kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=300s", check=False, timeout=360)
    return result


def scale(count: int, timeout: float, can_run: int) -> dict[str, Any]:
    namespace = f"bench-scale-{count}"
    operator = active_operator()
    cpu_before, _ = cgroup_usage(operator)
    started = create(namespace, count)
    times = running_times(namespace, min(count, can_run), timeout)
    latencies = sorted(t - started for t in times.values())
    cpu_after, peak = cgroup_usage(operator)
    result: dict[str, Any] = {
        "dataflows": count,
        "running": len(times),
        "phases": dict(Counter((df.get("status") or {}).get("phase") for df in dataflows(namespace))),
        "apply_to_running_median_s": round(statistics.median(latencies), 1) if latencies else None,
        "apply_to_running_worst_s": round(latencies[-1], 1) if latencies else None,
        "operator_cpu_s_until_all_running": round(cpu_after - cpu_before, 1),
        "operator_peak_memory_mib": round(peak / 2**20, 1),
    }
    say(result)
    time.sleep(30)  # let the last status writes and events settle
    cpu_idle_before, _ = cgroup_usage(operator)
    result["idle"] = idle_requests(count)
    cpu_idle_after, peak = cgroup_usage(operator)
    result["operator_cpu_s_per_idle_minute"] = round(cpu_idle_after - cpu_idle_before, 2)
    result["operator_peak_memory_mib"] = round(peak / 2**20, 1)
    say(result["idle"])
    result["spec_change_to_ready_pod_s"] = round(spec_change_latency(namespace, f"nap-{0:03d}"), 1)
    result["deletion"] = delete_all(namespace)
    return result


def idle(count: int, timeout: float, batch: bool) -> dict[str, Any]:
    namespace = f"bench-idle-{count}"
    create(namespace, count, BATCH_FLOW if batch else SLEEPING_FLOW)
    phase = "Succeeded" if batch else "Running"
    times = running_times(namespace, count, timeout, phase)
    time.sleep(20)
    result = {"dataflows": count, phase.lower(): len(times), "idle": idle_requests(count)}
    result["deletion"] = delete_all(namespace)
    return result


def failover(count: int, timeout: float, how: str) -> dict[str, Any]:
    namespace = f"bench-failover-{count}"
    if len(operator_pods()) < 2:
        raise SystemExit("failover needs the chart with operator.replicas=2")
    create(namespace, count)
    times = running_times(namespace, count, timeout)
    time.sleep(10)
    before, restarts_before = pod_uids(namespace), restarts(namespace)
    victim = active_operator()
    name = victim["metadata"]["name"]
    say("killing the active operator", name, how)
    killed = time.time()
    if how == "sigkill":
        container = victim["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        socket = "/var/tmp/k8slocal/run/containerd/containerd.sock"
        subprocess.run(
            ["ctr", "--address", socket, "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", container], check=True
        )
    else:
        kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, name, "--wait=false")
    # Taken over when a change of a spec reaches its pod: only an active operator does that.
    latency = spec_change_latency(namespace, f"nap-{count - 1:03d}", timeout=120)
    handover = time.time() - killed
    time.sleep(15)
    after = pod_uids(namespace)
    changed = {n for n, uid in before.items() if after.get(n) != uid} - {
        n for n in before if n.startswith(f"nap-{count - 1:03d}-")
    }
    result = {
        "dataflows": count,
        "running": len(times),
        "how": how,
        "kill_to_spec_change_on_pod_s": round(handover, 1),
        "spec_change_latency_s": round(latency, 1),
        "other_pods_replaced": len(changed),
        "container_restarts": restarts(namespace) - restarts_before,
    }
    result["deletion"] = delete_all(namespace)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["idle", "scale", "failover"])
    parser.add_argument("count", type=int)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all to be Running")
    parser.add_argument(
        "--can-run",
        type=int,
        default=10**6,
        help="scale: stop waiting once this many are Running (a node holds 110 pods by default)",
    )
    parser.add_argument("--batch", action="store_true", help="idle: flows that end at once (Succeeded)")
    parser.add_argument("--how", choices=["sigkill", "delete"], default="sigkill", help="failover: how to kill")
    args = parser.parse_args()
    if args.what == "idle":
        result = idle(args.count, args.timeout, args.batch)
    elif args.what == "scale":
        result = scale(args.count, args.timeout, args.can_run)
    else:
        result = failover(args.count, args.timeout, args.how)
    print(json.dumps({"benchmark": args.what, **result}))


if __name__ == "__main__":
    main()
