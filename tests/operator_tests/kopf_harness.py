"""kopf in-process against kmock's Kubernetes emulator: the fixture, the runner, and the parts
of the controllers the emulator does not play.

The emulator runs no controllers and assigns no uid or resourceVersion, so tests seed those and
play the StatefulSet controller's and kubelet's part by writing pods themselves, through the
HTTP API so that kopf sees the events.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import kmock as kmock_lib
import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner

DATAFLOWS = kmock.resource("millrace.dev", "v1alpha1", "dataflows")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
SERVICES = kmock.resource("", "v1", "services")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SECRETS = kmock.resource("", "v1", "secrets")
PODS = kmock.resource("", "v1", "pods")
NETWORKPOLICIES = kmock.resource("networking.k8s.io", "v1", "networkpolicies")
EVENTS = kmock.resource("", "v1", "events")
CLAIMS = kmock.resource("", "v1", "persistentvolumeclaims")


def dataflow(name: str = "wc", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": name, "namespace": "jobs", "uid": f"uid-{name}", "resourceVersion": "1", "generation": 1},
        "spec": {"processes": 2, "flow": {"code": "flow = None"}, **spec},
    }


@pytest.fixture
def cluster(kmock: kmock.KubernetesEmulator):  # noqa: F811 - kmock's own fixture
    kmock.resources[DATAFLOWS] = kmock.ResourceInfo(
        kind="Dataflow", namespaced=True, singular="dataflow",
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status"},
    )
    for resource, kind in [(STATEFULSETS, "StatefulSet"), (SERVICES, "Service"), (CONFIGMAPS, "ConfigMap"),
                           (SECRETS, "Secret"), (PODS, "Pod"),
                           (NETWORKPOLICIES, "NetworkPolicy"), (EVENTS, "Event"), (CLAIMS, "PersistentVolumeClaim")]:
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


def login(url: str) -> None:
    _SERVER["url"] = url


RUN = ["run", "--standalone", "--all-namespaces", "-m", "millrace_operator.handlers"]


class Operator:
    """KopfRunner entered and left off the event loop: the emulator serves on this loop, so
    blocking it while kopf's handler threads still talk to the emulator would deadlock."""

    def __init__(self, args: list[str]) -> None:
        self.runner = KopfRunner(args)

    async def __aenter__(self) -> KopfRunner:
        return await asyncio.to_thread(self.runner.__enter__)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.runner.__exit__, *exc)


async def until(predicate, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


def obj(kmock_, resource, name):
    try:
        found = kmock_.objects[resource, "jobs", name]
    except KeyError:
        return None
    return None if found.deleted else found.raw


def pod(name: str, index: int, template: dict[str, Any], *, ready: bool = True,
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


async def play_kubelet(cluster, name: str, **kwargs: Any) -> None:
    """Create the StatefulSet's pods through the API, as its controller would."""
    sts = obj(cluster, STATEFULSETS, name)
    core = as_test(kubernetes.client.CoreV1Api)
    for index in range(sts["spec"]["replicas"]):
        await asyncio.to_thread(core.create_namespaced_pod, "jobs", pod(name, index, sts["spec"]["template"], **kwargs))


async def play_claims(cluster, name: str) -> None:
    """Create the claims of the StatefulSet's claim templates, as its controller would."""
    sts = obj(cluster, STATEFULSETS, name)
    core = as_test(kubernetes.client.CoreV1Api)
    for template in sts["spec"].get("volumeClaimTemplates") or []:
        for index in range(sts["spec"]["replicas"]):
            claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": f"{template['metadata']['name']}-{name}-{index}", "namespace": "jobs",
                                  "labels": dict(template["metadata"].get("labels") or {})},
                     "spec": template["spec"]}
            await asyncio.to_thread(core.create_namespaced_persistent_volume_claim, "jobs", claim)


# Requests the tests make while playing the controllers and the user carry this user agent, so
# that the requests of the operator itself can be told apart (tests/operator_tests/test_rbac.py).
TEST_AGENT = "millrace-tests/playing-controllers"


def as_test(api_class: type) -> Any:
    """An API group object whose requests are marked as the test's, not the operator's."""
    client = kubernetes.client.ApiClient()
    client.user_agent = TEST_AGENT
    return api_class(client)


def phase(cluster, name: str = "wc") -> str | None:
    return ((obj(cluster, DATAFLOWS, name) or {}).get("status") or {}).get("phase")
