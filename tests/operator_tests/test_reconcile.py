"""One reconcile against an in-memory API: children, restarts, suspend, completion, volumes."""

from __future__ import annotations

import copy
from typing import Any

from millrace_operator import manifests
from millrace_operator.reconcile import Refused, reconcile

NOW = "2026-01-01T00:00:00Z"


class FakeApi:
    """Objects by (kind, namespace, name), with the calls the operator makes.

    ``apply`` approximates a server-side apply by the operator's only field manager: the object
    becomes the manifest, but for the status and the deletion mark the server keeps. ``delete``
    is a Foreground deletion: a Job with pods stays, marked, until :meth:`collect` plays the
    garbage collector."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.expansion_refused = False

    def get(self, kind, namespace, name):
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def list(self, kind, namespace, selector):
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind and ns == namespace and selector.items() <= (o["metadata"].get("labels") or {}).items()
        ]

    def apply(self, manifest):
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        existing = self.objects.get(key)
        if (
            key[0] == "PersistentVolumeClaim"
            and existing
            and self.expansion_refused
            and (_storage(existing) != _storage(manifest))
        ):
            raise Refused("only dynamically provisioned pvc can be resized")
        applied = copy.deepcopy(manifest)
        if existing:
            for field in ("deletionTimestamp",):
                if field in existing["metadata"]:
                    applied["metadata"][field] = existing["metadata"][field]
            if "status" in existing:
                applied["status"] = existing["status"]
        self.objects[key] = applied
        self.calls.append(("apply", key[0], key[2]))
        return copy.deepcopy(applied)

    def delete(self, kind, namespace, name):
        self.calls.append(("delete", kind, name))
        key = (kind, namespace, name)
        if key not in self.objects:
            return
        if kind == "Job" and self.pods_of(name):
            self.objects[key]["metadata"]["deletionTimestamp"] = NOW
        else:
            del self.objects[key]

    # -- the Job controller's, the kubelet's and the garbage collector's part -----------------

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {name: o for (kind, _, name), o in self.objects.items() if kind == "Job"}

    def pods(self) -> dict[str, dict[str, Any]]:
        return {name: o for (kind, _, name), o in self.objects.items() if kind == "Pod"}

    def claims(self) -> dict[str, dict[str, Any]]:
        return {name: o for (kind, _, name), o in self.objects.items() if kind == "PersistentVolumeClaim"}

    def pods_of(self, job: str) -> list[str]:
        return [name for name, pod in self.pods().items() if pod["metadata"]["labels"]["job"] == job]

    def run_pods(self, ready=True, terminated=None):
        """Each running Job's pod, in the state given."""
        for name, job in self.jobs().items():
            if job["spec"]["suspend"] or job["metadata"].get("deletionTimestamp"):
                continue
            template = job["spec"]["template"]
            container = {"name": "worker", "restartCount": 0, "state": {}, "lastState": {}}
            if terminated:
                container["state"]["terminated"] = {"exitCode": terminated[0], "message": terminated[1]}
            pod = f"{name}-x7k2p"
            self.objects[("Pod", "ns", pod)] = {
                "metadata": {
                    "name": pod,
                    "labels": {**template["metadata"]["labels"], "job": name},
                    "annotations": dict(template["metadata"]["annotations"]),
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "containerStatuses": [container],
                },
            }

    def collect(self) -> None:
        """Finish the Foreground deletions: the pods of Jobs being deleted go, then the Jobs."""
        for name, job in list(self.jobs().items()):
            if job["metadata"].get("deletionTimestamp"):
                for pod in self.pods_of(name):
                    del self.objects[("Pod", "ns", pod)]
                del self.objects[("Job", "ns", name)]


def _storage(claim: dict) -> Any:
    return claim["spec"]["resources"]["requests"]["storage"]


def dataflow(**spec) -> dict:
    return {
        "metadata": {"name": "df", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {"processes": 3, "flow": {"code": "flow = None"}, **spec},
        "status": {},
    }


def settle(api: FakeApi, df: dict, rounds: int = 5) -> dict:
    """Reconcile (the garbage collector finishing deletions in between) until nothing changes."""
    for _ in range(rounds):
        before = copy.deepcopy(api.objects)
        df["status"] = reconcile(api, df, NOW)
        api.collect()
        if api.objects == before:
            return df["status"]
    raise AssertionError("the reconciles never settled")


def _hashes(api: FakeApi) -> set[str | None]:
    return {manifests.template_hash_of(job) for job in api.jobs().values()}


def test_create_makes_every_child_owned_by_the_dataflow():
    api, df = FakeApi(), dataflow()
    status = reconcile(api, df, NOW)
    kinds = sorted(kind for kind, _, _ in api.objects)
    assert kinds == ["ConfigMap", "Job", "Job", "Job", "NetworkPolicy", "Secret", "Service"]
    for obj in api.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]
    assert not any(job["spec"]["suspend"] for job in api.jobs().values())
    assert status["phase"] == "Pending"
    assert "desiredReplicas" not in status


def test_reconcile_is_idempotent_and_keeps_the_cluster_key():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    key = api.objects[("Secret", "ns", "df-cluster-key")]["data"]["key"]
    before = copy.deepcopy(api.objects)
    reconcile(api, df, NOW)
    assert api.objects == before
    assert api.objects[("Secret", "ns", "df-cluster-key")]["data"]["key"] == key
    assert not [call for call in api.calls if call[0] == "delete"]


def test_status_follows_the_pods():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=True)
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Running" and df["status"]["readyProcesses"] == 3


def test_a_template_change_restarts_every_process_once_the_old_pods_are_gone():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    old = _hashes(api)
    df["spec"]["processes"] = 4
    status = reconcile(api, df, NOW)
    # Every old Job is deleted; its pods are still there, so nothing new is made yet.
    assert ("delete", "Job", "df-0") in api.calls
    assert all(job["metadata"].get("deletionTimestamp") for job in api.jobs().values())
    assert _hashes(api) == old and sorted(api.jobs()) == ["df-0", "df-1", "df-2"]
    assert status["message"] == "restarting: waiting for 3 pods of the previous pod template to stop"
    # Again, while the pods are still stopping: still nothing new, no second delete.
    api.calls.clear()
    reconcile(api, df, NOW)
    assert not [call for call in api.calls if call[1] == "Job"]
    api.collect()
    status = reconcile(api, df, NOW)
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2", "df-3"]
    assert not _hashes(api) & old
    env = {e["name"]: e.get("value") for e in api.jobs()["df-3"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MILLRACE_PROCESSES"] == "4" and env["MILLRACE_POD_INDEX"] == "3"
    assert status["phase"] == "Pending"


def test_no_new_jobs_while_pods_of_the_old_template_remain():
    """Pods outlive their Job (e.g. one deleted without Foreground): still, nothing new starts."""
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    for name in list(api.jobs()):
        del api.objects[("Job", "ns", name)]
    df["spec"]["image"] = "registry.example/other:1"
    status = reconcile(api, df, NOW)
    assert api.jobs() == {}
    assert status["message"] == "restarting: waiting for 3 pods of the previous pod template to stop"
    for name in list(api.pods()):
        del api.objects[("Pod", "ns", name)]
    reconcile(api, df, NOW)
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]
    assert all(
        job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/other:1"
        for job in api.jobs().values()
    )


def test_suspend_suspends_the_jobs_without_a_restart():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    before = copy.deepcopy(api.jobs())
    df["spec"]["suspend"] = True
    status = reconcile(api, df, NOW)
    assert status["phase"] == "Suspended"
    assert sorted(api.jobs()) == sorted(before)
    for name, job in api.jobs().items():
        assert job["spec"]["suspend"] is True
        assert job["spec"]["template"] == before[name]["spec"]["template"]
    assert not [call for call in api.calls if call[0] == "delete"]
    df["spec"]["suspend"] = False
    reconcile(api, df, NOW)
    assert not any(job["spec"]["suspend"] for job in api.jobs().values())


def test_a_failed_flow_suspends_its_jobs():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=False, terminated=(1, "millrace: failed: ModuleNotFoundError: No module named 'flows'"))
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Failed"
    assert all(job["spec"]["suspend"] for job in api.jobs().values())
    df["metadata"]["generation"] = 2  # an edit that changes nothing in the pod template
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Failed"
    assert all(job["spec"]["suspend"] for job in api.jobs().values())


def test_a_finished_flow_keeps_its_jobs_and_a_no_op_edit_does_not_rerun_it():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=False, terminated=(0, "millrace: completed"))
    jobs = copy.deepcopy(api.jobs())
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    # The Jobs are left as they are (Completed, with their pods and logs): not suspended, not deleted.
    assert api.jobs() == jobs and len(api.pods()) == 3
    assert not [call for call in api.calls if call[0] == "delete"]
    df["metadata"]["generation"] = 2
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    assert api.jobs() == jobs


def test_a_rescale_down_deletes_the_jobs_of_the_processes_that_go():
    api, df = FakeApi(), dataflow()
    settle(api, df)
    df["spec"]["processes"] = 2
    settle(api, df)
    assert sorted(api.jobs()) == ["df-0", "df-1"]
    assert ("delete", "Job", "df-2") in api.calls


def test_recovery_gives_each_process_its_own_claim():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "2Gi"})
    status = reconcile(api, df, NOW)
    assert sorted(api.claims()) == ["recovery-df-0", "recovery-df-1", "recovery-df-2"]
    for index in range(3):
        claim = api.claims()[f"recovery-df-{index}"]
        assert _storage(claim) == "2Gi"
        assert claim["metadata"]["labels"][manifests.PROCESS_LABEL] == str(index)
        assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        volumes = api.jobs()[f"df-{index}"]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "recovery", "persistentVolumeClaim": {"claimName": f"recovery-df-{index}"}} in volumes
    assert _volume_size(status)["status"] == "True"


def test_turning_recovery_on_restarts_the_processes_with_claims():
    api, df = FakeApi(), dataflow()
    settle(api, df)
    old = _hashes(api)
    df["spec"]["recovery"] = {"enabled": True}
    settle(api, df)
    assert not _hashes(api) & old
    assert sorted(api.claims()) == ["recovery-df-0", "recovery-df-1", "recovery-df-2"]


def test_turning_recovery_off_deletes_the_claims():
    api, df = FakeApi(), dataflow(recovery={"enabled": True})
    settle(api, df)
    df["spec"]["recovery"] = {"enabled": False}
    settle(api, df)
    assert api.claims() == {}
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]


def _as_the_api_server_stores_it(api: FakeApi) -> None:
    """What a real API server adds to the claims it stores (FakeApi does not)."""
    for claim in api.claims().values():
        claim.update(status={"phase": "Bound", "capacity": {"storage": _storage(claim)}})
        claim["spec"].update(volumeMode="Filesystem", volumeName="pv-1", storageClassName="standard")
        claim["spec"]["resources"]["requests"]["storage"] = {"1024Mi": "1Gi"}.get(_storage(claim), _storage(claim))


def _volume_size(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "VolumeSize")


def test_claims_as_the_api_server_stores_them_are_kept():
    """Server defaults (the default storage class among them) and a size in another notation
    are no change: the claims, and the recovery state in them, stay."""
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1024Mi"})
    settle(api, df)
    _as_the_api_server_stores_it(api)
    api.calls.clear()
    status = settle(api, df)
    assert not [call for call in api.calls if call[1] == "PersistentVolumeClaim"]
    assert _volume_size(status)["status"] == "True"


def test_a_larger_volume_size_grows_the_claims_in_place():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    settle(api, df)
    _as_the_api_server_stores_it(api)
    df["spec"]["recovery"]["volumeSize"] = "5Gi"
    api.calls.clear()
    status = settle(api, df)
    assert {name: _storage(c) for name, c in api.claims().items()} == {f"recovery-df-{i}": "5Gi" for i in range(3)}
    assert not [call for call in api.calls if call[:2] == ("delete", "PersistentVolumeClaim")]
    assert all(c["status"]["phase"] == "Bound" for c in api.claims().values())  # the same claims
    assert _volume_size(status)["status"] == "True"
    assert _volume_size(status)["message"] == "every recovery volume claims 5Gi"


def test_a_smaller_volume_size_is_refused_and_nothing_shrinks():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "2Gi"})
    settle(api, df)
    _as_the_api_server_stores_it(api)
    before = copy.deepcopy(api.claims())
    df["spec"]["recovery"]["volumeSize"] = "1Gi"
    status = settle(api, df)
    condition = _volume_size(status)
    assert (condition["status"], condition["reason"]) == ("False", "ShrinkRefused")
    assert "recovery.volumeSize 1Gi is smaller than the claims recovery-df-0 (2Gi)" in condition["message"]
    assert api.claims() == before
    assert status["phase"] == "Pending"  # the flow runs on with the volumes it has
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]


def test_a_storage_class_that_cannot_expand_is_reported():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    settle(api, df)
    _as_the_api_server_stores_it(api)
    api.expansion_refused = True
    df["spec"]["recovery"]["volumeSize"] = "3Gi"
    condition = _volume_size(settle(api, df))
    assert (condition["status"], condition["reason"]) == ("False", "ResizeFailed")
    assert "recovery-df-0: only dynamically provisioned pvc can be resized" in condition["message"]
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]  # the flow runs on


def test_another_storage_class_replaces_the_claims():
    api, df = FakeApi(), dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    settle(api, df)
    _as_the_api_server_stores_it(api)
    df["spec"]["recovery"]["storageClassName"] = "fast"
    df["status"] = reconcile(api, df, NOW)  # the old Jobs go first (they have no pods here)
    assert api.jobs() == {}
    status = reconcile(api, df, NOW)
    assert status["message"] == "restarting: replacing the recovery volumes"
    assert api.claims() == {} and api.jobs() == {}
    settle(api, df)
    assert {name: c["spec"]["storageClassName"] for name, c in api.claims().items()} == {
        f"recovery-df-{i}": "fast" for i in range(3)
    }
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]


def test_switching_from_code_to_a_module_deletes_the_flow_configmap():
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    assert ("ConfigMap", "ns", "df-flow") in api.objects
    df["spec"]["flow"] = {"module": "flows.count:flow"}
    settle(api, df)
    assert ("ConfigMap", "ns", "df-flow") not in api.objects
    before = copy.deepcopy(api.objects)
    reconcile(api, df, NOW)  # nothing left to delete: nothing changes
    assert api.objects == before
    df["spec"]["flow"] = {"code": "flow = 2"}
    reconcile(api, df, NOW)
    assert api.objects[("ConfigMap", "ns", "df-flow")]["data"] == {"flow.py": "flow = 2"}


def _as_an_older_operator_made_them(api: FakeApi) -> None:
    """The Jobs and pods of the same spec, but with a pod template an older operator built (no
    metrics port: no pod-template hash at all)."""
    for (kind, _, _), obj in api.objects.items():
        if kind in ("Job", "Pod"):
            obj["metadata"]["annotations"].pop(manifests.POD_TEMPLATE_HASH)
            if kind == "Job":
                obj["spec"]["template"]["metadata"]["annotations"].pop(manifests.POD_TEMPLATE_HASH)
                (container,) = obj["spec"]["template"]["spec"]["containers"]
                container["ports"] = [port for port in container["ports"] if port["name"] != "metrics"]


def test_an_operator_upgrade_that_changes_the_pod_template_restarts_a_running_flow():
    """A Job's pod template is immutable: a Job from an older operator is replaced, once its
    pods are gone, rather than applied (which the API server refuses) again and again."""
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods()
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Running"
    _as_an_older_operator_made_them(api)
    api.calls.clear()
    status = reconcile(api, df, NOW)
    assert all(job["metadata"].get("deletionTimestamp") for job in api.jobs().values())
    assert status["message"] == "restarting: waiting for 3 pods of the previous pod template to stop"
    assert not [call for call in api.calls if call[:2] == ("apply", "Job")]
    api.collect()
    settle(api, df)
    assert sorted(api.jobs()) == ["df-0", "df-1", "df-2"]
    assert all(manifests.pod_template_hash_of(job) for job in api.jobs().values())
    (container,) = api.jobs()["df-0"]["spec"]["template"]["spec"]["containers"]
    assert "metrics" in [port["name"] for port in container["ports"]]


def _finished_flow() -> tuple[FakeApi, dict]:
    """A Dataflow whose pods all completed, and the status that says so."""
    api, df = FakeApi(), dataflow()
    reconcile(api, df, NOW)
    api.run_pods(ready=False, terminated=(0, "millrace: completed"))
    df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    return api, df


def _stays_as_it_ended(api: FakeApi, df: dict, pods: int) -> None:
    """Reconciled again and again: still Succeeded, not run again (its pods and logs kept),
    its Jobs neither deleted nor applied (a Job's pod template is immutable)."""
    jobs = copy.deepcopy(api.jobs())
    api.calls.clear()
    for _ in range(3):
        df["status"] = reconcile(api, df, NOW)
    assert df["status"]["phase"] == "Succeeded"
    assert api.jobs() == jobs and len(api.pods()) == pods
    assert not [call for call in api.calls if call[1] in ("Job", "Pod")]


def test_an_operator_upgrade_leaves_a_finished_flow_as_it_ended():
    api, df = _finished_flow()
    _as_an_older_operator_made_them(api)
    _stays_as_it_ended(api, df, pods=3)


def _image(obj: dict) -> str:
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    (container,) = spec["containers"]
    return container["image"]


def test_an_upgrade_to_another_default_image_leaves_a_finished_flow_and_restarts_a_running_one(monkeypatch):
    """A flow that names no image runs the operator's default (the chart passes its own image):
    an upgrade that moves it moves running flows to the new image, and must not run a
    finished batch flow again (its output would be written twice)."""
    monkeypatch.setenv("MILLRACE_WORKER_IMAGE", "millrace:1.0")
    finished_api, finished = _finished_flow()
    running_api, running = FakeApi(), dataflow()
    reconcile(running_api, running, NOW)
    running_api.run_pods()
    running["status"] = reconcile(running_api, running, NOW)
    assert (finished["status"]["phase"], running["status"]["phase"]) == ("Succeeded", "Running")

    monkeypatch.setenv("MILLRACE_WORKER_IMAGE", "millrace:1.1")
    jobs = copy.deepcopy(finished_api.jobs())
    _stays_as_it_ended(finished_api, finished, pods=3)

    settle(running_api, running)
    assert {_image(job) for job in running_api.jobs().values()} == {"millrace:1.1"}
    # And a finished flow whose spec does change runs again, on the new image.
    finished["spec"]["epochSeconds"] = 5
    settle(finished_api, finished)
    assert {_image(job) for job in finished_api.jobs().values()} == {"millrace:1.1"}
    assert finished_api.jobs() != jobs


def test_a_finished_flow_whose_pods_were_deleted_stays_as_it_ended_when_the_default_image_moves(monkeypatch):
    """Completed pods go (deleted by hand, or by a node's cleanup) while the Jobs stay: the
    Jobs still say which image the flow ran, so the flow is not run again."""
    monkeypatch.setenv("MILLRACE_WORKER_IMAGE", "millrace:1.0")
    api, df = _finished_flow()
    for name in list(api.pods()):
        del api.objects[("Pod", "ns", name)]
    monkeypatch.setenv("MILLRACE_WORKER_IMAGE", "millrace:1.1")
    _stays_as_it_ended(api, df, pods=0)
