"""The kopf handlers: watches that keep the Dataflows and their children in memory, and one
daemon per Dataflow, the only one that reconciles it and the only writer of its status.

A Dataflow costs the API server nothing while nothing changes. kopf's watches (one stream per
kind, for every Dataflow together) feed indexes of the Dataflows and of their children (Jobs,
pods, claims, Services, ConfigMaps, Secrets, NetworkPolicies); an event about any of them wakes
its Dataflow's daemon, which reconciles from those indexes (:class:`.observed.Observed`: no
reads, and a write only where the desired manifest differs from what was last applied) and
patches the status only when it differs from what it last wrote. A rare resync wakes every
daemon as a safety net; it too costs no request when nothing changed.

One daemon per Dataflow makes the status's writer one: no older status can overwrite a newer
one, and the previous status it computes from is its own last write, not a watch's lagging copy.
With peering (``millrace-operator --peering``, the chart's ``operator.replicas`` > 1) only the
active operator watches and runs daemons; a standby's are stopped until it takes over.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import logging
import time
from typing import Any, cast

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from . import steps
from .kube import Kube
from .manifests import DATAFLOW_LABEL
from .metrics import OperatorMetrics
from .observed import Memory, Observed
from .reconcile import reconcile
from .spec import SpecError

GROUP, VERSION, PLURAL = "millrace.dev", "v1alpha1", "dataflows"
log = logging.getLogger("millrace.operator")

#: The safety net: how often a daemon reconciles though nothing woke it (from memory: free).
RESYNC_SECONDS = 300.0
#: Events come in bursts (a Job and its pod, a pod's several updates): one reconcile for each.
SETTLE_SECONDS = 0.2
#: After a failed reconcile (the API server refused or was unreachable), the next try.
RETRY_SECONDS = 5.0

Key = tuple[str, str]  # (namespace, name)
Manifest = dict[str, Any]

# The children kopf watches, by kind: (group, version, plural).
CHILDREN: dict[str, tuple[str, str, str]] = {
    "Job": ("batch", "v1", "jobs"),
    "Pod": ("", "v1", "pods"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    "Secret": ("", "v1", "secrets"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
}
OWNED = {DATAFLOW_LABEL: kopf.PRESENT}


@dataclasses.dataclass
class Flow:
    """What the operator keeps of one Dataflow between its reconciles."""

    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    memory: Memory = dataclasses.field(default_factory=dict)
    #: The status as this operator last wrote it (or found it, on start).
    status: dict[str, Any] | None = None
    reconciles: int = 0
    #: The flow's steps, with the pod template they are for, as a pod said them (:mod:`.steps`).
    steps: tuple[str, list[str]] | None = None
    #: How often each pod (by uid) was asked for them without an answer.
    asked: dict[str, int] = dataclasses.field(default_factory=dict)


# Entries go with their Dataflow (a DELETED event), so the table holds only what exists.
_flows: dict[Key, Flow] = {}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _phases() -> list[str | None]:
    # Called from the metrics server's thread: a copy of the table, taken at once.
    return [(flow.status or {}).get("phase") for flow in list(_flows.values())]


#: The operator's metrics (:mod:`.metrics`).
METRICS = OperatorMetrics(_phases)
#: Where they are served (0: any free port), ``None``: not at all; ``millrace-operator`` sets
#: it from ``--metrics-port``.
metrics_port: int | None = None


def _flow(key: Key) -> Flow:
    return _flows.setdefault(key, Flow())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # No progress or diff-base annotations are written (no create/update handlers), but kopf
    # keeps its own under this prefix should it ever need to.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="millrace.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="millrace.dev")
    settings.posting.level = logging.WARNING
    # Least privilege: no cluster-wide watching of CRDs and namespaces. The CRD must exist when
    # the operator starts (Helm installs it first); the watched namespaces are given explicitly.
    settings.scanning.disabled = True
    # A new operator (a test runs several in one process) starts from nothing.
    _flows.clear()
    if metrics_port is not None:
        port = METRICS.serve(metrics_port)
        log.info("serving the operator's metrics on port %d at /metrics", port)


@kopf.on.cleanup()
def stop_metrics(**_: Any) -> None:
    METRICS.stop()


def _announce(body: Manifest, old: Manifest, new: Manifest) -> None:
    """A Kubernetes event on every phase change, so ``kubectl describe df`` tells the story."""
    if new.get("phase") != old.get("phase"):
        kind = "Warning" if new.get("phase") == "Failed" else "Normal"
        # kopf reads the object reference (apiVersion, kind, metadata) off any mapping.
        kopf.event(cast(kopf.Body, body), type=kind, reason=str(new.get("phase")), message=str(new.get("message", "")))


def _invalid(df: Manifest, exc: SpecError) -> Manifest:
    return {
        "phase": "Failed",
        "message": str(exc),
        "observedGeneration": df["metadata"].get("generation"),
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "InvalidSpec",
                "message": str(exc),
                "lastTransitionTime": now(),
            }
        ],
    }


def _changed(new: Manifest, old: Manifest | None) -> bool:
    """Whether writing ``new`` would change ``old`` (a merge patch leaves other keys be)."""
    return new != {k: v for k, v in (old or {}).items() if k in new}


def learn_steps(flow: Flow, body: Manifest, pods: list[Manifest]) -> bool:
    """Ask process 0's pod for the flow's steps if they are not known for its pod template yet
    (:mod:`.steps`); whether to ask again later. Runs in a thread: the request blocks."""
    try:
        source = steps.source(body, pods)
    except SpecError:
        return False
    if source is None or (flow.steps is not None and flow.steps[0] == source.template):
        return False
    written = flow.status or {}
    if written.get("templateHash") == source.template and written.get("steps") is not None:
        return False  # known already (an operator that took over finds them in the status)
    tries = flow.asked.get(source.pod_uid, 0)
    if tries >= steps.TRIES:
        return False
    flow.asked = {source.pod_uid: tries + 1}  # only the current pod's count is worth keeping
    try:
        found = steps.fetch(source.url)
    except OSError as exc:
        log.info("asking %s for the flow's steps: %s", source.url, exc)
        return tries + 1 < steps.TRIES
    if found is None:
        flow.asked[source.pod_uid] = steps.TRIES  # it has none to give: not worth asking again
    else:
        flow.steps = (source.template, found)
    return False


def reconcile_once(flow: Flow, body: Manifest, seen: dict[str, list[Manifest]]) -> Manifest | None:
    """Bring the children to ``body``'s spec; the status to write, or ``None`` if unchanged.
    Runs in a thread: the kubernetes client blocks."""
    df = {
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(flow.status or {}),
    }
    observed = Observed(Kube(), seen, flow.memory)
    try:
        status = reconcile(observed, df, now(), flow.steps)
    except SpecError as exc:
        status = _invalid(df, exc)
    finally:
        METRICS.api_writes.inc(observed.writes)
    return status if _changed(status, flow.status) else None


def write_status(namespace: str, name: str, status: Manifest) -> None:
    custom = kubernetes.client.CustomObjectsApi()
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})


@kopf.index(GROUP, VERSION, PLURAL)
def dataflows(namespace: str | None, name: str | None, body: kopf.Body, **_: Any) -> dict[Key, Manifest]:
    """Every Dataflow as last seen by the watch, by (namespace, name)."""
    return {(namespace or "default", name or ""): copy.deepcopy(dict(body))}


def _index_children(kind: str) -> None:
    group, version, plural = CHILDREN[kind]

    def index(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Manifest]:
        return {(namespace or "default", labels[DATAFLOW_LABEL]): copy.deepcopy(dict(body))}

    async def event(type: str | None, namespace: str | None, name: str | None, labels: kopf.Labels, **_: Any) -> None:
        key = (namespace or "default", labels[DATAFLOW_LABEL])
        flow = _flows.get(key)
        if flow is None:
            return  # no Dataflow (yet): its daemon starts with a reconcile anyway
        if type == "DELETED":
            # Whatever this operator applied or deleted last is gone now: make it again if wanted.
            flow.memory.pop((kind, name or ""), None)
        flow.wake.set()

    index.__name__ = event.__name__ = kind.lower()
    kopf.index(group, version, plural, labels=OWNED, id=f"{kind.lower()}s")(index)
    kopf.on.event(group, version, plural, labels=OWNED, id=f"{kind.lower()}_changed")(event)


for _kind in CHILDREN:
    _index_children(_kind)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def dataflow_changed(type: str | None, namespace: str | None, name: str | None, **_: Any) -> None:
    key = (namespace or "default", name or "")
    if type == "DELETED":
        _flows.pop(key, None)
    elif key in _flows:
        _flows[key].wake.set()


def _seen(key: Key, indexes: dict[str, Any]) -> dict[str, list[Manifest]]:
    """The children of ``key`` by kind, as the indexes have them now (copied on the event loop,
    where kopf changes them)."""
    return {kind: list(indexes[f"{kind.lower()}s"].get(key, [])) for kind in CHILDREN}


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10)
async def run_dataflow(
    namespace: str | None, name: str | None, body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Reconcile the Dataflow whenever it or one of its children changes, for as long as it
    exists and this operator is the active one."""
    key = (namespace or "default", name or "")
    flow = _flow(key)
    # Start from what the cluster says: another operator may have been the active one since.
    flow.status = copy.deepcopy(dict(body.get("status") or {}))
    flow.memory.clear()
    flow.wake.set()  # the first reconcile: at creation, on start-up, on taking over
    index = cast(kopf.Index[Key, Manifest], kwargs["dataflows"])
    while not stopped:
        # Woken by an event, or by the resync; a deletion or a pause stops it at once.
        waiters = {asyncio.ensure_future(flow.wake.wait()), asyncio.ensure_future(stopped.wait())}
        _, pending = await asyncio.wait(waiters, timeout=RESYNC_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        if stopped:
            break
        await asyncio.sleep(SETTLE_SECONDS)
        flow.wake.clear()
        latest = next(iter(index.get(key, ())), None)
        if latest is None or latest["metadata"].get("deletionTimestamp"):
            continue  # being deleted: the garbage collector takes its children
        started = time.perf_counter()
        try:
            seen = _seen(key, kwargs)
            if await asyncio.to_thread(learn_steps, flow, latest, seen["Pod"]):
                _retry(flow)
            started = time.perf_counter()  # the reconcile's own time, without the question
            status = await asyncio.to_thread(reconcile_once, flow, latest, seen)
            flow.reconciles += 1
            if status is not None:
                await asyncio.to_thread(write_status, key[0], key[1], status)
                _announce(latest, flow.status or {}, status)
                flow.status = {**(flow.status or {}), **status}
            METRICS.reconciled("unchanged" if status is None else "changed", time.perf_counter() - started)
        except ApiException as exc:
            if exc.status == 404:
                continue  # the Dataflow went meanwhile
            METRICS.reconciled("error", time.perf_counter() - started, exc)
            log.warning("reconciling %s/%s: %s %s; trying again", *key, exc.status, exc.reason)
            _retry(flow)
        except Exception as exc:
            METRICS.reconciled("error", time.perf_counter() - started, exc)
            log.exception("reconciling %s/%s failed; trying again", *key)
            _retry(flow)


def _retry(flow: Flow) -> None:
    asyncio.get_running_loop().call_later(RETRY_SECONDS, flow.wake.set)
