"""One reconcile of a Dataflow: bring its children to the desired state and compute its status.

Level-based and idempotent: it reads what exists, creates what is missing, patches what
differs, deletes what the spec no longer has, and can run any number of times. A change of the pod template restarts every pod at
once (the StatefulSet uses the OnDelete strategy and the operator deletes the old pods), so
old and new address lists never form one cluster. A change of the recovery volumes' size
grows the claims in place (see :mod:`.volumes`); any other change of the claim templates
replaces the StatefulSet.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, Protocol

from . import manifests, volumes
from .spec import parse_spec
from .status import compute_status, desired_replicas, volume_size_condition

Manifest = dict[str, Any]


class Api(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> Manifest | None: ...
    def apply(self, manifest: Manifest, *, patch: bool = True) -> Manifest: ...
    def patch(self, kind: str, namespace: str, name: str, body: Manifest) -> Manifest: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def pods(self, namespace: str, selector: dict[str, str]) -> list[Manifest]: ...
    def delete_pods(self, namespace: str, selector: dict[str, str]) -> None: ...
    def claims(self, namespace: str, selector: dict[str, str]) -> list[Manifest]: ...
    def resize_claim(self, namespace: str, name: str, size: str) -> str | None:
        """Ask for ``size``; return why the API server refused, if it did."""
        ...


def _cluster_key(api: Api, df: Manifest) -> str:
    """The existing key, or a new one; a running cluster's key never changes."""
    name, namespace = df["metadata"]["name"], df["metadata"].get("namespace", "default")
    existing = api.get("Secret", namespace, manifests.secret_name(name))
    if existing and (existing.get("data") or {}).get("key"):
        return base64.b64decode(existing["data"]["key"]).decode()
    return secrets.token_urlsafe(32)


def _template_hash(sts: Manifest) -> str | None:
    template = (sts.get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("annotations") or {}).get(manifests.TEMPLATE_HASH)


def reconcile(api: Api, df: Manifest, now: str) -> Manifest:
    """Make the children match ``df``; return the status ``df`` should have."""
    name, namespace = df["metadata"]["name"], df["metadata"].get("namespace", "default")
    key = _cluster_key(api, df)
    desired = manifests.children(df, key)
    for child in desired:
        if child["kind"] == "Secret":
            api.apply(child, patch=False)
        elif child["kind"] != "StatefulSet":
            api.apply(child)
    for kind, child_name in manifests.stale_children(df):
        if api.get(kind, namespace, child_name) is not None:
            api.delete(kind, namespace, child_name)
    selector = manifests.selector(name)
    status = compute_status(df, api.pods(namespace, selector), now)
    sts = next(child for child in desired if child["kind"] == "StatefulSet")
    sts["spec"]["replicas"] = desired_replicas(df, status)
    existing = api.get("StatefulSet", namespace, name)
    if existing is None:
        api.apply(sts)
        return status
    templates = sts["spec"].get("volumeClaimTemplates") or []
    change = volumes.template_change((existing.get("spec") or {}).get("volumeClaimTemplates") or [], templates)
    if change == "other":
        # Claim templates are immutable: replace the StatefulSet (its pods go with it).
        api.delete("StatefulSet", namespace, name)
        return status
    if templates:
        problem = _grow_claims(api, df, namespace, selector)
        status["conditions"].append(volume_size_condition(df, problem, now))
    old_hash = _template_hash(existing)
    api.patch("StatefulSet", namespace, name, {"spec": {
        "replicas": sts["spec"]["replicas"],
        "template": sts["spec"]["template"],
        "updateStrategy": sts["spec"]["updateStrategy"],
    }})
    if old_hash != _template_hash(sts):
        api.delete_pods(namespace, selector)
    return status


def _grow_claims(api: Api, df: Manifest, namespace: str, selector: dict[str, str]) -> tuple[str, str] | None:
    """Grow every recovery claim to the spec's size; ``(reason, message)`` if some cannot."""
    plan = volumes.resize_plan(api.claims(namespace, selector), parse_spec(df.get("spec")).recovery.volume_size)
    failures = []
    for claim in plan.grow:
        refused = api.resize_claim(namespace, claim, plan.size)
        if refused is not None:
            failures.append(f"{claim}: {refused}")
    if failures:
        return "ResizeFailed", (
            f"could not grow the recovery volumes to {plan.size} (does their storage class "
            f"allow volume expansion?): {'; '.join(failures)}"
        )
    refusal = plan.refusal()
    return None if refusal is None else ("ShrinkRefused", refusal)
