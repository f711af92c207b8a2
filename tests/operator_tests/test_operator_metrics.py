"""The operator's metrics endpoint and the step ids in the status, with kopf in-process against
kmock's Kubernetes emulator (see kopf_harness): the endpoint is scraped over HTTP as Prometheus
would."""

from __future__ import annotations

import asyncio
import http.server
import threading
import urllib.request
from typing import ClassVar

import kubernetes
import pytest
from prometheus_client.parser import text_string_to_metric_families

from millrace.readiness import Readiness
from millrace_operator import handlers, manifests

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


async def _give_pods_an_ip(cluster) -> None:
    """The kubelet's part: the pods' IP, here this machine's, where the test's worker answers."""
    core = as_test(kubernetes.client.CoreV1Api)
    for name, found in pods_of(cluster).items():
        status = {**found["status"], "podIP": "127.0.0.1"}
        await asyncio.to_thread(core.patch_namespaced_pod, name, "jobs", {"status": status})


async def test_the_steps_process_0s_worker_names_reach_the_status(cluster, monkeypatch):
    """The operator asks process 0's Ready pod for ``GET /steps`` on its health port, answered
    here by a real worker's readiness server, and writes them into ``status.steps``."""
    worker = Readiness(state_dir=None, port=0)
    worker.loaded(["lines", "map#1", "count"])
    monkeypatch.setattr(manifests, "HEALTH_PORT", worker.port)
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    try:
        async with Operator(RUN) as runner:
            await until(lambda: phase(cluster) == "Pending" and len(pods_of(cluster)) == 0)
            await play_kubelet(cluster, ready=True)
            await _give_pods_an_ip(cluster)
            await until(lambda: obj(cluster, DATAFLOWS, "wc")["status"].get("steps") == ["lines", "map#1", "count"])
            assert phase(cluster) == "Running"
        assert runner.exit_code == 0, runner.output
    finally:
        worker.close()


class _OldWorker(http.server.BaseHTTPRequestHandler):
    """A worker of an older millrace: no ``/steps`` (404)."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_a_worker_without_steps_is_asked_once_and_the_status_has_none(cluster, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(manifests, "HEALTH_PORT", server.server_address[1])
    cluster.objects[DATAFLOWS, "jobs", "wc"] = dataflow()
    login(str(cluster.url).rstrip("/"))
    try:
        async with Operator(RUN) as runner:
            await until(lambda: phase(cluster) == "Pending")
            await play_kubelet(cluster, ready=True)
            await _give_pods_an_ip(cluster)
            await until(lambda: phase(cluster) == "Running" and _OldWorker.asked)
            # The pods unready and Ready again: process 0's pod is not asked again.
            await play_kubelet(cluster, ready=False)
            await until(lambda: phase(cluster) == "Pending")
            await play_kubelet(cluster, ready=True)
            await until(lambda: phase(cluster) == "Running")
            assert _OldWorker.asked == ["/steps"]
            assert "steps" not in obj(cluster, DATAFLOWS, "wc")["status"]
        assert runner.exit_code == 0, runner.output
    finally:
        server.shutdown()
        server.server_close()
