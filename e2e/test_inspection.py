"""What a running flow shows on a real cluster: its step ids in the Dataflow's status (and in
``kubectl describe``), the worker pods' and the operator's Prometheus metrics, scraped through the
API server's pod proxy as a Prometheus inside the cluster would reach the pods' ports.

(The file's name sorts before test_kind.py, whose last test uninstalls the operator.)"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import OPERATOR_NAMESPACE, run
from .test_kind import TICKING_FLOW, apply, dataflow, kubectl_json, pods, wait_for, wait_until

pytestmark = pytest.mark.timeout(600)


def scrape(namespace: str, pod: str, port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics of ``pod``'s ``port``, through the API server; samples by metric name."""
    text = run("kubectl", "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics").stdout
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_the_status_lists_the_flows_step_ids_and_describe_shows_them(namespace):
    apply(dataflow("steps", namespace, TICKING_FLOW, processes=2))
    wait_for(namespace, "steps", "Ready")
    # Process 0's init container loaded the flow and reported its steps, named as the metrics'
    # step_id label names them.
    wait_until(
        "the step ids in the status",
        lambda: (
            kubectl_json("get", "dataflow", "steps", "-n", namespace)["status"].get("steps")
            == ["ticks", "count", "capture#2"]
        ),
    )
    described = run("kubectl", "describe", "dataflow", "steps", "-n", namespace).stdout
    assert "Steps:" in described and all(step in described for step in ("ticks", "count", "capture#2")), described
    wide = run("kubectl", "get", "df", "steps", "-n", namespace, "-o", "wide").stdout
    assert "STEPS" in wide and '["ticks","count","capture#2"]' in wide, wide


def test_a_worker_pod_serves_its_flows_metrics(namespace):
    apply(dataflow("scraped", namespace, TICKING_FLOW, processes=2))
    wait_for(namespace, "scraped", "Ready")
    (zero,) = [p for p in pods(namespace, "scraped") if p["metadata"]["labels"]["millrace.dev/process"] == "0"]
    annotations = zero["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9102"
    assert annotations["prometheus.io/path"] == "/metrics"
    (worker,) = zero["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in worker["ports"]

    last_error: list[str] = []

    def counted() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        try:
            samples = scrape(namespace, zero["metadata"]["name"], 9102)
        except AssertionError as exc:  # not served (yet): say how, if it never is
            last_error[:] = [str(exc)]
            return None
        # The ticks the input read, per step and worker (the engine's metrics contract).
        items = [value for labels, value in samples.get("millrace_step_items_out_total", []) if labels.get("step_id")]
        return samples if items and sum(items) > 0 else None

    try:
        samples = wait_until("the worker's metrics to count items", counted, timeout=120, every=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last scrape: {last_error}") from None
    assert any(name.startswith("millrace_") for name in samples)
    assert "process_cpu_seconds_total" in samples


def test_the_operator_serves_its_metrics(namespace):
    apply(dataflow("watched", namespace, TICKING_FLOW, processes=1))
    wait_for(namespace, "watched", "Ready")
    (operator,) = [
        pod
        for pod in kubectl_json(
            "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=millrace-operator"
        )["items"]
        if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
    ]
    assert operator["metadata"]["annotations"]["prometheus.io/port"] == "9101"
    samples = scrape(OPERATOR_NAMESPACE, operator["metadata"]["name"], 9101)
    running = [value for labels, value in samples["millrace_operator_dataflows"] if labels["phase"] == "Running"]
    assert running and running[0] >= 1
    changed = [
        value for labels, value in samples["millrace_operator_reconciles_total"] if labels["result"] == "changed"
    ]
    assert changed and changed[0] >= 2  # Pending, then Running, for this Dataflow alone
    assert samples["millrace_operator_reconcile_duration_seconds_count"][0][1] >= 2
