"""The chart grants the operator exactly the permissions its calls need, no more, no fewer.

The needed permissions are not written down by hand: the operator runs a whole Dataflow life
(create, pods coming and going, a spec change that restarts every pod, a claim-template change
that replaces the StatefulSet, a larger volume size that grows the claims, a flow moving from code to a module, a failure, deletion of children) against kmock, which records every
request; each request maps to an RBAC (apiGroup, resource, verb). The chart's rules, rendered by
helm for the cluster-wide and for the namespaced install, must equal that set.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
import pytest

from tests.support.helm import render, require_helm

from .kopf_harness import (  # noqa: F401 - cluster is a fixture
    CLAIMS, CONFIGMAPS, DATAFLOWS, PODS, STATEFULSETS, TEST_AGENT, Operator, as_test, cluster, dataflow, login, obj, phase, play_claims, play_kubelet, until,
)

pytestmark = pytest.mark.timeout(120)

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
        permission = (request.resource.group or "", resource, _verb(request))
        (namespaced if request.namespace else cluster_wide).add(permission)
    return cluster_wide, namespaced


async def _a_dataflow_life(cluster) -> None:
    """Every path of the operator: each API call it can make happens at least once."""
    custom = as_test(kubernetes.client.CustomObjectsApi)

    async def patch_spec(spec: dict[str, Any]) -> None:
        await asyncio.to_thread(custom.patch_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs",
                                "dataflows", "wc", {"spec": spec})

    await until(lambda: obj(cluster, STATEFULSETS, "wc") is not None)
    await play_kubelet(cluster, "wc", ready=True)
    await until(lambda: phase(cluster) == "Running")
    # A restart: every child is patched and the old pods are deleted.
    await patch_spec({"processes": 3})
    await until(lambda: obj(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 3)
    await until(lambda: all(obj(cluster, PODS, f"wc-{i}") is None for i in range(2)))
    # Claim templates are immutable: another storage class replaces the StatefulSet.
    await patch_spec({"recovery": {"enabled": True, "storageClassName": "standard"}})

    def replaced() -> bool:
        sts = obj(cluster, STATEFULSETS, "wc")
        claims = (sts or {}).get("spec", {}).get("volumeClaimTemplates") or [{}]
        return claims[0].get("spec", {}).get("storageClassName") == "standard"

    await until(replaced)
    # A larger size: the claims grow in place.
    await play_claims(cluster, "wc")
    await patch_spec({"recovery": {"enabled": True, "volumeSize": "3Gi"}})

    def grown() -> bool:
        claim = obj(cluster, CLAIMS, "recovery-wc-0") or {}
        conditions = ((obj(cluster, DATAFLOWS, "wc") or {}).get("status") or {}).get("conditions") or []
        # The condition is written once the whole reconcile is done (the StatefulSet too).
        return claim.get("spec", {}).get("resources", {}).get("requests", {}).get("storage") == "3Gi" and any(
            c["type"] == "VolumeSize" and c["message"].endswith("3Gi") for c in conditions)

    await until(grown)
    # The flow moves from code to a module: its ConfigMap is deleted, the pods restarted.
    def template() -> dict[str, Any]:
        return (obj(cluster, STATEFULSETS, "wc") or {}).get("spec", {}).get("template", {})

    before = template()
    await patch_spec({"flow": {"code": None, "module": "flows.count:flow"}})
    await until(lambda: obj(cluster, CONFIGMAPS, "wc-flow") is None and template() != before)
    # A failure, announced by a Warning event.
    message = "millrace: failed: ZeroDivisionError: division by zero"
    await play_kubelet(cluster, "wc", ready=False, crash_loop=(1, message, 5))
    await until(lambda: phase(cluster) == "Failed")
    await until(lambda: any(r.resource and r.resource.plural == "events" for r in list(cluster)))


async def _record(cluster, args: list[str]) -> tuple[set[Permission], set[Permission]]:
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow(recovery={"enabled": True})
    login(str(cluster.url).rstrip("/"))
    async with Operator(args) as runner:
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
    return [m for m in manifests if m["kind"] in ("ClusterRole", "Role")
            and "helm.sh/hook" not in (m["metadata"].get("annotations") or {})]


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
