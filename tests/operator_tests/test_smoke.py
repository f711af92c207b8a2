"""The `helm test` program against kmock: it applies its Dataflow, reports the outcome, cleans up."""

from __future__ import annotations

import asyncio

import kubernetes
import pytest

from millrace_operator import smoke

from .kopf_harness import DATAFLOWS, as_test, cluster, obj, until  # noqa: F401 - cluster is a fixture

pytestmark = pytest.mark.timeout(60)


async def _finish_as(cluster, phase: str, message: str) -> None:
    await until(lambda: obj(cluster, DATAFLOWS, "smoke") is not None)
    custom = as_test(kubernetes.client.CustomObjectsApi)
    await asyncio.to_thread(
        custom.patch_namespaced_custom_object_status,
        "millrace.dev",
        "v1alpha1",
        "jobs",
        "dataflows",
        "smoke",
        {"status": {"phase": phase, "message": message}},
    )


async def _run(timeout: float = 20.0) -> asyncio.Task:
    api = kubernetes.client.CustomObjectsApi()
    return asyncio.create_task(asyncio.to_thread(smoke.run, api, "smoke", "jobs", 2, timeout, 0.1))


async def test_a_dataflow_that_succeeds_passes_and_is_deleted(cluster):
    running = await _run()
    await _finish_as(cluster, "Succeeded", "every process completed the flow")
    succeeded, message = await running
    assert succeeded and "jobs/smoke succeeded" in message
    assert obj(cluster, DATAFLOWS, "smoke") is None


async def test_a_dataflow_that_fails_fails_with_its_reason(cluster):
    running = await _run()
    await _finish_as(cluster, "Failed", "smoke-0: millrace: failed: ZeroDivisionError")
    succeeded, message = await running
    assert not succeeded and "ZeroDivisionError" in message
    assert obj(cluster, DATAFLOWS, "smoke") is None


async def test_a_dataflow_that_never_finishes_times_out_and_says_where_it_stood(cluster):
    succeeded, message = await (await _run(timeout=0.5))
    assert not succeeded and "did not finish within 0.5 s" in message and "phase unset" in message
    assert obj(cluster, DATAFLOWS, "smoke") is None


def test_the_smoke_flow_computes_its_sum(capsys):
    from millrace.execution import run_main

    namespace: dict = {}
    exec(smoke.FLOW, namespace)
    run_main(namespace["flow"])
    assert capsys.readouterr().out == "('sum', 4950)\n"
