"""The kopf handlers, in-process, against kmock's Kubernetes emulator.

The emulator runs no controllers and assigns no uid or resourceVersion, so the test seeds
those and plays the StatefulSet controller's and kubelet's part by writing pods itself.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kmock
import kmock as kmock_lib
import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

pytestmark = pytest.mark.timeout(120)

DATAFLOWS = kmock.resource("millrace.dev", "v1alpha1", "dataflows")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
SERVICES = kmock.resource("", "v1", "services")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SECRETS = kmock.resource("", "v1", "secrets")
PODS = kmock.resource("", "v1", "pods")


def dataflow(name: str = "wc", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": name, "namespace": "jobs", "uid": f"uid-{name}", "resourceVersion": "1", "generation": 1},
        "spec": {"processes": 2, "flow": {"code": "flow = None"}, **spec},
    }


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator):
    kmock.resources[DATAFLOWS] = kmock.ResourceInfo(
        kind="Dataflow", namespaced=True, singular="dataflow",
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status"},
    )
    for resource, kind in [(STATEFULSETS, "StatefulSet"), (SERVICES, "Service"), (CONFIGMAPS, "ConfigMap"),
                           (SECRETS, "Secret"), (PODS, "Pod")]:
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=True, verbs={"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"},
        )
    # What kopf's own machinery watches: CRDs (to notice new resources) and namespaces.
    kmock.resources[kmock_lib.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"get", "list", "watch"},
    )
    kmock.resources[kmock_lib.resource("", "v1", "namespaces")] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"get", "list", "watch"},
    )
    config = kubernetes.client.Configuration()
    config.host = str(kmock.url).rstrip("/")
    kubernetes.client.Configuration.set_default(config)
    return kmock


# One login handler for the whole module (kopf keeps handlers in a global registry); each
# test points it at its own emulator.
_SERVER: dict[str, str] = {}


@kopf.on.login()
def _login_to_the_emulator(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_SERVER["url"], insecure=True)


def _login(url: str) -> None:
    _SERVER["url"] = url


RUN = ["run", "--standalone", "--all-namespaces", "-m", "millrace_operator.handlers"]


class _Operator:
    """KopfRunner entered and left off the event loop: the emulator serves on this loop, so
    blocking it while kopf's handler threads still talk to the emulator would deadlock."""

    def __init__(self, args: list[str]) -> None:
        self.runner = KopfRunner(args)

    async def __aenter__(self) -> KopfRunner:
        return await asyncio.to_thread(self.runner.__enter__)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.runner.__exit__, *exc)


async def _until(predicate, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _object(kmock_, resource, name):
    try:
        found = kmock_.objects[resource, "jobs", name]
    except KeyError:
        return None
    return None if found.deleted else found.raw


async def test_create_makes_owned_children_and_a_status(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    _login(str(cluster.url).rstrip("/"))
    import millrace_operator.handlers  # noqa: F401 - registers the handlers

    async with _Operator(RUN) as runner:
        await _until(lambda: _object(cluster, STATEFULSETS, "wc") is not None, 8)
        await _until(lambda: (_object(cluster, DATAFLOWS, "wc") or {}).get("status", {}).get("phase") == "Pending")
    sts = _object(cluster, STATEFULSETS, "wc")
    assert sts["spec"]["replicas"] == 2
    for resource, name in [(SERVICES, "wc"), (CONFIGMAPS, "wc-flow"), (SECRETS, "wc-cluster-key")]:
        child = _object(cluster, resource, name)
        assert child is not None, name
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-wc"
    assert runner.exit_code == 0, runner.output


def _pod(name: str, index: int, template: dict[str, Any], *, ready: bool = True,
         terminated: tuple[int, str] | None = None, crash_loop: tuple[int, str, int] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "worker", "restartCount": 0, "state": {}, "lastState": {},
                                 "image": "x", "imageID": "", "ready": ready}
    if terminated:
        container["state"] = {"terminated": {"exitCode": terminated[0], "message": terminated[1]}}
    if crash_loop:
        code, message, restarts = crash_loop
        container["restartCount"] = restarts
        container["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        container["lastState"] = {"terminated": {"exitCode": code, "message": message}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-{index}", "namespace": "jobs",
                     "labels": dict(template["metadata"]["labels"]),
                     "annotations": dict(template["metadata"]["annotations"])},
        "spec": {"containers": [{"name": "worker", "image": "x"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "containerStatuses": [container]},
    }


async def _play_kubelet(cluster, name: str, **kwargs: Any) -> None:
    """Create the StatefulSet's pods through the API, as its controller would."""
    sts = _object(cluster, STATEFULSETS, name)
    core = kubernetes.client.CoreV1Api()
    for index in range(sts["spec"]["replicas"]):
        await asyncio.to_thread(core.create_namespaced_pod, "jobs", _pod(name, index, sts["spec"]["template"], **kwargs))


def _phase(cluster, name: str = "wc") -> str | None:
    return ((_object(cluster, DATAFLOWS, name) or {}).get("status") or {}).get("phase")


async def test_status_follows_the_pods_to_running_and_succeeded(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    _login(str(cluster.url).rstrip("/"))
    async with _Operator(RUN) as runner:
        await _until(lambda: _phase(cluster) == "Pending")
        await _play_kubelet(cluster, "wc", ready=True)
        await _until(lambda: _phase(cluster) == "Running")
        assert _object(cluster, DATAFLOWS, "wc")["status"]["readyProcesses"] == 2
        core = kubernetes.client.CoreV1Api()
        for index in range(2):
            await asyncio.to_thread(core.delete_namespaced_pod, f"wc-{index}", "jobs")
        await _play_kubelet(cluster, "wc", ready=False, terminated=(0, "millrace: completed"))
        await _until(lambda: _phase(cluster) == "Succeeded")
        await _until(lambda: _object(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 0)
    assert runner.exit_code == 0, runner.output


async def test_a_spec_change_restarts_every_pod(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    _login(str(cluster.url).rstrip("/"))
    async with _Operator(RUN) as runner:
        await _until(lambda: _object(cluster, STATEFULSETS, "wc") is not None)
        await _play_kubelet(cluster, "wc", ready=True)
        await _until(lambda: _phase(cluster) == "Running")
        custom = kubernetes.client.CustomObjectsApi()
        await asyncio.to_thread(custom.patch_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs",
                                "dataflows", "wc", {"spec": {"processes": 3}})
        await _until(lambda: _object(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 3)
        await _until(lambda: all(_object(cluster, PODS, f"wc-{i}") is None for i in range(2)))
    assert runner.exit_code == 0, runner.output


async def test_a_malformed_dataflow_is_reported_not_crashed_on(cluster):
    bad = dataflow()
    bad["spec"] = {"processes": "many", "flow": {}}
    cluster.objects[DATAFLOWS, "jobs", "wc"] = bad
    _login(str(cluster.url).rstrip("/"))
    async with _Operator(RUN) as runner:
        await _until(lambda: _phase(cluster) == "Failed")
    status = _object(cluster, DATAFLOWS, "wc")["status"]
    assert "spec.flow" in status["message"]
    assert _object(cluster, STATEFULSETS, "wc") is None
    assert runner.exit_code == 0, runner.output


def _failed_condition(cluster) -> dict[str, Any]:
    status = _object(cluster, DATAFLOWS, "wc")["status"]
    return next(c for c in status["conditions"] if c["type"] == "Failed")


async def test_a_flow_that_cannot_load_ends_failed_with_the_import_error(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow(flow={"module": "flows.missing:flow"})
    _login(str(cluster.url).rstrip("/"))
    message = "millrace: failed: ModuleNotFoundError: No module named 'flows'"
    async with _Operator(RUN) as runner:
        await _until(lambda: _object(cluster, STATEFULSETS, "wc") is not None)
        await _play_kubelet(cluster, "wc", ready=False, crash_loop=(1, message, 1))
        await _until(lambda: _phase(cluster) == "Failed")
        await _until(lambda: _object(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 0)
    failed = _failed_condition(cluster)
    assert failed["status"] == "True" and failed["reason"] == "FlowFailed"
    assert "No module named 'flows'" in failed["message"]
    assert runner.exit_code == 0, runner.output


async def test_crash_looping_pods_end_failed_with_the_last_message(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    _login(str(cluster.url).rstrip("/"))
    message = "millrace: failed: ZeroDivisionError: division by zero"
    async with _Operator(RUN) as runner:
        await _until(lambda: _object(cluster, STATEFULSETS, "wc") is not None)
        await _play_kubelet(cluster, "wc", ready=False, crash_loop=(1, message, 5))
        await _until(lambda: _phase(cluster) == "Failed")
    failed = _failed_condition(cluster)
    assert failed["reason"] == "CrashLoop" and "ZeroDivisionError" in failed["message"]
    assert runner.exit_code == 0, runner.output


async def test_suspend_scales_to_zero_and_back(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    _login(str(cluster.url).rstrip("/"))
    custom = kubernetes.client.CustomObjectsApi()

    async def set_suspend(value: bool) -> None:
        await asyncio.to_thread(custom.patch_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs",
                                "dataflows", "wc", {"spec": {"suspend": value}})

    async with _Operator(RUN) as runner:
        await _until(lambda: _object(cluster, STATEFULSETS, "wc") is not None)
        await set_suspend(True)
        await _until(lambda: _phase(cluster) == "Suspended")
        assert _object(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 0
        await set_suspend(False)
        await _until(lambda: _object(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 2)
        await _until(lambda: _phase(cluster) == "Pending")
    assert runner.exit_code == 0, runner.output
