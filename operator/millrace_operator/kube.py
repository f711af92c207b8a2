"""The few Kubernetes API calls the operator makes, over the official client, as plain dicts.

Creating an object that exists (a 409, e.g. after a restart of the operator) falls back to
reading and patching it, so every reconcile is idempotent.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

Manifest = dict[str, Any]


class Kube:
    """Typed API groups behind one small dict-in, dict-out interface."""

    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.networking = kubernetes.client.NetworkingV1Api(self.client)

    def _plain(self, obj: Any) -> Manifest:
        return self.client.sanitize_for_serialization(obj)

    def _calls(self, kind: str) -> tuple[Any, Any, Any, Any]:
        table = {
            "Service": ("namespaced_service", self.core),
            "ConfigMap": ("namespaced_config_map", self.core),
            "Secret": ("namespaced_secret", self.core),
            "StatefulSet": ("namespaced_stateful_set", self.apps),
            "NetworkPolicy": ("namespaced_network_policy", self.networking),
        }
        suffix, api = table[kind]
        return (
            getattr(api, f"read_{suffix}"),
            getattr(api, f"create_{suffix}"),
            getattr(api, f"patch_{suffix}"),
            getattr(api, f"delete_{suffix}"),
        )

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        read, _, _, _ = self._calls(kind)
        try:
            return self._plain(read(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, manifest: Manifest, *, patch: bool = True) -> Manifest:
        """Create ``manifest``, or patch the existing object (unless ``patch`` is false)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        _, create, patch_call, _ = self._calls(kind)
        try:
            return self._plain(create(meta["namespace"], manifest))
        except ApiException as exc:
            if exc.status != 409:
                raise
        if not patch:
            existing = self.get(kind, meta["namespace"], meta["name"])
            assert existing is not None
            return existing
        return self._plain(patch_call(meta["name"], meta["namespace"], manifest))

    def patch(self, kind: str, namespace: str, name: str, body: Manifest) -> Manifest:
        _, _, patch_call, _ = self._calls(kind)
        return self._plain(patch_call(name, namespace, body))

    def delete(self, kind: str, namespace: str, name: str) -> None:
        _, _, _, delete = self._calls(kind)
        try:
            delete(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pods(self, namespace: str, selector: dict[str, str]) -> list[Manifest]:
        label_selector = ",".join(f"{key}={value}" for key, value in selector.items())
        found = self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        return [self._plain(pod) for pod in found.items]

    def claims(self, namespace: str, selector: dict[str, str]) -> list[Manifest]:
        label_selector = ",".join(f"{key}={value}" for key, value in selector.items())
        found = self.core.list_namespaced_persistent_volume_claim(namespace, label_selector=label_selector)
        return [self._plain(claim) for claim in found.items]

    def resize_claim(self, namespace: str, name: str, size: str) -> str | None:
        body = {"spec": {"resources": {"requests": {"storage": size}}}}
        try:
            self.core.patch_namespaced_persistent_volume_claim(name, namespace, body)
        except ApiException as exc:
            if exc.status in (403, 422):  # e.g. a storage class without volume expansion
                return _reason(exc)
            raise
        return None

    def delete_pods(self, namespace: str, selector: dict[str, str]) -> None:
        """Delete every pod of the selector, one by one (needs only the ``delete`` verb)."""
        for pod in self.pods(namespace, selector):
            try:
                self.core.delete_namespaced_pod(pod["metadata"]["name"], namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def _reason(exc: ApiException) -> str:
    """The API server's message in an error response, or the error itself."""
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"
