"""The operator's own Prometheus metrics, prefixed ``millrace_operator_``.

- ``millrace_operator_reconciles_total{result}``: reconciles by how they ended: ``changed`` (the
  status was written), ``unchanged`` (nothing to write), ``error`` (the API server refused or
  was unreachable, or a bug; retried);
- ``millrace_operator_reconcile_duration_seconds``: how long one took, status write included;
- ``millrace_operator_reconcile_errors_total{error}``: failed reconciles by exception type;
- ``millrace_operator_api_writes_total``: the writes reconciles sent to the API server (child
  applies and deletions; a quiet cluster costs none);
- ``millrace_operator_dataflows{phase}``: the Dataflows this operator runs, by the phase it
  last wrote, computed when scraped from its in-memory view (every phase is present, 0 when
  none is in it; a Dataflow without a status yet is not counted);
- the standard ``process_*`` and ``python_*`` metrics of the operator's process.

Served by :meth:`OperatorMetrics.serve` on its own registry (a test may run several operators
in one process), at ``/metrics`` on :data:`METRICS_PORT` in the chart's pod.

>>> metrics = OperatorMetrics(lambda: ["Running", "Running", "Failed"])
>>> metrics.reconciled("changed", 0.01)
>>> text = metrics.text()
>>> 'millrace_operator_reconciles_total{result="changed"} 1.0' in text
True
>>> 'millrace_operator_dataflows{phase="Running"} 2.0' in text
True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Where the operator's pod serves its metrics (the port named ``metrics``).
METRICS_PORT = 9101
#: A Dataflow's phases, as the CRD's status enumerates them.
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class _Phases(Collector):
    """``millrace_operator_dataflows{phase}`` from the phases the operator holds now."""

    def __init__(self, phases: Callable[[], Iterable[str | None]]) -> None:
        self.phases = phases

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(PHASES, 0)
        for phase in self.phases():
            if phase is not None:
                counts[phase] = counts.get(phase, 0) + 1
        family = GaugeMetricFamily(
            "millrace_operator_dataflows", "Dataflows this operator runs, by phase", labels=["phase"]
        )
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    """The operator's metrics (see the module); ``phases`` lists the phase of every Dataflow the
    operator runs, called at each scrape from the HTTP server's thread."""

    def __init__(self, phases: Callable[[], Iterable[str | None]]) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "millrace_operator_reconciles", "Reconciles of Dataflows, by result", ["result"], registry=self.registry
        )
        self.duration = Histogram(
            "millrace_operator_reconcile_duration_seconds",
            "How long a reconcile of a Dataflow took, its status write included",
            registry=self.registry,
        )
        self.errors = Counter(
            "millrace_operator_reconcile_errors",
            "Failed reconciles of Dataflows (retried), by exception type",
            ["error"],
            registry=self.registry,
        )
        self.api_writes = Counter(
            "millrace_operator_api_writes",
            "Writes of children (applies, deletions) sent to the API server by reconciles",
            registry=self.registry,
        )
        for result in ("changed", "unchanged", "error"):
            self.reconciles.labels(result)  # every result is a series from the start, at 0
        self.registry.register(_Phases(phases))
        ProcessCollector(registry=self.registry)
        self.registry.register(PLATFORM_COLLECTOR)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def reconciled(self, result: str, seconds: float, error: BaseException | None = None) -> None:
        """Count one reconcile that ended with ``result`` after ``seconds``."""
        self.reconciles.labels(result).inc()
        self.duration.observe(seconds)
        if error is not None:
            self.errors.labels(type(error).__name__).inc()

    def text(self) -> str:
        """What a scrape gets (the Prometheus text format)."""
        return generate_latest(self.registry).decode()

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0: any free one) in a thread; the port it is on."""
        self.stop()
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        return self.port or port

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
