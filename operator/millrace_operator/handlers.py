"""The kopf handlers: thin, each one a call to :func:`reconcile` for the Dataflow concerned.

A Dataflow is reconciled when it is created, changed or found at start-up, when one of its
pods changes, and on a timer as a safety net. Handlers never raise on a malformed resource:
its status says what is wrong instead.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import defaultdict
from typing import Any, cast

import kopf
import kubernetes

from .kube import Kube
from .manifests import DATAFLOW_LABEL
from .reconcile import reconcile
from .spec import SpecError

GROUP, VERSION, PLURAL = "millrace.dev", "v1alpha1", "dataflows"
log = logging.getLogger("millrace.operator")


# kopf runs the Dataflow's handlers and its pods' handlers concurrently (in threads). Two
# reconciles of one Dataflow at once could each apply the Jobs of what its own view of the spec
# says, and delete the Jobs the other just made: one at a time instead.
_reconciling: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="millrace.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="millrace.dev")
    settings.posting.level = logging.WARNING
    # Least privilege: no cluster-wide watching of CRDs and namespaces. The CRD must exist when
    # the operator starts (Helm installs it first); the watched namespaces are given explicitly.
    settings.scanning.disabled = True


def _announce(body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
    """A Kubernetes event on every phase change, so ``kubectl describe df`` tells the story."""
    if new.get("phase") != old.get("phase"):
        kind = "Warning" if new.get("phase") == "Failed" else "Normal"
        # kopf reads the object reference (apiVersion, kind, metadata) off any mapping.
        kopf.event(cast(kopf.Body, body), type=kind, reason=str(new.get("phase")), message=str(new.get("message", "")))


def _reconcile_into(body: dict[str, Any], patch: kopf.Patch) -> None:
    df = {
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }
    try:
        with _reconciling[df["metadata"].get("namespace", "default"), df["metadata"]["name"]]:
            status = reconcile(Kube(), df, now())
    except SpecError as exc:
        status = {
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
    if status != {k: v for k, v in df["status"].items() if k in status}:
        patch.status.update(status)
        _announce(body, df["status"], status)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.timer(GROUP, VERSION, PLURAL, interval=10, idle=5)
def dataflow_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    _reconcile_into(dict(body), patch)


@kopf.on.event("", "v1", "pods", labels={DATAFLOW_LABEL: kopf.PRESENT})
def pod_changed(meta: kopf.Meta, namespace: str | None, **_: Any) -> None:
    """Follow the pods: reconcile their Dataflow and write its status."""
    assert namespace is not None  # pods are namespaced
    name = meta["labels"][DATAFLOW_LABEL]
    custom = kubernetes.client.CustomObjectsApi()
    with _reconciling[namespace, name]:
        try:
            # Read under the lock: the newest spec, not one an earlier reconcile has undone.
            body = cast(dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except kubernetes.client.rest.ApiException as exc:
            if exc.status == 404:
                return  # the Dataflow is gone; its pods go with it
            raise
        try:
            status = reconcile(Kube(), body, now())
        except SpecError:
            return  # the Dataflow's own handler reports it
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
    _announce(body, body.get("status") or {}, status)
