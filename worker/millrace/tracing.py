"""Tracing and logging of a flow's runs, on OpenTelemetry.

Call :func:`setup_tracing` once, before running flows, and keep what it returns:

- ``log_level`` says which of millrace's log lines are printed (on standard error, once: they
  are no longer passed on to the root logger's handlers until :meth:`Tracer.shutdown`):
  ``"ERROR"`` (the default), ``"WARN"``, ``"INFO"`` (workers starting and finishing),
  ``"DEBUG"`` (each epoch) or ``"TRACE"`` (each batch of each step).
- ``tracing_config`` says where spans go: :class:`OtlpTracingConfig` sends them to any
  OpenTelemetry (OTLP) receiver, such as the OpenTelemetry Collector; :class:`JaegerConfig`
  to a Jaeger, over OTLP too (see there).

Every run then makes a trace: a ``millrace.run`` span, under it one ``millrace.worker`` span
per worker, under each one ``millrace.epoch`` span per epoch, and under those one span per
batch a step ran, named after the step (a run of stateless steps between stateful ones runs
its batches as one: its span is named after all of them, ``map #1 (f) -> filter #2 (g)``).
Their attributes carry the worker index (``millrace.worker.index``), the epoch
(``millrace.epoch``), the steps (``millrace.steps``) and the batch size
(``millrace.batch.size``). Under :func:`~millrace.execution.spawn_cluster` each process sets
up the same tracing, and its spans join the caller's trace under a ``millrace.process`` span
(attribute ``millrace.proc_id``); each process of a :func:`~millrace.execution.cluster_main`
cluster started by other means makes a trace of its own.

Without a call to :func:`setup_tracing` nothing of this runs: flows pay nothing for it.

>>> from millrace.tracing import OtlpTracingConfig, setup_tracing
>>> config = OtlpTracingConfig("my-flow", "http://127.0.0.1:4318/v1/traces")
>>> config.plan()
ExportPlan(protocol='http/protobuf', endpoint='http://127.0.0.1:4318/v1/traces')
>>> tracer = setup_tracing(config, log_level="INFO")  # keep it while flows run
>>> tracer.shutdown()
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .runtime import telemetry
from .runtime.telemetry import LOGGER, TRACE

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["TracingConfig", "OtlpTracingConfig", "JaegerConfig", "ExportPlan", "Tracer", "setup_tracing"]

log = logging.getLogger(f"{LOGGER}.tracing")

#: The protocols of OTLP an exporter can speak, by the names OpenTelemetry gives them.
GRPC = "grpc"
HTTP = "http/protobuf"

#: The ports of the Jaeger agent (its own UDP protocols), which an OTLP exporter cannot reach:
#: a JaegerConfig naming one sends to the same host's OTLP/gRPC port instead.
_JAEGER_AGENT_PORTS = (6831, 6832)
_JAEGER_OTLP_GRPC_PORT = 4317

_LEVELS = {
    "TRACE": TRACE,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


@dataclass(frozen=True)
class ExportPlan:
    """Where and how spans are exported: ``protocol`` is :data:`GRPC` or :data:`HTTP`;
    ``endpoint`` is the URL given to the exporter (``None``: OpenTelemetry's own default,
    ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``$OTEL_EXPORTER_OTLP_ENDPOINT`` if set, else
    ``http://localhost:4317``)."""

    protocol: str
    endpoint: str | None


class TracingConfig:
    """Where spans go; the base of :class:`OtlpTracingConfig` and :class:`JaegerConfig`.

    A subclass names the service (``service_name``), the share of runs traced
    (``sampling_ratio``) and the exporter (:meth:`span_exporter`): one may send spans
    anywhere an OpenTelemetry ``SpanExporter`` can.
    """

    service_name: str
    sampling_ratio: float

    def span_exporter(self) -> SpanExporter:
        """The OpenTelemetry exporter spans are handed to, in batches."""
        raise NotImplementedError(f"{type(self).__name__} does not say where spans go (span_exporter)")


def _check_common(config: Any) -> None:
    name, ratio = config.service_name, config.sampling_ratio
    kind = type(config).__name__
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind}: service_name must be a non-empty str, got {name!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{kind}: sampling_ratio must be a number from 0.0 to 1.0, got {ratio!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{kind}: sampling_ratio must be from 0.0 to 1.0, got {ratio!r}")


def plan_url(url: str, protocol: str | None, owner: str) -> ExportPlan:
    """The export plan for an OTLP ``url``, with ``protocol`` forced or (``None``) read from it.

    ``grpc://host:port``, or an ``http(s)://`` URL without a path, is OTLP/gRPC (as Bytewax,
    which spoke gRPC only, took them); an ``http(s)://`` URL with a path (OTLP/HTTP's is
    ``/v1/traces``) is OTLP/HTTP, posted to that very URL.

    >>> plan_url("grpc://collector:4317", None, "url")
    ExportPlan(protocol='grpc', endpoint='http://collector:4317')
    >>> plan_url("https://collector:4318/v1/traces", None, "url")
    ExportPlan(protocol='http/protobuf', endpoint='https://collector:4318/v1/traces')
    >>> plan_url("http://collector:4318", "http/protobuf", "url")
    ExportPlan(protocol='http/protobuf', endpoint='http://collector:4318/v1/traces')
    >>> plan_url("collector:4317", None, "OtlpTracingConfig url")
    Traceback (most recent call last):
    ...
    ValueError: OtlpTracingConfig url must be grpc://HOST:PORT or an http(s):// URL, got 'collector:4317'
    """
    if protocol not in (None, GRPC, HTTP):
        raise ValueError(f"{owner}: protocol must be {GRPC!r} or {HTTP!r}, got {protocol!r}")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("grpc", "http", "https") or not parts.hostname:
        raise ValueError(f"{owner} must be grpc://HOST:PORT or an http(s):// URL, got {url!r}")
    try:
        parts.port  # noqa: B018 -- parsing the port is what checks it
    except ValueError:
        raise ValueError(f"{owner} has a port that is not a number: {url!r}") from None
    has_path = parts.path not in ("", "/")
    if protocol is None:
        protocol = HTTP if parts.scheme != "grpc" and has_path else GRPC
    if protocol == GRPC:
        if has_path:
            raise ValueError(f"{owner}: OTLP/gRPC takes no path, got {url!r}")
        scheme = "https" if parts.scheme == "https" else "http"
        return ExportPlan(GRPC, f"{scheme}://{parts.netloc}")
    if parts.scheme == "grpc":
        raise ValueError(f"{owner}: OTLP/HTTP needs an http(s):// URL, got {url!r}")
    return ExportPlan(HTTP, url if has_path else url.rstrip("/") + "/v1/traces")


def _exporter(plan: ExportPlan) -> SpanExporter:
    if plan.protocol == HTTP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=plan.endpoint)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    if plan.endpoint is None:
        return GrpcExporter()
    return GrpcExporter(endpoint=plan.endpoint, insecure=plan.endpoint.startswith("http://"))


@dataclass(frozen=True)
class OtlpTracingConfig(TracingConfig):
    """Send spans to an OpenTelemetry (OTLP) receiver, such as the OpenTelemetry Collector,
    which passes them on to whichever backends it is set up for.

    ``service_name`` names the flow in the backend. ``url`` is where the receiver listens:
    ``grpc://HOST:PORT`` or ``http://HOST:PORT`` for OTLP/gRPC (port 4317 by convention),
    ``http://HOST:PORT/v1/traces`` for OTLP/HTTP (port 4318); ``https://`` for either over TLS.
    ``None`` (the default) is OpenTelemetry's own default: ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    or ``$OTEL_EXPORTER_OTLP_ENDPOINT`` if set, else ``http://localhost:4317`` over gRPC.
    ``protocol`` (``"grpc"`` or ``"http/protobuf"``) overrides what the URL says.
    ``sampling_ratio`` is the share of runs traced, from 0.0 to 1.0.

    >>> OtlpTracingConfig("wordcount", "grpc://127.0.0.1:4317").plan()
    ExportPlan(protocol='grpc', endpoint='http://127.0.0.1:4317')
    >>> OtlpTracingConfig("wordcount", sampling_ratio=2.0)
    Traceback (most recent call last):
    ...
    ValueError: OtlpTracingConfig: sampling_ratio must be from 0.0 to 1.0, got 2.0
    """

    service_name: str
    url: str | None = None
    sampling_ratio: float = 1.0
    protocol: str | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        self.plan()

    def plan(self) -> ExportPlan:
        """Where, and over which protocol, the spans go."""
        if self.url is None:
            if self.protocol not in (None, GRPC):
                raise ValueError(f"OtlpTracingConfig: protocol {self.protocol!r} needs a url")
            return ExportPlan(GRPC, None)
        return plan_url(self.url, self.protocol, "OtlpTracingConfig url")

    def span_exporter(self) -> SpanExporter:
        return _exporter(self.plan())


@dataclass(frozen=True)
class JaegerConfig(TracingConfig):
    """Send spans to a Jaeger, which takes OTLP itself (since Jaeger 1.35): this config is an
    OTLP exporter pointed at Jaeger's collector, because OpenTelemetry's Jaeger exporter
    (the agent protocol Bytewax used) is deprecated and no longer released.

    ``endpoint`` is ``HOST:PORT`` of Jaeger's OTLP/gRPC receiver (default ``127.0.0.1:4317``,
    or what ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``/``$OTEL_EXPORTER_OTLP_ENDPOINT`` say), or
    a URL as :class:`OtlpTracingConfig` takes (``http://HOST:4318/v1/traces`` for OTLP/HTTP).
    An endpoint at the Jaeger agent's ports (6831, 6832: Bytewax's ``127.0.0.1:6831``, say)
    cannot take OTLP: the spans go to port 4317 of the same host, and a warning says so. The
    Jaeger agent's environment variables (``OTEL_EXPORTER_JAEGER_AGENT_HOST``...) are not read.

    >>> JaegerConfig("wordcount").plan()
    ExportPlan(protocol='grpc', endpoint=None)
    >>> JaegerConfig("wordcount", "jaeger:4317").plan()
    ExportPlan(protocol='grpc', endpoint='http://jaeger:4317')
    >>> JaegerConfig("wordcount", "http://jaeger:4318/v1/traces").plan()
    ExportPlan(protocol='http/protobuf', endpoint='http://jaeger:4318/v1/traces')
    """

    service_name: str
    endpoint: str | None = None
    sampling_ratio: float = 1.0

    def __post_init__(self) -> None:
        _check_common(self)
        self.plan()

    def plan(self) -> ExportPlan:
        """Where, and over which protocol, the spans go."""
        endpoint = self.endpoint
        if endpoint is None:
            return ExportPlan(GRPC, None)
        owner = "JaegerConfig endpoint"
        if not isinstance(endpoint, str):
            raise TypeError(f"{owner} must be a str, got {endpoint!r}")
        if "://" in endpoint:
            return plan_url(endpoint, None, owner)
        plan = plan_url(f"grpc://{endpoint}", None, f"{owner} (HOST:PORT or a URL)")
        parts = urlsplit(f"grpc://{endpoint}")
        if parts.port is None:
            raise ValueError(f"{owner} must be HOST:PORT or a URL, got {endpoint!r}")
        if parts.port in _JAEGER_AGENT_PORTS:
            return ExportPlan(GRPC, f"http://{parts.hostname}:{_JAEGER_OTLP_GRPC_PORT}")
        return plan

    def span_exporter(self) -> SpanExporter:
        plan = self.plan()
        if self.endpoint is not None and plan.endpoint is not None and self.endpoint not in plan.endpoint:
            log.warning(
                "JaegerConfig endpoint %s is the Jaeger agent's port, which takes no OTLP; sending to %s",
                self.endpoint,
                plan.endpoint,
            )
        return _exporter(plan)


class Tracer:
    """What :func:`setup_tracing` returns: keep it while flows run. :meth:`shutdown` exports
    what is left and stops tracing and millrace's log lines (a process that exits does it too)."""

    def __init__(self, provider: TracerProvider | None, handler: logging.Handler) -> None:
        self.provider = provider
        self.handler = handler
        self._closed = False

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export the spans still buffered; whether all went out in time."""
        return True if self.provider is None or self._closed else self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Export what is left, then trace nothing and log nothing more (again: nothing)."""
        global _active
        if self._closed:
            return
        self._closed = True
        if _active is self:
            _active = None
            telemetry.install(None)
            logging.getLogger(LOGGER).setLevel(logging.NOTSET)
            logging.getLogger(LOGGER).propagate = True
        logging.getLogger(LOGGER).removeHandler(self.handler)
        if self.provider is not None:
            self.provider.shutdown()


#: The setup in force (what the last :func:`setup_tracing` returned, until shut down).
_active: Tracer | None = None


def _level(log_level: str | None) -> int:
    if log_level is None:
        return logging.ERROR
    level = _LEVELS.get(log_level.upper()) if isinstance(log_level, str) else None
    if level is None:
        raise ValueError(f"log_level must be one of ERROR, WARN, INFO, DEBUG, TRACE, got {log_level!r}")
    return level


def setup_tracing(tracing_config: TracingConfig | None = None, log_level: str | None = None) -> Tracer:
    """Trace every run from now on as ``tracing_config`` says (``None``: no spans), and print
    millrace's log lines of ``log_level`` and above (``"ERROR"``, ``"WARN"``, ``"INFO"``,
    ``"DEBUG"``, ``"TRACE"``; default ``"ERROR"``) on standard error.

    Returns a :class:`Tracer`: keep it while flows run. A second call replaces the first
    setup (the first one's spans are exported first). An unknown level or a config that is
    not a :class:`TracingConfig` is an error here, before anything runs.

    >>> from millrace.dataflow import Dataflow
    >>> from millrace.execution import run_main
    >>> from millrace.inputs import TestingInputConfig
    >>> from millrace.outputs import StdOutputConfig
    >>> tracer = setup_tracing(log_level="INFO")
    >>> flow = Dataflow()
    >>> flow.input("inp", TestingInputConfig([1, 2]))
    >>> flow.capture(StdOutputConfig())
    >>> run_main(flow)  # the log lines go to standard error
    1
    2
    >>> tracer.shutdown()
    >>> setup_tracing(log_level="LOUD")
    Traceback (most recent call last):
    ...
    ValueError: log_level must be one of ERROR, WARN, INFO, DEBUG, TRACE, got 'LOUD'
    """
    level = _level(log_level)
    if tracing_config is not None and not isinstance(tracing_config, TracingConfig):
        raise TypeError(
            f"tracing_config must be an OtlpTracingConfig, a JaegerConfig or another TracingConfig, "
            f"got {tracing_config!r}"
        )
    provider = None
    tracer = None
    if tracing_config is not None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        exporter = tracing_config.span_exporter()
        provider = TracerProvider(
            resource=Resource.create({"service.name": tracing_config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(float(tracing_config.sampling_ratio))),
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("millrace")
    global _active
    if _active is not None:
        _active.shutdown()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    handler.setLevel(level)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.setLevel(level)
    # The handler prints millrace's lines; passed on to the root logger as well, they would
    # print twice where the program (or the pod's entry point) configured the root logger.
    logger.propagate = False
    _active = result = Tracer(provider, handler)
    telemetry.install(telemetry.Telemetry(tracer, _Handoff(tracing_config, log_level)))
    return result


@dataclass(frozen=True)
class _Handoff:
    """Pickles to a process ``spawn_cluster`` starts, where calling it sets up the same."""

    tracing_config: TracingConfig | None
    log_level: str | None

    def __call__(self) -> Callable[[], object]:
        tracer = setup_tracing(self.tracing_config, self.log_level)
        # What the process calls before it exits: a receiver that is gone delays it 5 s at most.
        return partial(tracer.force_flush, 5_000)
