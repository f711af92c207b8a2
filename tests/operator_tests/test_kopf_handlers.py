"""The kopf handlers, in-process, against kmock's Kubernetes emulator (see kopf_harness)."""

from __future__ import annotations

import asyncio

import kubernetes
import pytest

from .kopf_harness import (  # noqa: F401 - cluster is a fixture
    DATAFLOWS, PODS, RUN, SECRETS, SERVICES, CONFIGMAPS, STATEFULSETS, Operator, as_test, cluster, dataflow, login,
    obj, phase, play_kubelet, until,
)

pytestmark = pytest.mark.timeout(120)


async def test_create_makes_owned_children_and_a_status(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    import millrace_operator.handlers  # noqa: F401 - registers the handlers

    async with Operator(RUN) as runner:
        await until(lambda: obj(cluster, STATEFULSETS, "wc") is not None, 8)
        await until(lambda: (obj(cluster, DATAFLOWS, "wc") or {}).get("status", {}).get("phase") == "Pending")
    sts = obj(cluster, STATEFULSETS, "wc")
    assert sts["spec"]["replicas"] == 2
    for resource, name in [(SERVICES, "wc"), (CONFIGMAPS, "wc-flow"), (SECRETS, "wc-cluster-key")]:
        child = obj(cluster, resource, name)
        assert child is not None, name
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-wc"
    assert runner.exit_code == 0, runner.output


async def test_status_follows_the_pods_to_running_and_succeeded(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: phase(cluster) == "Pending")
        await play_kubelet(cluster, "wc", ready=True)
        await until(lambda: phase(cluster) == "Running")
        assert obj(cluster, DATAFLOWS, "wc")["status"]["readyProcesses"] == 2
        core = as_test(kubernetes.client.CoreV1Api)
        for index in range(2):
            await asyncio.to_thread(core.delete_namespaced_pod, f"wc-{index}", "jobs")
        await play_kubelet(cluster, "wc", ready=False, terminated=(0, "millrace: completed"))
        await until(lambda: phase(cluster) == "Succeeded")
        await until(lambda: obj(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 0)
    assert runner.exit_code == 0, runner.output


async def test_a_spec_change_restarts_every_pod(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: obj(cluster, STATEFULSETS, "wc") is not None)
        await play_kubelet(cluster, "wc", ready=True)
        await until(lambda: phase(cluster) == "Running")
        custom = as_test(kubernetes.client.CustomObjectsApi)
        await asyncio.to_thread(custom.patch_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs",
                                "dataflows", "wc", {"spec": {"processes": 3}})
        await until(lambda: obj(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 3)
        await until(lambda: all(obj(cluster, PODS, f"wc-{i}") is None for i in range(2)))
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
    assert obj(cluster, STATEFULSETS, "wc") is None
    assert runner.exit_code == 0, runner.output


def _failed_condition(cluster) -> dict[str, Any]:
    status = obj(cluster, DATAFLOWS, "wc")["status"]
    return next(c for c in status["conditions"] if c["type"] == "Failed")


async def test_a_flow_that_cannot_load_ends_failed_with_the_import_error(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow(flow={"module": "flows.missing:flow"})
    login(str(cluster.url).rstrip("/"))
    message = "millrace: failed: ModuleNotFoundError: No module named 'flows'"
    async with Operator(RUN) as runner:
        await until(lambda: obj(cluster, STATEFULSETS, "wc") is not None)
        await play_kubelet(cluster, "wc", ready=False, crash_loop=(1, message, 1))
        await until(lambda: phase(cluster) == "Failed")
        await until(lambda: obj(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 0)
    failed = _failed_condition(cluster)
    assert failed["status"] == "True" and failed["reason"] == "FlowFailed"
    assert "No module named 'flows'" in failed["message"]
    assert runner.exit_code == 0, runner.output


async def test_crash_looping_pods_end_failed_with_the_last_message(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    message = "millrace: failed: ZeroDivisionError: division by zero"
    async with Operator(RUN) as runner:
        await until(lambda: obj(cluster, STATEFULSETS, "wc") is not None)
        await play_kubelet(cluster, "wc", ready=False, crash_loop=(1, message, 5))
        await until(lambda: phase(cluster) == "Failed")
    failed = _failed_condition(cluster)
    assert failed["reason"] == "CrashLoop" and "ZeroDivisionError" in failed["message"]
    assert runner.exit_code == 0, runner.output


async def test_suspend_scales_to_zero_and_back(cluster):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    custom = as_test(kubernetes.client.CustomObjectsApi)

    async def set_suspend(value: bool) -> None:
        await asyncio.to_thread(custom.patch_namespaced_custom_object, "millrace.dev", "v1alpha1", "jobs",
                                "dataflows", "wc", {"spec": {"suspend": value}})

    async with Operator(RUN) as runner:
        await until(lambda: obj(cluster, STATEFULSETS, "wc") is not None)
        await set_suspend(True)
        await until(lambda: phase(cluster) == "Suspended")
        assert obj(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 0
        await set_suspend(False)
        await until(lambda: obj(cluster, STATEFULSETS, "wc")["spec"]["replicas"] == 2)
        await until(lambda: phase(cluster) == "Pending")
    assert runner.exit_code == 0, runner.output
