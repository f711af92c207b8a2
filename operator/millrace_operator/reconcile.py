"""One reconcile of a Dataflow: bring its children to the desired state and compute its status.

Level-based and idempotent: it applies what the spec says (server-side apply), deletes what the
spec no longer has, and can run any number of times. A change of the pod template (anything in
:func:`.manifests.template_hash`: image, code, env, resources, process count, restartNonce...)
restarts every process together: the operator deletes the Jobs of the old template and starts
the new ones only once every old pod is gone, so old and new processes never meet and no new
pod waits on an old one.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, Protocol

from . import manifests, volumes
from .spec import parse_spec
from .status import TERMINAL, compute_status, volume_size_condition

Manifest = dict[str, Any]


class Refused(Exception):
    """The API server refused a write as invalid or forbidden; the message is its own."""


class Api(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> Manifest | None: ...
    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[Manifest]: ...
    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply; :class:`Refused` with the API server's reason if it refuses."""
        ...

    def delete(self, kind: str, namespace: str, name: str) -> None: ...


def _cluster_key(api: Api, df: Manifest) -> str:
    """The existing key, or a new one; a running cluster's key never changes."""
    name, namespace = df["metadata"]["name"], df["metadata"].get("namespace", "default")
    existing = api.get("Secret", namespace, manifests.secret_name(name))
    if existing and (existing.get("data") or {}).get("key"):
        return base64.b64decode(existing["data"]["key"]).decode()
    return secrets.token_urlsafe(32)


def _name(obj: Manifest) -> str:
    return str(obj["metadata"]["name"])


def reconcile(api: Api, df: Manifest, now: str, steps: tuple[str, list[str]] | None = None) -> Manifest:
    """Make the children match ``df``; return the status ``df`` should have (with ``steps``, the
    flow's steps as a pod of the template ``steps[0]`` said them: see :mod:`.steps`)."""
    name, namespace = df["metadata"]["name"], df["metadata"].get("namespace", "default")
    spec = parse_spec(df.get("spec"))
    for child in manifests.children(df, _cluster_key(api, df)):
        api.apply(child)
    for kind, child_name in manifests.stale_children(df):
        if api.get(kind, namespace, child_name) is not None:
            api.delete(kind, namespace, child_name)
    selector = manifests.selector(name)
    pods = api.list("Pod", namespace, selector)
    jobs = api.list("Job", namespace, selector)
    status = compute_status(df, pods, now, steps, jobs)
    current = manifests.template_hash(spec)
    # The pod template each process's Job gets from this operator, by Job name and process.
    built = {_name(job): manifests.pod_template_hash_of(job) for job in manifests.jobs(df, suspend=False)}
    finished = status["phase"] in TERMINAL

    def outdated_template(obj: Manifest, job: str) -> bool:
        """Made for another spec; or, but for a finished flow (left as it ended), by an operator
        that built another pod template from the same spec (an upgrade, maybe of the default
        image): a Job's pod template cannot change, its pods must be replaced."""
        if finished:
            return not manifests.made_for(spec, obj)
        return manifests.template_hash_of(obj) != current or manifests.pod_template_hash_of(obj) != built.get(job)

    outdated = [job for job in jobs if _name(job) not in built or outdated_template(job, _name(job))]
    for job in outdated:
        if not job["metadata"].get("deletionTimestamp"):
            api.delete("Job", namespace, _name(job))
    leftover = [pod for pod in pods if outdated_template(pod, _job_of(name, pod))]
    if outdated or leftover:
        status["message"] = f"restarting: waiting for {len(leftover)} pods of the previous pod template to stop"
        return status
    if spec.recovery.enabled:
        problem = _claims(api, df, namespace, selector)
        if isinstance(problem, str):
            status["message"] = "restarting: replacing the recovery volumes"
            return status
        status["conditions"].append(volume_size_condition(df, problem, now))
    else:
        for claim in api.list("PersistentVolumeClaim", namespace, selector):
            api.delete("PersistentVolumeClaim", namespace, _name(claim))
    suspend = spec.suspend or status["phase"] == "Failed"
    existing = {_name(job): job for job in api.list("Job", namespace, selector)}
    for job in manifests.jobs(df, suspend=suspend):
        found = existing.get(_name(job))
        if found is not None and manifests.pod_template_hash_of(found) != built[_name(job)]:
            continue  # a finished flow's Job from an older operator: its pod template is immutable
        api.apply(job)
    return status


def _job_of(name: str, pod: Manifest) -> str:
    """The name of the Job of ``pod``'s process."""
    return manifests.job_name(name, int((pod["metadata"].get("labels") or {}).get(manifests.PROCESS_LABEL, -1)))


def _claims(api: Api, df: Manifest, namespace: str, selector: dict[str, str]) -> tuple[str, str] | str | None:
    """Make every process's recovery claim; ``"replacing"`` while claims of another kind are
    being deleted, ``(reason, message)`` when the size cannot be had, else ``None``."""
    plan = volumes.claim_plan(
        api.list("PersistentVolumeClaim", namespace, selector),
        manifests.claims(df),
        parse_spec(df.get("spec")).recovery.volume_size,
    )
    if plan.replace:
        for replaced in plan.replace:
            api.delete("PersistentVolumeClaim", namespace, replaced)
        return "replacing"
    for claim in plan.create:
        api.apply(claim)
    failures = []
    for claim in plan.grow:
        try:
            api.apply(claim)
        except Refused as exc:
            failures.append(f"{_name(claim)}: {exc}")
    if failures:
        return "ResizeFailed", (
            f"could not grow the recovery volumes to {plan.size} (does their storage class "
            f"allow volume expansion?): {'; '.join(failures)}"
        )
    refusal = plan.refusal()
    return None if refusal is None else ("ShrinkRefused", refusal)
