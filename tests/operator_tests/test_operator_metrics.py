"""The operator's metrics endpoint and the step ids in the status, with kopf in-process against
kmock's Kubernetes emulator (see kopf_harness): the endpoint is scraped over HTTP as Prometheus
would."""

from __future__ import annotations

import asyncio
import urllib.request

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from millrace_operator import handlers

from .kopf_harness import (
    DATAFLOWS,
    RUN,
    Operator,
    as_test,
    dataflow,
    login,
    obj,
    phase,
    play_kubelet,
    pods_of,
    until,
)

pytestmark = pytest.mark.timeout(120)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the endpoint serves, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _reconciles(samples, result: str) -> float:
    return samples[("millrace_operator_reconciles_total", (("result", result),))]


def _dataflows(samples, phase_: str) -> float:
    return samples[("millrace_operator_dataflows", (("phase", phase_),))]


@pytest.fixture
def metrics_port(monkeypatch):
    monkeypatch.setattr(handlers, "metrics_port", 0)  # any free port: tests run side by side


async def test_the_operator_serves_reconciles_and_dataflows_by_phase(cluster, metrics_port):
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    cluster.objects[DATAFLOWS, "jobs", "other"] = dataflow("other", suspend=True)
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: handlers.METRICS.port is not None)
        port = handlers.METRICS.port
        before = await asyncio.to_thread(_scrape, port)
        await until(lambda: phase(cluster) == "Pending" and phase(cluster, "other") == "Suspended")
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        # The status the operator wrote last is what the gauge counts: one Running, one Suspended.
        samples = await asyncio.to_thread(_scrape, port)
        assert _dataflows(samples, "Running") == 1
        assert _dataflows(samples, "Suspended") == 1
        assert _dataflows(samples, "Pending") == _dataflows(samples, "Failed") == 0
        # Pending then Running for wc, Suspended for other: at least three status writes, each
        # a reconcile that changed something, and their children were written.
        assert _reconciles(samples, "changed") - _reconciles(before, "changed") >= 3
        assert _reconciles(samples, "error") == 0
        assert samples[("millrace_operator_reconcile_duration_seconds_count", ())] >= 3
        assert samples[("millrace_operator_api_writes_total", ())] > 0
        assert samples[("process_cpu_seconds_total", ())] > 0
    # The operator stopped: so did its endpoint.
    assert handlers.METRICS.port is None
    with pytest.raises(OSError):
        await asyncio.to_thread(_scrape, port)
    assert runner.exit_code == 0, runner.output


async def test_the_step_ids_process_0_reports_reach_the_status(cluster):
    """The kubelet's part: process 0's init container ``steps`` ended with the step ids in its
    termination message; the operator copies them into ``status.steps``."""
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    async with Operator(RUN) as runner:
        await until(lambda: phase(cluster) == "Pending")
        await play_kubelet(cluster, ready=True)
        await until(lambda: phase(cluster) == "Running")
        assert "steps" not in obj(cluster, DATAFLOWS, "wc")["status"]
        (first,) = [p for p in pods_of(cluster).values() if p["metadata"]["labels"]["millrace.dev/process"] == "0"]
        init = {
            "name": "steps",
            "restartCount": 0,
            "image": "x",
            "imageID": "",
            "ready": False,
            "state": {"terminated": {"exitCode": 0, "message": 'millrace: steps: ["lines", "count"]'}},
        }
        core = as_test(kubernetes.client.CoreV1Api)
        status = {**first["status"], "initContainerStatuses": [init]}
        await asyncio.to_thread(core.patch_namespaced_pod, first["metadata"]["name"], "jobs", {"status": status})
        await until(lambda: obj(cluster, DATAFLOWS, "wc")["status"].get("steps") == ["lines", "count"])
        assert phase(cluster) == "Running"
    assert runner.exit_code == 0, runner.output
