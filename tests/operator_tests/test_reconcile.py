"""One reconcile against an in-memory API: children, restarts, suspend, completion."""

from __future__ import annotations

import copy
from typing import Any

from millrace_operator import manifests
from millrace_operator.reconcile import reconcile

NOW = "2026-01-01T00:00:00Z"


class FakeApi:
    """Objects by (kind, namespace, name), plus pods, with the calls the operator makes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods_by_name: dict[str, dict[str, Any]] = {}
        self.deleted_pods = 0

    def get(self, kind, namespace, name):
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def apply(self, manifest, *, patch=True):
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if key not in self.objects or patch:
            self.objects[key] = copy.deepcopy(manifest)
        return self.objects[key]

    def patch(self, kind, namespace, name, body):
        target = self.objects[(kind, namespace, name)]
        target["spec"].update(copy.deepcopy(body["spec"]))
        return target

    def delete(self, kind, namespace, name):
        self.objects.pop((kind, namespace, name), None)

    def pods(self, namespace, selector):
        return list(self.pods_by_name.values())

    def delete_pods(self, namespace, selector):
        self.deleted_pods += len(self.pods_by_name)
        self.pods_by_name.clear()

    def claims(self, namespace, selector):
        return [copy.deepcopy(c) for (kind, _, _), c in self.objects.items() if kind == "PersistentVolumeClaim"]

    def resize_claim(self, namespace, name, size):
        if self.expansion_refused:
            return "only dynamically provisioned pvc can be resized"
        self.objects[("PersistentVolumeClaim", namespace, name)]["spec"]["resources"]["requests"]["storage"] = size
        return None

    expansion_refused = False

    # -- the StatefulSet controller's and kubelet's part -------------------------------------

    def run_pods(self, ready=True, terminated=None):
        sts = self.objects[("StatefulSet", "ns", "df")]
        template = sts["spec"]["template"]
        for index in range(sts["spec"]["replicas"]):
            container = {"name": "worker", "restartCount": 0, "state": {}, "lastState": {}}
            if terminated:
                container["state"]["terminated"] = {"exitCode": terminated[0], "message": terminated[1]}
            self.pods_by_name[f"df-{index}"] = {
                "metadata": {"name": f"df-{index}", "annotations": dict(template["metadata"]["annotations"])},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "containerStatuses": [container],
                },
            }


def dataflow(**spec) -> dict:
    return {
        "metadata": {"name": "df", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {"processes": 3, "flow": {"code": "flow = None"}, **spec},
        "status": {},
    }


def test_create_makes_every_child_owned_by_the_dataflow():
    api, df = FakeApi(), dataflow()
    status = reconcile(api, df, NOW)
    kinds = sorted(kind for kind, _, _ in api.objects)
    assert kinds == ["ConfigMap", "NetworkPolicy", "Secret", "Service", "StatefulSet"]
    for obj in api.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert api.objects[("StatefulSet", "ns", "df")]["spec"]["replicas"] == 3
    assert status["phase"] == "Pending"


def test_reconcile_is_idempotent_and_keeps_the_cluster_key():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    key = api.objects[("Secret", "ns", "df-cluster-key")]["data"]["key"]
    before = copy.deepcopy(api.objects)
    reconcile(api, df, NOW)
    assert api.objects == before
    assert api.objects[("Secret", "ns", "df-cluster-key")]["data"]["key"] == key


def test_status_follows_the_pods():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=True)
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Running" and df["status"]["readyProcesses"] == 3


def test_a_template_change_restarts_every_pod_together():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    df["spec"]["processes"] = 4
    reconcile(api, df, NOW)
    sts = api.objects[("StatefulSet", "ns", "df")]
    assert sts["spec"]["replicas"] == 4
    assert api.deleted_pods == 3 and api.pods_by_name == {}
    assert "MILLRACE_PROCESSES" in str(sts["spec"]["template"])


def test_suspend_scales_to_zero_without_deleting_pods_by_hand():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    df["spec"]["suspend"] = True
    status = reconcile(api, df, NOW)
    assert status["phase"] == "Suspended"
    assert api.objects[("StatefulSet", "ns", "df")]["spec"]["replicas"] == 0
    assert api.deleted_pods == 0


def test_a_finished_flow_scales_to_zero_and_a_no_op_edit_does_not_rerun_it():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=False, terminated=(0, "millrace: completed"))
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    assert api.objects[("StatefulSet", "ns", "df")]["spec"]["replicas"] == 0
    api.pods_by_name.clear()  # the StatefulSet controller removes them
    df["metadata"]["generation"] = 2  # an edit that changes nothing in the pod template
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    assert api.objects[("StatefulSet", "ns", "df")]["spec"]["replicas"] == 0


def test_turning_recovery_on_replaces_the_statefulset():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    df["spec"]["recovery"] = {"enabled": True}
    reconcile(api, df, NOW)
    assert ("StatefulSet", "ns", "df") not in api.objects  # deleted: claim templates are immutable
    reconcile(api, df, NOW)
    assert api.objects[("StatefulSet", "ns", "df")]["spec"]["volumeClaimTemplates"]


def _as_the_api_server_stores_it(api: FakeApi) -> None:
    """What a real API server adds to the claim templates it stores, and the claims the
    StatefulSet controller makes from them (kmock and FakeApi do neither)."""
    sts = api.objects[("StatefulSet", "ns", "df")]
    for template in sts["spec"]["volumeClaimTemplates"]:
        template.update(apiVersion="v1", kind="PersistentVolumeClaim", status={"phase": "Pending"})
        template["spec"]["volumeMode"] = "Filesystem"
        size = template["spec"]["resources"]["requests"]["storage"]
        template["spec"]["resources"]["requests"]["storage"] = {"1024Mi": "1Gi"}.get(size, size)
        for ordinal in range(sts["spec"]["replicas"]):
            name = f"{template['metadata']['name']}-df-{ordinal}"
            api.objects[("PersistentVolumeClaim", "ns", name)] = {
                "metadata": {"name": name}, "spec": copy.deepcopy(template["spec"])}


def _volume_size(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "VolumeSize")


def test_a_statefulset_as_the_api_server_stores_it_is_kept():
    """Server defaults in the stored claim templates (and a size in another notation) are no
    change: the StatefulSet, and the recovery state in its volumes, stay."""
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1024Mi"})
    reconcile(api, df, NOW)
    _as_the_api_server_stores_it(api)
    status = reconcile(api, df, NOW)
    assert ("StatefulSet", "ns", "df") in api.objects
    assert _volume_size(status)["status"] == "True"


def test_a_larger_volume_size_grows_the_claims_and_keeps_the_statefulset():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    reconcile(api, df, NOW)
    _as_the_api_server_stores_it(api)
    sts_before = copy.deepcopy(api.objects[("StatefulSet", "ns", "df")]["spec"]["volumeClaimTemplates"])
    df["spec"]["recovery"]["volumeSize"] = "5Gi"
    status = reconcile(api, df, NOW)
    assert api.objects[("StatefulSet", "ns", "df")]["spec"]["volumeClaimTemplates"] == sts_before
    sizes = {name: c["spec"]["resources"]["requests"]["storage"]
             for (kind, _, name), c in api.objects.items() if kind == "PersistentVolumeClaim"}
    assert sizes == {f"recovery-df-{i}": "5Gi" for i in range(3)}
    assert _volume_size(status)["status"] == "True"
    assert _volume_size(status)["message"] == "every recovery volume claims 5Gi"


def test_a_smaller_volume_size_is_refused_and_nothing_shrinks():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "2Gi"})
    reconcile(api, df, NOW)
    _as_the_api_server_stores_it(api)
    before = copy.deepcopy(api.objects)
    df["spec"]["recovery"]["volumeSize"] = "1Gi"
    status = reconcile(api, df, NOW)
    condition = _volume_size(status)
    assert (condition["status"], condition["reason"]) == ("False", "ShrinkRefused")
    assert "recovery.volumeSize 1Gi is smaller than the claims recovery-df-0 (2Gi)" in condition["message"]
    claims = {k: v for k, v in api.objects.items() if k[0] == "PersistentVolumeClaim"}
    assert len(claims) == 3 and claims == {k: v for k, v in before.items() if k[0] == "PersistentVolumeClaim"}
    key = ("StatefulSet", "ns", "df")
    assert api.objects[key]["spec"]["volumeClaimTemplates"] == before[key]["spec"]["volumeClaimTemplates"]
    assert status["phase"] == "Pending"  # the flow runs on with the volumes it has


def test_a_storage_class_that_cannot_expand_is_reported():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    reconcile(api, df, NOW)
    _as_the_api_server_stores_it(api)
    api.expansion_refused = True
    df["spec"]["recovery"]["volumeSize"] = "3Gi"
    condition = _volume_size(reconcile(api, df, NOW))
    assert (condition["status"], condition["reason"]) == ("False", "ResizeFailed")
    assert "recovery-df-0: only dynamically provisioned pvc can be resized" in condition["message"]
    assert ("StatefulSet", "ns", "df") in api.objects


def test_another_storage_class_replaces_the_statefulset():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    reconcile(api, df, NOW)
    _as_the_api_server_stores_it(api)
    df["spec"]["recovery"]["storageClassName"] = "fast"
    reconcile(api, df, NOW)
    assert ("StatefulSet", "ns", "df") not in api.objects


def test_switching_from_code_to_a_module_deletes_the_flow_configmap():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    assert ("ConfigMap", "ns", "df-flow") in api.objects
    df["spec"]["flow"] = {"module": "flows.count:flow"}
    reconcile(api, df, NOW)
    assert ("ConfigMap", "ns", "df-flow") not in api.objects
    before = copy.deepcopy(api.objects)
    reconcile(api, df, NOW)  # nothing left to delete: nothing changes
    assert api.objects == before
    df["spec"]["flow"] = {"code": "flow = 2"}
    reconcile(api, df, NOW)
    assert api.objects[("ConfigMap", "ns", "df-flow")]["data"] == {"flow.py": "flow = 2"}
