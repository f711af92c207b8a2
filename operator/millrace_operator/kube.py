"""The few Kubernetes API calls the operator makes, over the official client, as plain dicts.

Every child is written with server-side apply under the operator's own field manager (what
``kubectl apply --server-side --force-conflicts`` does): the API server merges what the
operator says now with what it said before, so a field the spec no longer has disappears from
the child, a create that races another is no error, and fields other controllers own (the Job
controller's selector, the defaults) are left alone.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .reconcile import Refused

Manifest = dict[str, Any]

FIELD_MANAGER = "millrace-operator"
_APPLY = "application/apply-patch+yaml"


class Kube:
    """Typed API groups behind one small dict-in, dict-out interface (see :class:`.reconcile.Api`)."""

    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()
        core = kubernetes.client.CoreV1Api(self.client)
        batch = kubernetes.client.BatchV1Api(self.client)
        networking = kubernetes.client.NetworkingV1Api(self.client)
        self._apis = {
            "Service": ("namespaced_service", core),
            "ConfigMap": ("namespaced_config_map", core),
            "Secret": ("namespaced_secret", core),
            "Pod": ("namespaced_pod", core),
            "PersistentVolumeClaim": ("namespaced_persistent_volume_claim", core),
            "Job": ("namespaced_job", batch),
            "NetworkPolicy": ("namespaced_network_policy", networking),
        }

    def _call(self, verb: str, kind: str) -> Any:
        suffix, api = self._apis[kind]
        return getattr(api, f"{verb}_{suffix}")

    def _plain(self, obj: Any) -> Manifest:
        return self.client.sanitize_for_serialization(obj)

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        try:
            return self._plain(self._call("read", kind)(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[Manifest]:
        label_selector = ",".join(f"{key}={value}" for key, value in selector.items())
        found = self._call("list", kind)(namespace, label_selector=label_selector)
        return [self._plain(item) for item in found.items]

    def apply(self, manifest: Manifest) -> Manifest:
        meta = manifest["metadata"]
        try:
            applied = self._call("patch", manifest["kind"])(
                meta["name"],
                meta["namespace"],
                manifest,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=_APPLY,
            )
        except ApiException as exc:
            if exc.status in (403, 422):  # e.g. a claim whose storage class cannot expand
                raise Refused(_reason(exc)) from None
            raise
        return self._plain(applied)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        # Foreground: a Job stays listed until its pods are gone, which the operator waits for
        # before it starts the pods of a new template.
        body = kubernetes.client.V1DeleteOptions(propagation_policy="Foreground")
        try:
            self._call("delete", kind)(name, namespace, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _reason(exc: ApiException) -> str:
    """The API server's message in an error response, or the error itself."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"
