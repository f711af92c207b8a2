"""kopf in-process against kmock's Kubernetes emulator: the emulated cluster (conftest.py makes
it the ``cluster`` fixture), the runner, and the parts of the API server and of the controllers
the emulator does not play.

kmock's emulator treats any PATCH as a recursive merge of an existing object, ignores label
selectors and propagation policies, runs no controllers and assigns no uid or resourceVersion.
:class:`Apiserver` adds what the operator relies on: a server-side apply (a PATCH with the
content type ``application/apply-patch+yaml``) creates a missing object and replaces the
applier's fields of an existing one; a list honours its label selector; a Foreground deletion
of an object with dependents leaves it, marked for deletion, until its dependents are gone;
every write makes a new resourceVersion and every created object gets a uid. Tests seed the
Dataflows' uids, and play the Job controller's, the kubelet's and the garbage collector's part
by writing pods themselves, through the HTTP API so that kopf sees the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import attrs
import kmock
import kopf
import kubernetes
from kopf.testing import KopfRunner

DATAFLOWS = kmock.resource("millrace.dev", "v1alpha1", "dataflows")
JOBS = kmock.resource("batch", "v1", "jobs")
SERVICES = kmock.resource("", "v1", "services")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SECRETS = kmock.resource("", "v1", "secrets")
PODS = kmock.resource("", "v1", "pods")
NETWORKPOLICIES = kmock.resource("networking.k8s.io", "v1", "networkpolicies")
EVENTS = kmock.resource("", "v1", "events")
CLAIMS = kmock.resource("", "v1", "persistentvolumeclaims")

APPLY = "application/apply-patch+yaml"
FOREGROUND = "foregroundDeletion"
# What the API server owns in an object's metadata, whoever applies it.
_SERVER_META = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp", "finalizers")


def _content_type(request: kmock.Request) -> str:
    for key, value in request.headers.items():
        if key.lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return ""


def _selected(obj: dict[str, Any], selector: str) -> bool:
    """Whether ``obj``'s labels match an equality-based label selector (``a=b,c``)."""
    found = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if found.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if found.get(key.rstrip("=")) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in found:
                return False
        elif term not in found:
            return False
    return True


def _storage(claim: dict[str, Any]) -> Any:
    return (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return aiohttp.web.json_response(body, status=code)


@attrs.define(kw_only=True)
class Apiserver(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviour the operator relies on (see the module)."""

    #: Whether the claims' storage class allows volume expansion (a real one may not: 403).
    claims_expand: bool = True
    _versions: Any = attrs.field(factory=lambda: itertools.count(1000), init=False)

    def _version(self) -> str:
        return str(next(self._versions))

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Every write makes a new resourceVersion: kopf tells the events of its own patches from
        # older ones by it (with one version for all, it handles stale bodies again and again).
        if (
            request.resource is not None
            and request.action in (kmock.action.CREATE, kmock.action.UPDATE)
            and isinstance(request.data, dict)
        ):
            request.data.setdefault("metadata", {})["resourceVersion"] = self._version()
        if request.resource is not None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            request.data["metadata"].setdefault("uid", str(uuid.uuid4()))
        if (
            request.resource is not None
            and request.name is not None
            and request.method == kmock.method.PATCH
            and _content_type(request) == APPLY
        ):
            return await self._apply(request)
        if (
            request.resource is not None
            and request.name is not None
            and request.action == kmock.action.DELETE
            and isinstance(request.data, dict)
            and request.data.get("propagationPolicy") == "Foreground"
        ):
            await self._hold_for_dependents(request)
        return await super()._handle(request)

    async def _apply(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Server-side apply with one field manager: the manifest is the object, but for what
        the server owns (its metadata fields, the status); a missing object is created."""
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        manifest = copy.deepcopy(request.data)
        manifest.setdefault("metadata", {}).setdefault("namespace", request.namespace)
        async with self._lock:
            existing = self._objects[key] if key in self._objects and not self._objects[key].deleted else None
            if existing is None:
                # A new object gets its uid from the API server, as every object does: kopf
                # keeps what it knows of an object (its contributions to the indexes too) by
                # uid, and objects without one would share that memory.
                manifest["metadata"].setdefault("uid", str(uuid.uuid4()))
                if key in self._objects:
                    self._objects[key].create(manifest)
                else:
                    self._objects[key] = manifest
                event = "ADDED"
            else:
                old = copy.deepcopy(existing.raw)
                if request.resource == CLAIMS and _storage(old) != _storage(manifest):
                    refused = self._refuse_resize(request.name, old, manifest)
                    if refused is not None:
                        return refused
                for field in _SERVER_META:
                    if field in (old.get("metadata") or {}):
                        manifest["metadata"].setdefault(field, old["metadata"][field])
                if "status" in old:
                    manifest["status"] = old["status"]
                existing.create(manifest)
                event = "MODIFIED"
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": event, "object": raw})
        return aiohttp.web.json_response(raw)

    def _refuse_resize(self, name: str, old: dict[str, Any], new: dict[str, Any]) -> aiohttp.web.Response | None:
        from kubernetes.utils import parse_quantity

        if _storage(old) is not None and parse_quantity(_storage(new)) < parse_quantity(_storage(old)):
            return _status(
                422,
                "Invalid",
                f'PersistentVolumeClaim "{name}" is invalid: spec.resources.requests.'
                "storage: Forbidden: field can not be less than status.capacity",
            )
        if not self.claims_expand:
            return _status(
                403,
                "Forbidden",
                f'persistentvolumeclaims "{name}" is forbidden: only dynamically '
                "provisioned pvc can be resized and the storageclass that "
                "provisions the pvc must support resize",
            )
        return None

    async def _hold_for_dependents(self, request: kmock.Request) -> None:
        """A Foreground deletion: an object that has dependents stays, marked for deletion with
        the ``foregroundDeletion`` finalizer, until the garbage collector has deleted them."""
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return
            target = self._objects[key].raw
            if not dependents(self, target):
                return
            finalizers = list((target.get("metadata") or {}).get("finalizers") or [])
            if FOREGROUND not in finalizers:
                self._objects[key].patch({"metadata": {"finalizers": [*finalizers, FOREGROUND]}})

    async def _serve_list(self, request: kmock.Request) -> Any:
        listed = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector:
            listed["items"] = [item for item in listed["items"] if _selected(item, selector)]
        return listed


def live(cluster: Apiserver, resource: Any, namespace: str = "jobs") -> list[dict[str, Any]]:
    """The raw objects of ``resource`` in ``namespace`` that are not deleted."""
    return [
        o.raw for (r, ns, _), o in list(cluster.objects.items()) if r == resource and ns == namespace and not o.deleted
    ]


def dependents(cluster: Apiserver, owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The live objects with an ownerReference to ``owner`` (by kind and name: the emulator
    assigns no uids)."""
    meta = owner.get("metadata") or {}
    found = []
    for (_, namespace, _), o in list(cluster.objects.items()):
        if o.deleted or namespace != meta.get("namespace"):
            continue
        for ref in (o.raw.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == owner.get("kind") and ref.get("name") == meta.get("name"):
                found.append(o.raw)
    return found


_RESOURCES = [
    (DATAFLOWS, "Dataflow"),
    (JOBS, "Job"),
    (SERVICES, "Service"),
    (CONFIGMAPS, "ConfigMap"),
    (SECRETS, "Secret"),
    (PODS, "Pod"),
    (NETWORKPOLICIES, "NetworkPolicy"),
    (EVENTS, "Event"),
    (CLAIMS, "PersistentVolumeClaim"),
]


@contextlib.asynccontextmanager
async def emulated_cluster() -> AsyncIterator[Apiserver]:
    """An emulated API server serving the resources the operator uses, set as the kubernetes
    client's default (conftest.py makes it the ``cluster`` fixture)."""
    async with Apiserver() as emulator, kmock.Server(emulator):
        for resource, kind in _RESOURCES:
            emulator.resources[resource] = kmock.ResourceInfo(
                kind=kind,
                namespaced=True,
                singular=kind.lower(),
                verbs={"get", "list", "watch", "create", "patch", "update", "delete", "deletecollection"},
                subresources={"status"} if kind in ("Dataflow", "Pod", "Job", "PersistentVolumeClaim") else set(),
            )
        # What kopf's own machinery watches: CRDs (to notice new resources) and namespaces.
        emulator.resources[kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")] = (
            kmock.ResourceInfo(
                kind="CustomResourceDefinition",
                namespaced=False,
                verbs={"get", "list", "watch"},
            )
        )
        emulator.resources[kmock.resource("", "v1", "namespaces")] = kmock.ResourceInfo(
            kind="Namespace",
            namespaced=False,
            verbs={"get", "list", "watch"},
        )
        config = kubernetes.client.Configuration()
        config.host = str(emulator.url).rstrip("/")
        kubernetes.client.Configuration.set_default(config)
        yield emulator


def dataflow(name: str = "wc", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": name, "namespace": "jobs", "uid": f"uid-{name}", "resourceVersion": "1", "generation": 1},
        "spec": {"processes": 2, "flow": {"code": "flow = None"}, **spec},
    }


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


def jobs_of(cluster: Apiserver, name: str = "wc") -> dict[str, dict[str, Any]]:
    """The Dataflow's Jobs by name, those being deleted included."""
    return {
        j["metadata"]["name"]: j
        for j in live(cluster, JOBS)
        if (j["metadata"].get("labels") or {}).get("millrace.dev/dataflow") == name
    }


def pods_of(cluster: Apiserver, name: str = "wc") -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in live(cluster, PODS)
        if (p["metadata"].get("labels") or {}).get("millrace.dev/dataflow") == name
    }


def template_hash(o: dict[str, Any]) -> str | None:
    return ((o.get("metadata") or {}).get("annotations") or {}).get("millrace.dev/template-hash")


def pod_status(
    *, ready: bool = True, terminated: tuple[int, str] | None = None, crash_loop: tuple[int, str, int] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "worker",
        "restartCount": 0,
        "state": {},
        "lastState": {},
        "image": "x",
        "imageID": "",
        "ready": ready,
    }
    if terminated:
        container["state"] = {"terminated": {"exitCode": terminated[0], "message": terminated[1]}}
    if crash_loop:
        code, message, restarts = crash_loop
        container["restartCount"] = restarts
        container["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        container["lastState"] = {"terminated": {"exitCode": code, "message": message}}
    return {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}], "containerStatuses": [container]}


_SUFFIXES = (f"{n:05x}" for n in itertools.count(0xA0000, 7919))


def pod(job: dict[str, Any], **status: Any) -> dict[str, Any]:
    """The pod the Job controller makes for ``job`` (``N-i-xxxxx``), in the state given."""
    template = job["spec"]["template"]
    job_name = job["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job_name}-{next(_SUFFIXES)}",
            "namespace": job["metadata"]["namespace"],
            "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": job_name},
            "annotations": dict(template["metadata"]["annotations"]),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job_name,
                    "uid": f"uid-{job_name}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "hostname": template["spec"]["hostname"],
            "subdomain": template["spec"]["subdomain"],
            "containers": [{"name": "worker", "image": "x"}],
        },
        "status": pod_status(**status),
    }


async def play_kubelet(cluster: Apiserver, name: str = "wc", **status: Any) -> None:
    """The Job controller and the kubelet: every running (not suspended, not deleted) Job of
    the Dataflow has one pod, in the state given; an existing pod's status is updated."""
    core = as_test(kubernetes.client.CoreV1Api)
    pods = pods_of(cluster, name)
    for job in jobs_of(cluster, name).values():
        if job["spec"].get("suspend") or job["metadata"].get("deletionTimestamp"):
            continue
        mine = [p for p in pods.values() if p["metadata"]["ownerReferences"][0]["name"] == job["metadata"]["name"]]
        if mine:
            for found in mine:
                await asyncio.to_thread(
                    core.patch_namespaced_pod, found["metadata"]["name"], "jobs", {"status": pod_status(**status)}
                )
        else:
            await asyncio.to_thread(core.create_namespaced_pod, "jobs", pod(job, **status))


async def play_garbage_collector(cluster: Apiserver) -> None:
    """Finish the Foreground deletions: delete the dependents of every object held by the
    ``foregroundDeletion`` finalizer, then release it (the API server then removes it)."""
    core = as_test(kubernetes.client.CoreV1Api)
    batch = as_test(kubernetes.client.BatchV1Api)
    for job in live(cluster, JOBS):
        if FOREGROUND not in (job["metadata"].get("finalizers") or []):
            continue
        for dependent in dependents(cluster, job):
            await asyncio.to_thread(core.delete_namespaced_pod, dependent["metadata"]["name"], "jobs")
        rest = [f for f in job["metadata"]["finalizers"] if f != FOREGROUND]
        await asyncio.to_thread(
            batch.patch_namespaced_job, job["metadata"]["name"], "jobs", {"metadata": {"finalizers": rest or None}}
        )


# Requests the tests make while playing the controllers and the user carry this user agent, so
# that the requests of the operator itself can be told apart (tests/operator_tests/test_rbac.py).
TEST_AGENT = "millrace-tests/playing-controllers"


def as_test(api_class: type) -> Any:
    """An API group object whose requests are marked as the test's, not the operator's."""
    client = kubernetes.client.ApiClient()
    client.user_agent = TEST_AGENT
    return api_class(client)


async def patch_spec(spec: dict[str, Any], name: str = "wc") -> None:
    """The user edits the Dataflow's spec."""
    custom = as_test(kubernetes.client.CustomObjectsApi)
    await asyncio.to_thread(
        custom.patch_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs", "dataflows", name, {"spec": spec}
    )


def phase(cluster, name: str = "wc") -> str | None:
    return ((obj(cluster, DATAFLOWS, name) or {}).get("status") or {}).get("phase")


def message(cluster, name: str = "wc") -> str:
    return ((obj(cluster, DATAFLOWS, name) or {}).get("status") or {}).get("message") or ""
