"""Observed: reads from what the watches saw, writes only what would change something."""

from __future__ import annotations

import copy
from typing import Any

from millrace_operator.observed import APPLIED_HASH, Observed, applied_hash, hash_of, stamped

Manifest = dict[str, Any]


class Cluster:
    """A fake API server that records every request (Observed's only collaborator)."""

    def __init__(self, objects: list[Manifest] | None = None) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects or []}
        self.requests: list[tuple[str, str, str]] = []

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        self.requests.append(("get", kind, name))
        return self.objects.get((kind, name))

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[Manifest]:
        self.requests.append(("list", kind, ""))
        return [o for (k, _), o in self.objects.items() if k == kind]

    def apply(self, manifest: Manifest) -> Manifest:
        self.requests.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        self.objects[manifest["kind"], manifest["metadata"]["name"]] = copy.deepcopy(manifest)
        return manifest

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.requests.append(("delete", kind, name))
        self.objects.pop((kind, name), None)


def service(port: int = 9000) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "wc", "namespace": "ns", "labels": {"millrace.dev/dataflow": "wc"}},
        "spec": {"ports": [{"port": port}]},
    }


def test_an_applied_manifest_carries_its_hash_and_the_hash_ignores_itself():
    applied = stamped(service())
    assert hash_of(applied) == applied_hash(service()) == applied_hash(applied)
    assert applied_hash(service(9001)) != applied_hash(service())


def test_what_the_watch_shows_already_applied_is_not_sent_again():
    cluster, memory = Cluster(), {}
    watched = {"Service": [stamped(service())]}  # e.g. after a restart of the operator
    Observed(cluster, watched, memory).apply(service())
    assert cluster.requests == []


def test_what_was_applied_last_is_not_sent_again_while_the_watch_lags():
    cluster, memory = Cluster(), {}
    first = Observed(cluster, {}, memory)
    first.apply(service())
    stale = {"Service": [stamped(service(8000))]}  # the watch still shows an older one
    Observed(cluster, stale, memory).apply(service())
    assert cluster.requests == [("apply", "Service", "wc")]
    assert first.writes == 1


def test_a_change_is_applied_and_a_child_gone_from_memory_is_made_again():
    cluster, memory = Cluster(), {}
    Observed(cluster, {}, memory).apply(service())
    Observed(cluster, {}, memory).apply(service(9001))
    memory.pop(("Service", "wc"))  # the watch reported it deleted
    Observed(cluster, {}, memory).apply(service(9001))
    assert cluster.requests == [("apply", "Service", "wc")] * 3
    assert cluster.objects["Service", "wc"]["metadata"]["annotations"][APPLIED_HASH] == applied_hash(service(9001))


def test_a_deletion_is_sent_once_while_the_watch_still_shows_the_child():
    watched = {"Job": [{"kind": "Job", "metadata": {"name": "wc-0", "labels": {}}}]}
    cluster, memory = Cluster(), {}
    for _ in range(3):
        api = Observed(cluster, watched, memory)
        for job in api.list("Job", "ns", {}):
            api.delete("Job", "ns", job["metadata"]["name"])
    assert cluster.requests == [("delete", "Job", "wc-0")]


def test_reads_come_from_the_watch_but_an_unseen_secret_is_read_rather_than_made_anew():
    secret = {"kind": "Secret", "metadata": {"name": "wc-cluster-key"}, "data": {"key": "a2V5"}}
    cluster, memory = Cluster([secret]), {}
    api = Observed(
        cluster, {"ConfigMap": [{"kind": "ConfigMap", "metadata": {"name": "wc-flow", "labels": {}}}]}, memory
    )
    assert api.get("ConfigMap", "ns", "wc-flow") is not None
    assert api.get("ConfigMap", "ns", "other") is None
    assert api.list("Pod", "ns", {"millrace.dev/dataflow": "wc"}) == []
    assert cluster.requests == []
    assert api.get("Secret", "ns", "wc-cluster-key") == secret
    assert cluster.requests == [("get", "Secret", "wc-cluster-key")]


def test_list_honours_the_selector():
    pods = [
        {"kind": "Pod", "metadata": {"name": "a", "labels": {"millrace.dev/dataflow": "wc"}}},
        {"kind": "Pod", "metadata": {"name": "b", "labels": {"millrace.dev/dataflow": "other"}}},
    ]
    api = Observed(Cluster(), {"Pod": pods}, {})
    assert [p["metadata"]["name"] for p in api.list("Pod", "ns", {"millrace.dev/dataflow": "wc"})] == ["a"]
