"""The chart grants the operator exactly the permissions its calls need, no more, no fewer.

The needed permissions are not written down by hand: the operator runs a whole Dataflow life
(create, pods coming and going, a rescale that restarts every pod, a storage-class change that
replaces the recovery claims, a larger volume size that grows them, a flow moving from code to
a module, recovery turned off, suspend and resume, a failure, the Dataflow's deletion) against
kmock, which records every request; each request maps to RBAC (apiGroup, resource, verb)s. The
chart's rules, rendered by helm for the cluster-wide and for the namespaced install, must equal
that set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kubernetes
import pytest

from tests.support.helm import render, require_helm

from .kopf_harness import (  # noqa: F401 - cluster is a fixture
    APPLY,
    CLAIMS,
    CONFIGMAPS,
    DATAFLOWS,
    TEST_AGENT,
    Operator,
    as_test,
    cluster,
    dataflow,
    jobs_of,
    login,
    obj,
    patch_spec,
    phase,
    play_garbage_collector,
    play_kubelet,
    template_hash,
    until,
)

pytestmark = pytest.mark.timeout(180)

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Needed though no request shows it: children carry ownerReferences with blockOwnerDeletion, and
# the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift, for one) allows that
# only to whoever may update the owner's finalizers. kmock runs no admission plugins.
ADMISSION: set[Permission] = {("millrace.dev", "dataflows/finalizers", "update")}

OPERATOR = ["run", "--standalone", "-m", "millrace_operator.handlers"]


def _verb(request: Any) -> str:
    """The RBAC verb of a request, as the API server's authorizer names it."""
    method = request.method.value.upper()
    if method == "GET":
        if request.action is not None and request.action.value.lower() == "watch":
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]


def _server_side_apply(request: Any) -> bool:
    content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
    return request.method.value.upper() == "PATCH" and content_type.split(";")[0].strip() == APPLY


def _verbs(request: Any) -> set[str]:
    """Every verb the authorizer checks for a request. A server-side apply is a PATCH that
    creates the object when it does not exist, and the API server then authorizes it as a
    create too: whatever the operator applies, it must also be allowed to create (whether or
    not the object happened to exist when this test's request was made)."""
    verb = _verb(request)
    return {verb, "create"} if _server_side_apply(request) else {verb}


def _permissions(requests: Any) -> tuple[set[Permission], set[Permission]]:
    """(cluster-wide, per-namespace) permissions that the recorded requests exercised."""
    cluster_wide: set[Permission] = set()
    namespaced: set[Permission] = set()
    for request in requests:
        if request.headers.get("User-Agent") == TEST_AGENT:
            continue  # the test playing a controller or the user
        if request.resource is None or request.resource.plural is None:
            continue  # API discovery (/api, /apis/...): open to every authenticated client
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        for verb in _verbs(request):
            (namespaced if request.namespace else cluster_wide).add((request.resource.group or "", resource, verb))
    return cluster_wide, namespaced


@contextlib.asynccontextmanager
async def _garbage_collector(cluster) -> AsyncIterator[None]:
    """The garbage collector, all along: Foreground deletions of Jobs finish once their pods
    are gone, as in a cluster."""

    async def collect() -> None:
        while True:
            await play_garbage_collector(cluster)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(collect())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _claims(cluster) -> dict[str, dict[str, Any]]:
    return {
        name: obj(cluster, CLAIMS, name)
        for name in (f"recovery-wc-{i}" for i in range(3))
        if obj(cluster, CLAIMS, name) is not None
    }


def _volume_size(cluster) -> dict[str, Any]:
    conditions = ((obj(cluster, DATAFLOWS, "wc") or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "VolumeSize"), {})


async def _a_dataflow_life(cluster) -> None:
    """Every path of the operator: each API call it can make happens at least once."""

    def restarted(processes: int, old: set[str | None]) -> bool:
        jobs = jobs_of(cluster)
        return len(jobs) == processes and not {template_hash(j) for j in jobs.values()} & old

    def hashes() -> set[str | None]:
        return {template_hash(j) for j in jobs_of(cluster).values()}

    await until(lambda: len(jobs_of(cluster)) == 2 and len(_claims(cluster)) == 2)
    await play_kubelet(cluster, ready=True)
    await until(lambda: phase(cluster) == "Running")
    # A rescale restarts every process: the old Jobs are deleted, new ones come once their pods are gone.
    old = hashes()
    await patch_spec({"processes": 3})
    await until(lambda: restarted(3, old) and len(_claims(cluster)) == 3)
    await play_kubelet(cluster, ready=True)
    await until(lambda: phase(cluster) == "Running")
    # Another storage class: a claim's class cannot change, so the claims are replaced.
    old = hashes()
    await patch_spec({"recovery": {"enabled": True, "storageClassName": "standard"}})
    await until(
        lambda: (
            restarted(3, old)
            and len(_claims(cluster)) == 3
            and all(c["spec"].get("storageClassName") == "standard" for c in _claims(cluster).values())
        )
    )
    # A larger size: the claims grow in place.
    await patch_spec({"recovery": {"enabled": True, "volumeSize": "3Gi"}})
    await until(
        lambda: (
            all(c["spec"]["resources"]["requests"]["storage"] == "3Gi" for c in _claims(cluster).values())
            and _volume_size(cluster).get("message", "").endswith("3Gi")
        )
    )
    # The flow moves from code to a module: its ConfigMap is deleted, the processes restarted.
    old = hashes()
    await patch_spec({"flow": {"code": None, "module": "flows.count:flow"}})
    await until(lambda: obj(cluster, CONFIGMAPS, "wc-flow") is None and restarted(3, old))
    # Recovery turned off: the claims go.
    await patch_spec({"recovery": {"enabled": False}})
    await until(lambda: not _claims(cluster) and len(jobs_of(cluster)) == 3)
    # Suspended and resumed.
    await patch_spec({"suspend": True})
    await until(lambda: phase(cluster) == "Suspended" and all(j["spec"]["suspend"] for j in jobs_of(cluster).values()))
    await patch_spec({"suspend": False})
    await until(
        lambda: phase(cluster) == "Pending" and not any(j["spec"]["suspend"] for j in jobs_of(cluster).values())
    )
    # A failure, announced by a Warning event.
    message = "millrace: failed: ZeroDivisionError: division by zero"
    await play_kubelet(cluster, ready=False, crash_loop=(1, message, 5))
    await until(lambda: phase(cluster) == "Failed")
    await until(lambda: any(r.resource and r.resource.plural == "events" for r in list(cluster)))
    # The Dataflow is deleted (its children go with it, by their ownerReferences).
    custom = as_test(kubernetes.client.CustomObjectsApi)
    await asyncio.to_thread(
        custom.delete_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs", "dataflows", "wc"
    )
    await until(lambda: obj(cluster, DATAFLOWS, "wc") is None)


async def _record(cluster, args: list[str]) -> tuple[set[Permission], set[Permission]]:
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow(recovery={"enabled": True})
    login(str(cluster.url).rstrip("/"))
    async with Operator(args) as runner, _garbage_collector(cluster):
        await _a_dataflow_life(cluster)
    assert runner.exit_code == 0, runner.output
    return _permissions(list(cluster))


def _rules(manifests: list[dict[str, Any]], kind: str) -> set[Permission]:
    found: set[Permission] = set()
    for manifest in manifests:
        if manifest["kind"] != kind:
            continue
        for rule in manifest["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), rule
                        found.add((group, resource, verb))
    return found


def _operator_rules(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's roles (not those of the `helm test` hook)."""
    return [
        m
        for m in manifests
        if m["kind"] in ("ClusterRole", "Role") and "helm.sh/hook" not in (m["metadata"].get("annotations") or {})
    ]


async def test_cluster_wide_install_grants_exactly_what_the_operator_uses(cluster):
    require_helm()
    cluster_wide, namespaced = await _record(cluster, [*OPERATOR, "--all-namespaces"])
    rendered = _operator_rules(render())
    assert not [m for m in rendered if m["kind"] == "Role"]
    # A cluster-wide operator lists and watches across namespaces: one ClusterRole holds all.
    assert _rules(rendered, "ClusterRole") == cluster_wide | namespaced | ADMISSION


async def test_namespaced_install_grants_exactly_what_the_operator_uses(cluster):
    require_helm()
    cluster_wide, namespaced = await _record(cluster, [*OPERATOR, "--namespace", "jobs"])
    rendered = _operator_rules(render({"watchNamespaces": ["jobs", "etl"]}))
    roles = [m for m in rendered if m["kind"] == "Role"]
    assert sorted(m["metadata"]["namespace"] for m in roles) == ["etl", "jobs"]
    for role in roles:
        assert _rules([role], "Role") == namespaced | ADMISSION
    assert cluster_wide == set()
    assert not [m for m in rendered if m["kind"] == "ClusterRole"]
