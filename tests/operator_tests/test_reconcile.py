"""One reconcile against an in-memory API: children, restarts, suspend, completion, volumes."""

from __future__ import annotations

import copy
from typing import Any

from millrace_operator import manifests
from millrace_operator.reconcile import Refused, reconcile

NOW = "2026-01-01T00:00:00Z"


class FakeApi:
    """Objects by (kind, namespace, name) with the calls the operator makes; ``apply`` stands
    for server-side apply (the applied manifest becomes the object, as nothing else writes
    here). Deleted Jobs take their pods with them, as the garbage collector would."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str]] = []
        self.expansion_refused = False

    def get(self, kind, namespace, name):
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind, namespace, selector):
        return [copy.deepcopy(obj) for (k, ns, _), obj in sorted(self.objects.items()) if k == kind and ns == namespace]

    def apply(self, manifest):
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if key[0] == "PersistentVolumeClaim" and key in self.objects and self.expansion_refused:
            raise Refused("only dynamically provisioned pvc can be resized")
        self.applied.append((key[0], key[2]))
        self.objects[key] = copy.deepcopy(manifest)
        return self.objects[key]

    def delete(self, kind, namespace, name):
        self.objects.pop((kind, namespace, name), None)

    # -- the Job controller's and kubelet's part ------------------------------------------

    def run_pods(self, ready=True, terminated=None):
        for (kind, ns, name), job in list(self.objects.items()):
            if kind != "Job" or job["spec"]["suspend"]:
                continue
            container = {"name": "worker", "restartCount": 0, "state": {}, "lastState": {}}
            if terminated:
                container["state"]["terminated"] = {"exitCode": terminated[0], "message": terminated[1]}
            template = job["spec"]["template"]["metadata"]
            self.objects[("Pod", ns, f"{name}-x")] = {
                "metadata": {"name": f"{name}-x", "labels": dict(template["labels"]),
                             "annotations": dict(template["annotations"])},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "containerStatuses": [container],
                },
            }

    def stop_pods_of_deleted_jobs(self):
        jobs = {name for (kind, _, name) in self.objects if kind == "Job"}
        for key in [k for k in self.objects if k[0] == "Pod" and k[2].rsplit("-", 1)[0] not in jobs]:
            del self.objects[key]

    def names(self, kind):
        return sorted(name for (k, _, name) in self.objects if k == kind)


def dataflow(**spec) -> dict:
    return {
        "metadata": {"name": "df", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {"processes": 3, "flow": {"code": "flow = None"}, **spec},
        "status": {},
    }


def test_create_makes_every_child_owned_by_the_dataflow():
    api, df = FakeApi(), dataflow()
    status = reconcile(api, df, NOW)
    kinds = sorted({kind for kind, _, _ in api.objects})
    assert kinds == ["ConfigMap", "Job", "NetworkPolicy", "Secret", "Service"]
    assert api.names("Job") == ["df-0", "df-1", "df-2"]
    for obj in api.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
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


def test_a_template_change_starts_new_jobs_only_once_every_old_pod_is_gone():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    old_hash = manifests.template_hash_of(api.objects[("Job", "ns", "df-0")])
    df["spec"]["processes"] = 4
    status = reconcile(api, df, NOW)
    assert api.names("Job") == []  # the old template's Jobs are deleted...
    assert len(api.names("Pod")) == 3  # ...and their pods still stopping
    assert status["message"] == "restarting: waiting for 3 pods of the previous pod template to stop"
    reconcile(api, df, NOW)
    assert api.names("Job") == []  # nothing new while an old pod is there
    api.stop_pods_of_deleted_jobs()
    reconcile(api, df, NOW)
    assert api.names("Job") == ["df-0", "df-1", "df-2", "df-3"]
    assert {manifests.template_hash_of(api.objects[("Job", "ns", n)]) for n in api.names("Job")} != {old_hash}


def test_suspend_suspends_the_jobs_without_a_restart():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    before = {n: manifests.template_hash_of(api.objects[("Job", "ns", n)]) for n in api.names("Job")}
    df["spec"]["suspend"] = True
    status = reconcile(api, df, NOW)
    assert status["phase"] == "Suspended"
    assert all(api.objects[("Job", "ns", n)]["spec"]["suspend"] for n in api.names("Job"))
    assert {n: manifests.template_hash_of(api.objects[("Job", "ns", n)]) for n in api.names("Job")} == before


def test_a_finished_flows_jobs_and_pods_stay_and_a_no_op_edit_does_not_rerun_it():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=False, terminated=(0, "millrace: completed"))
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    assert len(api.names("Pod")) == 3 and not any(api.objects[("Job", "ns", n)]["spec"]["suspend"] for n in api.names("Job"))
    df["metadata"]["generation"] = 2  # an edit that changes nothing in the pod template
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded" and len(api.names("Pod")) == 3


def test_a_failed_flows_jobs_are_suspended():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=False, terminated=(1, "millrace: failed: ModuleNotFoundError: No module named 'x'"))
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Failed"
    assert all(api.objects[("Job", "ns", n)]["spec"]["suspend"] for n in api.names("Job"))


def _volume_size(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "VolumeSize")


def _sizes(api: FakeApi) -> dict[str, str]:
    return {name: api.objects[("PersistentVolumeClaim", "ns", name)]["spec"]["resources"]["requests"]["storage"]
            for name in api.names("PersistentVolumeClaim")}


def test_recovery_gives_each_process_a_claim_and_turning_it_off_deletes_them():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    status = reconcile(api, df, NOW)
    assert _sizes(api) == {f"recovery-df-{i}": "1Gi" for i in range(3)}
    assert _volume_size(status)["status"] == "True"
    df["spec"]["recovery"] = {"enabled": False}
    reconcile(api, df, NOW)
    api.stop_pods_of_deleted_jobs()
    reconcile(api, df, NOW)
    assert api.names("PersistentVolumeClaim") == [] and len(api.names("Job")) == 3


def test_a_larger_volume_size_grows_the_claims():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    reconcile(api, df, NOW)
    df["spec"]["recovery"]["volumeSize"] = "5Gi"
    status = reconcile(api, df, NOW)  # a new template: the old pods first
    status = reconcile(api, df, NOW)
    assert _sizes(api) == {f"recovery-df-{i}": "5Gi" for i in range(3)}
    assert _volume_size(status)["message"] == "every recovery volume claims 5Gi"


def test_a_smaller_volume_size_is_refused_and_nothing_shrinks():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "2Gi"})
    reconcile(api, df, NOW)
    df["spec"]["recovery"]["volumeSize"] = "1Gi"
    reconcile(api, df, NOW)
    status = reconcile(api, df, NOW)
    condition = _volume_size(status)
    assert (condition["status"], condition["reason"]) == ("False", "ShrinkRefused")
    assert "recovery.volumeSize 1Gi is smaller than the claims recovery-df-0 (2Gi)" in condition["message"]
    assert _sizes(api) == {f"recovery-df-{i}": "2Gi" for i in range(3)}
    assert len(api.names("Job")) == 3  # the flow runs on with the volumes it has


def test_a_storage_class_that_cannot_expand_is_reported():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    reconcile(api, df, NOW)
    api.expansion_refused = True
    df["spec"]["recovery"]["volumeSize"] = "3Gi"
    reconcile(api, df, NOW)
    condition = _volume_size(reconcile(api, df, NOW))
    assert (condition["status"], condition["reason"]) == ("False", "ResizeFailed")
    assert "recovery-df-0: only dynamically provisioned pvc can be resized" in condition["message"]


def test_another_storage_class_replaces_the_claims_before_any_new_pod():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi", "storageClassName": "slow"})
    reconcile(api, df, NOW)
    df["spec"]["recovery"]["storageClassName"] = "fast"
    reconcile(api, df, NOW)  # the old Jobs go
    status = reconcile(api, df, NOW)  # then the claims of the other class
    assert api.names("PersistentVolumeClaim") == [] and api.names("Job") == []
    assert status["message"] == "restarting: replacing the recovery volumes"
    reconcile(api, df, NOW)
    classes = {api.objects[("PersistentVolumeClaim", "ns", n)]["spec"]["storageClassName"] for n in api.names("PersistentVolumeClaim")}
    assert classes == {"fast"} and len(api.names("Job")) == 3


def test_switching_from_code_to_a_module_deletes_the_flow_configmap():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    assert ("ConfigMap", "ns", "df-flow") in api.objects
    df["spec"]["flow"] = {"module": "flows.count:flow"}
    reconcile(api, df, NOW)
    assert ("ConfigMap", "ns", "df-flow") not in api.objects
    reconcile(api, df, NOW)
    before = copy.deepcopy(api.objects)
    reconcile(api, df, NOW)  # nothing left to delete: nothing changes
    assert api.objects == before
    df["spec"]["flow"] = {"code": "flow = 2"}
    reconcile(api, df, NOW)
    assert api.objects[("ConfigMap", "ns", "df-flow")]["data"] == {"flow.py": "flow = 2"}
