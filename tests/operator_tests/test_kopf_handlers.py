"""The kopf handlers, in-process, against kmock's Kubernetes emulator (see kopf_harness)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import kubernetes
import pytest

from millrace_operator import handlers

from .kopf_harness import (
    APPLY,
    CLAIMS,
    CONFIGMAPS,
    DATAFLOWS,
    EVENTS,
    JOBS,
    NETWORKPOLICIES,
    RUN,
    SECRETS,
    SERVICES,
    TEST_AGENT,
    Operator,
    as_test,
    dataflow,
    jobs_of,
    login,
    message,
    obj,
    patch_spec,
    phase,
    play_garbage_collector,
    play_kubelet,
    pods_of,
    template_hash,
    until,
)

pytestmark = pytest.mark.timeout(120)


def _suspended(cluster) -> list[bool]:
    return [job["spec"]["suspend"] for _, job in sorted(jobs_of(cluster).items())]


async def test_create_makes_owned_children_and_a_status(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    import millrace_operator.handlers  # noqa: F401 - registers the handlers

    async with Operator(RUN) as runner:
        await until(lambda: sorted(jobs_of(cluster)) == ["wc-0", "wc-1"], 8)
        await until(lambda: phase(cluster) == "Pending")
    for index in range(2):
        job = obj(cluster, JOBS, f"wc-{index}")
        assert job["spec"]["suspend"] is False
        assert job["spec"]["template"]["spec"]["hostname"] == f"wc-{index}"
        assert job["spec"]["template"]["metadata"]["labels"]["millrace.dev/process"] == str(index)
    children = [
        (SERVICES, "wc"),
        (CONFIGMAPS, "wc-flow"),
        (SECRETS, "wc-cluster-key"),
        (NETWORKPOLICIES, "wc"),
        (JOBS, "wc-0"),
        (JOBS, "wc-1"),
    ]
    for resource, name in children:
        child = obj(cluster, resource, name)
        assert child is not None, name
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-wc"
    # Every child was written by server-side apply, none by a plain create.
    writes = [
        r
        for r in list(cluster)
        if r.resource is not None
        and r.resource != DATAFLOWS
        and r.method.value in ("POST", "PUT", "PATCH")
        and r.resource.plural != "events"
    ]
    assert writes and all(r.method.value == "PATCH" for r in writes)
    assert all(r.headers.get("Content-Type", "").startswith(APPLY) for r in writes)
    assert runner.exit_code == 0, runner.output


async def test_status_follows_the_pods_to_running_and_succeeded(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: phase(cluster) == "Pending" and len(jobs_of(cluster)) == 2)
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        assert obj(cluster, DATAFLOWS, "wc")["status"]["readyProcesses"] == 2
        pods = sorted(pods_of(cluster))
        # The pods end, each Completed: the same pods, their container terminated.
        await play_kubelet(cluster, ready=False, terminated=(0, "millrace: completed"))
        await until(lambda: phase(cluster) == "Succeeded")
        # A finished flow's Jobs are left alone: not suspended, not deleted, their pods kept.
        await until(lambda: obj(cluster, DATAFLOWS, "wc")["status"]["message"] == "every process completed the flow")
        assert _suspended(cluster) == [False, False]
        assert sorted(pods_of(cluster)) == pods
    assert runner.exit_code == 0, runner.output


async def test_a_spec_change_restarts_every_pod(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2)
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        old_hash = template_hash(obj(cluster, JOBS, "wc-0"))
        old_pods = set(pods_of(cluster))
        await patch_spec({"processes": 3})
        # The old Jobs are deleted (Foreground: they stay until their pods are gone) and no new
        # Job appears while a pod of the old template is there.
        await until(lambda: all(j["metadata"].get("deletionTimestamp") for j in jobs_of(cluster).values()))
        await until(lambda: message(cluster) == "restarting: waiting for 2 pods of the previous pod template to stop")
        assert sorted(jobs_of(cluster)) == ["wc-0", "wc-1"]
        assert {template_hash(j) for j in jobs_of(cluster).values()} == {old_hash}
        assert set(pods_of(cluster)) == old_pods
        await play_garbage_collector(cluster)
        await until(
            lambda: (
                sorted(jobs_of(cluster)) == ["wc-0", "wc-1", "wc-2"]
                and old_hash not in {template_hash(j) for j in jobs_of(cluster).values()}
            )
        )
        assert not set(pods_of(cluster)) & old_pods
        env = {
            e["name"]: e.get("value")
            for e in obj(cluster, JOBS, "wc-2")["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["MILLRACE_PROCESSES"] == "3" and env["MILLRACE_POD_INDEX"] == "2"
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        assert obj(cluster, DATAFLOWS, "wc")["status"]["readyProcesses"] == 3
    assert runner.exit_code == 0, runner.output


async def test_a_malformed_dataflow_is_reported_not_crashed_on(cluster):
    bad = dataflow()
    bad["spec"] = {"processes": "many", "flow": {}}
    cluster.objects[DATAFLOWS, "jobs", "wc"] = bad
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: phase(cluster) == "Failed")
    status = obj(cluster, DATAFLOWS, "wc")["status"]
    assert "spec.flow" in status["message"]
    assert jobs_of(cluster) == {}
    assert runner.exit_code == 0, runner.output


def _failed_condition(cluster) -> dict[str, Any]:
    status = obj(cluster, DATAFLOWS, "wc")["status"]
    return next(c for c in status["conditions"] if c["type"] == "Failed")


async def test_a_flow_that_cannot_load_ends_failed_with_the_import_error(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow(flow={"module": "flows.missing:flow"})
    login(str(cluster.url).rstrip("/"))
    message_ = "millrace: failed: ModuleNotFoundError: No module named 'flows'"
    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2)
        await play_kubelet(cluster, ready=False, crash_loop=(1, message_, 1))
        await until(lambda: phase(cluster) == "Failed")
        # A failed flow's Jobs are suspended: no pod keeps crashing, none is made again.
        await until(lambda: _suspended(cluster) == [True, True])
    failed = _failed_condition(cluster)
    assert failed["status"] == "True" and failed["reason"] == "FlowFailed"
    assert "No module named 'flows'" in failed["message"]
    assert runner.exit_code == 0, runner.output


async def test_crash_looping_pods_end_failed_with_the_last_message(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    message_ = "millrace: failed: ZeroDivisionError: division by zero"
    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2)
        await play_kubelet(cluster, ready=False, crash_loop=(1, message_, 5))
        await until(lambda: phase(cluster) == "Failed")
        await until(lambda: _suspended(cluster) == [True, True])
    failed = _failed_condition(cluster)
    assert failed["reason"] == "CrashLoop" and "ZeroDivisionError" in failed["message"]
    assert runner.exit_code == 0, runner.output


async def test_suspend_suspends_the_jobs_and_resumes_them_without_a_restart(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2)
        before = {name: template_hash(job) for name, job in jobs_of(cluster).items()}
        await patch_spec({"suspend": True})
        await until(lambda: phase(cluster) == "Suspended")
        await until(lambda: _suspended(cluster) == [True, True])
        await patch_spec({"suspend": False})
        await until(lambda: _suspended(cluster) == [False, False])
        await until(lambda: phase(cluster) == "Pending")
        # The same Jobs throughout: suspend is not in the pod template.
        assert {name: template_hash(job) for name, job in jobs_of(cluster).items()} == before
        assert not any(j["metadata"].get("deletionTimestamp") for j in jobs_of(cluster).values())
    assert runner.exit_code == 0, runner.output


async def test_a_claim_that_cannot_grow_is_reported_and_the_flow_runs_on(cluster):
    cluster.claims_expand = False
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow(recovery={"enabled": True, "volumeSize": "1Gi"})
    login(str(cluster.url).rstrip("/"))

    def volume_size() -> dict[str, Any]:
        conditions = (obj(cluster, DATAFLOWS, "wc") or {}).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "VolumeSize"), {})

    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2 and volume_size().get("status") == "True")
        for index in range(2):
            claim = obj(cluster, CLAIMS, f"recovery-wc-{index}")
            assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
            (volume,) = [
                v
                for v in obj(cluster, JOBS, f"wc-{index}")["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "recovery"
            ]
            assert volume["persistentVolumeClaim"]["claimName"] == f"recovery-wc-{index}"
        await patch_spec({"recovery": {"enabled": True, "volumeSize": "2Gi"}})
        await until(lambda: volume_size().get("reason") == "ResizeFailed")
        assert "only dynamically provisioned pvc can be resized" in volume_size()["message"]
        assert obj(cluster, CLAIMS, "recovery-wc-0")["spec"]["resources"]["requests"]["storage"] == "1Gi"
        assert sorted(jobs_of(cluster)) == ["wc-0", "wc-1"] and _suspended(cluster) == [False, False]
    assert runner.exit_code == 0, runner.output


def _operator_requests(cluster) -> list[Any]:
    """The requests the operator made (the tests' own carry TEST_AGENT), watches left out."""
    return [
        r
        for r in list(cluster)
        if r.resource is not None
        and (r.headers.get("User-Agent") or "") != TEST_AGENT
        and r.params.get("watch") not in ("true", "1")
    ]


def _event_posted(cluster, reason: str) -> bool:
    return any(
        r.resource == EVENTS
        and r.method.value == "POST"
        and isinstance(r.data, dict)
        and r.data.get("reason") == reason
        for r in list(cluster)
    )


def _writes(requests: list[Any]) -> list[Any]:
    return [r for r in requests if r.method.value in ("POST", "PUT", "PATCH", "DELETE")]


async def test_an_unchanged_dataflow_costs_no_request_however_often_it_is_reconciled(cluster, monkeypatch):
    """Reconciles come from memory: the safety-net resync and events that change nothing
    neither read nor write, and a restarted operator writes nothing either."""
    monkeypatch.setattr(handlers, "RESYNC_SECONDS", 0.2)
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2)
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        flow = handlers._flows["jobs", "wc"]
        # Settled: the status written and its event (kopf posts events in the background) out.
        await until(lambda: _event_posted(cluster, "Running"))
        settled = len(_operator_requests(cluster))
        before = flow.reconciles
        # Resyncs, and a pod event that changes nothing the status shows.
        await play_kubelet(cluster, ready=True)
        await until(lambda: flow.reconciles >= before + 10)
        assert _operator_requests(cluster)[settled:] == []
    assert runner.exit_code == 0, runner.output
    restarted = len(list(cluster))
    async with Operator(RUN) as runner:
        await until(lambda: ("jobs", "wc") in handlers._flows and handlers._flows["jobs", "wc"].reconciles >= 3)
    after_restart = list(cluster)[restarted:]
    rewritten = _writes([r for r in after_restart if (r.headers.get("User-Agent") or "") != TEST_AGENT])
    assert rewritten == [], [(r.method.value, str(r.url)) for r in rewritten]
    assert runner.exit_code == 0, runner.output


async def test_status_has_one_writer_and_each_write_changes_it(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: phase(cluster) == "Pending" and len(jobs_of(cluster)) == 2)
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        await play_kubelet(cluster, ready=False, terminated=(0, "millrace: completed"))
        await until(lambda: phase(cluster) == "Succeeded")
        await until(lambda: handlers._flows["jobs", "wc"].status == obj(cluster, DATAFLOWS, "wc")["status"])
    assert runner.exit_code == 0, runner.output
    writes = [r for r in _operator_requests(cluster) if r.resource == DATAFLOWS and r.method.value != "GET"]
    statuses = [r.data["status"] for r in writes if isinstance(r.data, dict) and "status" in r.data]
    # The only writes of the status are whole statuses from the one daemon, in order of phase.
    assert statuses and all("phase" in s and "conditions" in s for s in statuses)
    phases = [s["phase"] for s in statuses]
    order = ["Pending", "Running", "Succeeded"]
    assert phases == sorted(phases, key=order.index) and phases[-1] == "Succeeded"
    assert all(a != b for a, b in itertools.pairwise(statuses))


async def test_a_child_deleted_by_hand_is_made_again_without_any_pod_event(cluster):
    """The Jobs and the other children are watched: their own events wake the reconcile."""
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    batch = as_test(kubernetes.client.BatchV1Api)
    core = as_test(kubernetes.client.CoreV1Api)
    async with Operator(RUN) as runner:
        await until(lambda: len(jobs_of(cluster)) == 2 and obj(cluster, SERVICES, "wc") is not None)
        await until(lambda: phase(cluster) == "Pending")
        old = obj(cluster, JOBS, "wc-1")["metadata"]["resourceVersion"]
        await asyncio.to_thread(batch.delete_namespaced_job, "wc-1", "jobs")
        await asyncio.to_thread(core.delete_namespaced_service, "wc", "jobs")
        await until(lambda: obj(cluster, JOBS, "wc-1") is not None and obj(cluster, SERVICES, "wc") is not None)
        assert obj(cluster, JOBS, "wc-1")["metadata"]["resourceVersion"] != old
        assert pods_of(cluster) == {}
    assert runner.exit_code == 0, runner.output


async def test_a_deleted_dataflow_leaves_nothing_of_it_in_the_operator(cluster):
    """What the operator keeps per Dataflow goes with it: the table does not grow for ever."""
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    custom = as_test(kubernetes.client.CustomObjectsApi)
    async with Operator(RUN) as runner:
        await until(lambda: ("jobs", "wc") in handlers._flows and phase(cluster) == "Pending")
        await asyncio.to_thread(
            custom.delete_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs", "dataflows", "wc"
        )
        await until(lambda: ("jobs", "wc") not in handlers._flows and obj(cluster, DATAFLOWS, "wc") is None)
    assert runner.exit_code == 0, runner.output
