"""millrace.tracing: spans per run, worker, epoch and step batch, and log lines at a level.

The span tree is checked on an in-memory exporter, then for real: exported over OTLP/HTTP and
OTLP/gRPC to receivers the tests start (tests/support/otlp_receiver.py), from one process and
from the processes of a spawn_cluster.
"""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import millrace.tracing
from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, cluster_main, run_main, spawn_cluster
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.runtime import telemetry
from millrace.runtime.engine import epoch_policy
from millrace.runtime.exchange import Exchange
from millrace.runtime.traced import TracedWorker
from millrace.runtime.worker import Worker
from millrace.tracing import ExportPlan, JaegerConfig, OtlpTracingConfig, TracingConfig, setup_tracing
from millrace.transport.addresses import free_ports
from tests.support.otlp_receiver import ReceivedSpan, grpc_receiver, http_receiver


class MemoryConfig(TracingConfig):
    """Spans to an in-memory exporter, for the tests that need no receiver."""

    def __init__(self, sampling_ratio: float = 1.0) -> None:
        self.service_name = "memory"
        self.sampling_ratio = sampling_ratio
        self.exporter = InMemorySpanExporter()

    def span_exporter(self) -> SpanExporter:
        return self.exporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture(autouse=True)
def no_tracing_left() -> Iterator[None]:
    yield
    if millrace.tracing._active is not None:
        millrace.tracing._active.shutdown()
    assert telemetry.current() is None


def keyed_flow(out: list[Any], items: int = 6) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([("k", i) for i in range(items)]))
    flow.map(lambda kv: (kv[0], kv[1] * 10))
    total = 10 * sum(range(items))
    # Complete once every item is in: one item out, in the last item's epoch.
    flow.reduce("sum", lambda acc, x: acc + x, lambda acc: acc == total)
    flow.capture(TestingOutputConfig(out))
    return flow


def failing_flow() -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1, 2, 0, 4]))
    flow.map(lambda x: 10 // x)
    flow.capture(TestingOutputConfig([]))
    return flow


# -- the tree, on any exporter -------------------------------------------------------------


class Tree:
    """Spans as (name, id, parent id, attributes), whichever exporter they came from."""

    def __init__(self, spans: list[tuple[str, str, str, dict[str, Any], str]]) -> None:
        self.spans = spans
        self.by_id = {span_id: (name, parent, attrs) for name, span_id, parent, attrs, _ in spans}

    @classmethod
    def of_sdk(cls, spans: list[ReadableSpan]) -> Tree:
        rows = []
        for span in spans:
            assert span.context is not None
            parent = format(span.parent.span_id, "016x") if span.parent is not None else ""
            rows.append(
                (
                    span.name,
                    format(span.context.span_id, "016x"),
                    parent,
                    dict(span.attributes or {}),
                    format(span.context.trace_id, "032x"),
                )
            )
        return cls(rows)

    @classmethod
    def of_received(cls, spans: list[ReceivedSpan]) -> Tree:
        return cls([(s.name, s.span_id, s.parent_id, s.attributes, s.trace_id) for s in spans])

    def named(self, name: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [(span_id, parent, attrs) for n, span_id, parent, attrs, _ in self.spans if n == name]

    def parent_name(self, parent: str) -> str | None:
        return self.by_id[parent][0] if parent in self.by_id else None

    def steps(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(name, parent, attrs) for name, _, parent, attrs, _ in self.spans if not name.startswith("millrace.")]

    def trace_ids(self) -> set[str]:
        return {trace_id for *_, trace_id in self.spans}


def check_single_worker_tree(tree: Tree, items: int) -> None:
    """run > worker > epoch (one per item, TestingEpochConfig) > step batches."""
    (run_id, run_parent, run_attrs), *more = tree.named("millrace.run")
    assert not more and run_parent == "" and run_attrs["millrace.worker.count"] == 1
    (worker_id, worker_parent, worker_attrs), *more = tree.named("millrace.worker")
    assert not more and worker_parent == run_id and worker_attrs["millrace.worker.index"] == 0
    epochs = tree.named("millrace.epoch")
    assert all(parent == worker_id for _, parent, _ in epochs)
    # One epoch per item; the input is found exhausted in the last one.
    assert sorted(attrs["millrace.epoch"] for _, _, attrs in epochs) == list(range(items))
    assert [attrs["millrace.epoch.last"] for _, _, attrs in epochs] == [False] * (items - 1) + [True]
    epoch_of = {span_id: attrs["millrace.epoch"] for span_id, _, attrs in epochs}
    steps = tree.steps()
    assert all(tree.parent_name(parent) == "millrace.epoch" for _, parent, _ in steps)
    reads = [(parent, attrs) for name, parent, attrs in steps if name == "input 'inp'"]
    # Every item read is its own batch, in its own epoch; an empty poll leaves no span.
    assert sorted(epoch_of[parent] for parent, _ in reads) == list(range(items))
    assert all(attrs["millrace.batch.size"] == 1 and attrs["millrace.steps"] == ("input 'inp'",) for _, attrs in reads)
    # The map and the reduce run fused, as one batch: one span, named after both.
    map_name = "map #1 (keyed_flow.<locals>.<lambda>)"
    fused = [attrs for name, _, attrs in steps if name == f"{map_name} -> reduce 'sum'"]
    assert len(fused) == items
    assert all(attrs["millrace.steps"] == (map_name, "reduce 'sum'") for attrs in fused)
    assert {attrs["millrace.epoch"] for attrs in fused} == set(range(items))
    flushes = [parent for name, parent, _ in steps if name == "reduce 'sum' (end of input)"]
    assert [epoch_of[parent] for parent in flushes] == [items - 1]
    captures = [attrs for name, _, attrs in steps if name == "capture #3 (TestingOutputConfig)"]
    assert [attrs["millrace.batch.size"] for attrs in captures] == [1]
    assert len(tree.trace_ids()) == 1


# -- in memory -----------------------------------------------------------------------------


def test_without_setup_the_plain_worker_runs() -> None:
    """Nothing installed: the entry points build the very Worker class, not a traced one."""
    assert telemetry.current() is None
    out: list[Any] = []
    flow = keyed_flow(out)
    worker = telemetry.new_worker(None, None, flow, 0, Exchange(1), epoch_policy(None), _start())
    assert type(worker) is Worker
    config = MemoryConfig()
    tracer = setup_tracing(config)
    installed = telemetry.current()
    assert installed is not None
    traced = telemetry.new_worker(installed, None, flow, 0, Exchange(1), epoch_policy(None), _start())
    assert type(traced) is TracedWorker
    tracer.shutdown()
    assert telemetry.current() is None
    run_main(keyed_flow(out))
    assert config.spans() == []
    assert out == [("k", 150)]


def _start() -> datetime:
    return datetime.now(UTC)


def test_run_main_span_tree() -> None:
    config = MemoryConfig()
    tracer = setup_tracing(config)
    out: list[Any] = []
    run_main(keyed_flow(out, items=5), epoch_config=TestingEpochConfig())
    assert tracer.force_flush()
    assert out == [("k", 100)]
    check_single_worker_tree(Tree.of_sdk(config.spans()), items=5)
    resource = config.spans()[0].resource.attributes
    assert resource["service.name"] == "memory"


def test_cluster_main_workers_each_have_a_span() -> None:
    config = MemoryConfig()
    tracer = setup_tracing(config)
    out: list[Any] = []
    cluster_main(keyed_flow(out), [], 0, worker_count_per_proc=3)
    tracer.force_flush()
    tree = Tree.of_sdk(config.spans())
    ((run_id, _, run_attrs),) = tree.named("millrace.run")
    assert run_attrs == {"millrace.proc_id": 0, "millrace.proc_count": 1, "millrace.worker.count": 3}
    workers = tree.named("millrace.worker")
    assert sorted(attrs["millrace.worker.index"] for _, _, attrs in workers) == [0, 1, 2]
    assert {parent for _, parent, _ in workers} == {run_id}
    worker_ids = {span_id for span_id, _, _ in workers}
    assert all(parent in worker_ids for _, parent, _ in tree.named("millrace.epoch"))
    # The reduce ran where its key lives: that worker's spans say so.
    reduces = [attrs for name, _, attrs in tree.steps() if name.startswith("reduce 'sum'")]
    assert reduces


def test_a_failure_marks_the_step_epoch_worker_and_run() -> None:
    config = MemoryConfig()
    setup_tracing(config)
    with pytest.raises(ZeroDivisionError):
        run_main(failing_flow(), epoch_config=TestingEpochConfig())
    millrace.tracing._active.force_flush()  # type: ignore[union-attr]
    failed = {span.name: span for span in config.spans() if span.status.status_code is StatusCode.ERROR}
    assert set(failed) == {
        "map #1 (failing_flow.<locals>.<lambda>) -> capture #2 (TestingOutputConfig)",
        "millrace.epoch",
        "millrace.worker",
        "millrace.run",
    }
    assert failed["millrace.epoch"].attributes["millrace.epoch"] == 2  # type: ignore[index]
    for span in failed.values():
        assert [event.name for event in span.events] == ["exception"]
        assert span.events[0].attributes["exception.type"] == "ZeroDivisionError"  # type: ignore[index]


def test_sampling_ratio_zero_traces_nothing() -> None:
    config = MemoryConfig(sampling_ratio=0.0)
    tracer = setup_tracing(config)
    run_main(keyed_flow([]))
    tracer.force_flush()
    assert config.spans() == []


def test_a_second_setup_replaces_the_first() -> None:
    first, second = MemoryConfig(), MemoryConfig()
    old = setup_tracing(first)
    setup_tracing(second)
    run_main(keyed_flow([]))
    millrace.tracing._active.force_flush()  # type: ignore[union-attr]
    assert first.spans() == []
    assert {span.name for span in second.spans()} >= {"millrace.run", "millrace.worker", "millrace.epoch"}
    old.shutdown()  # a replaced setup's shutdown leaves the new one alone
    assert telemetry.current() is not None


# -- logs ----------------------------------------------------------------------------------


def run_logged(level: str | None, capsys: pytest.CaptureFixture[str], flow: Dataflow | None = None) -> str:
    tracer = setup_tracing(log_level=level) if level is not None else setup_tracing()
    try:
        run_main(flow or keyed_flow([], items=2), epoch_config=TestingEpochConfig())
    finally:
        tracer.shutdown()
    return capsys.readouterr().err


def test_log_levels(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_logged(None, capsys) == ""  # the default, ERROR: a clean run says nothing
    info = run_logged("INFO", capsys)
    assert "INFO MainThread millrace.worker: worker 0 of 1 starts" in info
    assert "worker 0 finished after epoch 1" in info  # two items, two epochs
    assert "epoch" not in info.replace("after epoch", "")
    debug = run_logged("debug", capsys)
    assert "DEBUG MainThread millrace.worker: worker 0: epoch 1 begins" in debug
    assert "worker 0: epoch 1 ends, 1 items read" in debug
    assert "TRACE" not in debug
    trace = run_logged("TRACE", capsys)
    batch = "map #1 (keyed_flow.<locals>.<lambda>) -> reduce 'sum' ran a batch"
    assert f"TRACE MainThread millrace.worker: worker 0, epoch 1: {batch}" in trace


def test_an_error_is_logged_at_the_default_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ZeroDivisionError):
        run_logged(None, capsys, failing_flow())
    err = capsys.readouterr().err
    assert "ERROR MainThread millrace.worker: worker 0 failed in epoch 2: ZeroDivisionError" in err
    # After shutdown nothing is logged any more.
    with pytest.raises(ZeroDivisionError):
        run_main(failing_flow())
    assert "failed in epoch" not in capsys.readouterr().err


LOGGED_TWICE = """
import logging
from millrace.dataflow import Dataflow
from millrace.execution import run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.tracing import setup_tracing

logging.basicConfig(level=logging.INFO, format="root: %(message)s")  # as the pods' entry point does
flow = Dataflow()
flow.input("inp", TestingInputConfig([1]))
flow.capture(TestingOutputConfig([]))
tracer = setup_tracing(log_level="INFO")
run_main(flow)
tracer.shutdown()
"""


def test_a_configured_root_logger_does_not_print_the_lines_twice() -> None:
    result = subprocess.run([sys.executable, "-c", LOGGED_TWICE], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "worker 0 of 1 starts" in line]
    assert len(lines) == 1, result.stderr
    assert "INFO MainThread millrace.worker" in lines[0]


# -- configurations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: setup_tracing(log_level="VERBOSE"), ValueError, "log_level must be one of ERROR, WARN"),
        (lambda: setup_tracing(log_level=3), ValueError, "got 3"),
        (lambda: setup_tracing("jaeger"), TypeError, "tracing_config must be an OtlpTracingConfig"),
        (lambda: OtlpTracingConfig(""), TypeError, "service_name must be a non-empty str"),
        (lambda: OtlpTracingConfig("s", sampling_ratio=-0.1), ValueError, "sampling_ratio must be from 0.0 to 1.0"),
        (lambda: OtlpTracingConfig("s", sampling_ratio="1"), TypeError, "sampling_ratio must be a number"),
        (lambda: OtlpTracingConfig("s", "localhost:4317"), ValueError, "must be grpc://HOST:PORT or an http(s)://"),
        (lambda: OtlpTracingConfig("s", "ftp://h:1"), ValueError, "got 'ftp://h:1'"),
        (lambda: OtlpTracingConfig("s", "http://h:port"), ValueError, "port that is not a number"),
        (lambda: OtlpTracingConfig("s", "grpc://h:1/v1/traces"), ValueError, "OTLP/gRPC takes no path"),
        (lambda: OtlpTracingConfig("s", "grpc://h:1", protocol="http/protobuf"), ValueError, "needs an http(s)://"),
        (lambda: OtlpTracingConfig("s", "http://h:1", protocol="thrift"), ValueError, "protocol must be 'grpc'"),
        (lambda: JaegerConfig("s", "h"), ValueError, "JaegerConfig endpoint must be HOST:PORT or a URL, got 'h'"),
        (lambda: JaegerConfig("s", "h:x"), ValueError, "JaegerConfig endpoint (HOST:PORT or a URL) has a port"),
        (lambda: JaegerConfig("s", 6831), TypeError, "JaegerConfig endpoint must be a str"),
        (lambda: JaegerConfig(None), TypeError, "JaegerConfig: service_name"),
    ],
)
def test_bad_arguments_are_refused_clearly(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=None) as caught:
        make()
    assert message in str(caught.value)
    assert telemetry.current() is None


def test_export_plans() -> None:
    assert OtlpTracingConfig("s").plan() == ExportPlan("grpc", None)
    assert OtlpTracingConfig("s", "http://h:4317").plan() == ExportPlan("grpc", "http://h:4317")
    assert OtlpTracingConfig("s", "https://h:4317").plan() == ExportPlan("grpc", "https://h:4317")
    assert OtlpTracingConfig("s", "http://h:4318/v1/traces").plan() == ExportPlan(
        "http/protobuf", "http://h:4318/v1/traces"
    )
    assert OtlpTracingConfig("s", "http://h:4318/", protocol="http/protobuf").plan() == ExportPlan(
        "http/protobuf", "http://h:4318/v1/traces"
    )
    # Bytewax's Jaeger agent endpoints go to the same host's OTLP/gRPC port.
    assert JaegerConfig("s", "127.0.0.1:6831").plan() == ExportPlan("grpc", "http://127.0.0.1:4317")
    assert JaegerConfig("s", "jaeger:6832").plan() == ExportPlan("grpc", "http://jaeger:4317")
    assert JaegerConfig("s", "jaeger:14317").plan() == ExportPlan("grpc", "http://jaeger:14317")


def test_a_jaeger_agent_port_is_redirected_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="millrace.tracing"):
        exporter = JaegerConfig("s", "127.0.0.1:6831").span_exporter()
    exporter.shutdown()
    assert "127.0.0.1:6831 is the Jaeger agent's port, which takes no OTLP; sending to http://127.0.0.1:4317" in (
        caplog.text
    )


def test_configs_keep_bytewax_signatures() -> None:
    otlp = OtlpTracingConfig("svc", "grpc://c:4317", 0.5)
    assert (otlp.service_name, otlp.url, otlp.sampling_ratio) == ("svc", "grpc://c:4317", 0.5)
    jaeger = JaegerConfig("svc", "j:4317", 0.25)
    assert (jaeger.service_name, jaeger.endpoint, jaeger.sampling_ratio) == ("svc", "j:4317", 0.25)
    assert JaegerConfig("svc").endpoint is None and JaegerConfig("svc").sampling_ratio == 1.0
    assert isinstance(otlp, TracingConfig) and isinstance(jaeger, TracingConfig)


# -- real receivers ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_export_over_otlp_http_to_a_real_receiver() -> None:
    with http_receiver() as (url, received):
        tracer = setup_tracing(OtlpTracingConfig("wordcount", url))
        out: list[Any] = []
        run_main(keyed_flow(out, items=4), epoch_config=TestingEpochConfig())
        tracer.shutdown()  # exports what is buffered
        spans = received.all()
    assert out == [("k", 60)]
    assert received.requests >= 1
    assert {span.resource["service.name"] for span in spans} == {"wordcount"}
    check_single_worker_tree(Tree.of_received(spans), items=4)


@pytest.mark.timeout(60)
def test_jaeger_config_exports_over_otlp_grpc_to_a_real_receiver() -> None:
    with grpc_receiver() as (endpoint, received):
        tracer = setup_tracing(JaegerConfig("jaeger-flow", endpoint))
        run_main(keyed_flow([], items=3), epoch_config=TestingEpochConfig())
        tracer.shutdown()
        spans = received.all()
    assert {span.resource["service.name"] for span in spans} == {"jaeger-flow"}
    check_single_worker_tree(Tree.of_received(spans), items=3)


@pytest.mark.timeout(120)
def test_spawn_cluster_processes_export_their_spans_into_one_trace() -> None:
    """Real processes (spawn): each sets up the caller's tracing and exports its own spans,
    under a millrace.process span in the caller's trace."""
    with http_receiver() as (url, received):
        tracer = setup_tracing(OtlpTracingConfig("cluster", url))
        spawn_cluster(
            keyed_flow([], items=8),
            proc_count=2,
            worker_count_per_proc=2,
            mp_ctx=multiprocessing.get_context("spawn"),
        )
        tracer.shutdown()
        spans = received.all()
    tree = Tree.of_received(spans)
    assert len(tree.trace_ids()) == 1
    ((run_id, run_parent, run_attrs),) = tree.named("millrace.run")
    assert run_parent == "" and run_attrs == {"millrace.proc_count": 2, "millrace.worker.count": 4}
    processes = tree.named("millrace.process")
    assert sorted(attrs["millrace.proc_id"] for _, _, attrs in processes) == [0, 1]
    assert {parent for _, parent, _ in processes} == {run_id}
    proc_of = {span_id: attrs["millrace.proc_id"] for span_id, _, attrs in processes}
    workers = tree.named("millrace.worker")
    # Worker i runs in process i // 2, and its span hangs from that process's.
    assert sorted((attrs["millrace.worker.index"], proc_of[parent]) for _, parent, attrs in workers) == [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 1),
    ]
    assert tree.named("millrace.epoch") and tree.steps()


@pytest.mark.timeout(120)
def test_cluster_main_processes_each_export_their_spans(procs: Any) -> None:
    """Two cluster_main processes started by hand, each with its own setup_tracing: each
    exports a trace of its own, with its own workers."""
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    script = str(Path(__file__).parent / "support" / "traced_proc.py")
    env = {"MILLRACE_CLUSTER_SECRET": "tracing-test"}
    with http_receiver() as (url, received):
        started = [
            procs.start(script, "--addresses", addresses, "--proc-id", str(proc_id), "--url", url, env=env)
            for proc_id in (0, 1)
        ]
        results = [proc.communicate(timeout=90) for proc in started]
        spans = received.all()
    for proc, (_, stderr) in zip(started, results, strict=True):
        assert proc.returncode == 0, stderr
        assert "INFO" in stderr and "millrace.worker: worker" in stderr
    tree = Tree.of_received(spans)
    runs = tree.named("millrace.run")
    assert sorted(attrs["millrace.proc_id"] for _, _, attrs in runs) == [0, 1]
    assert len(tree.trace_ids()) == 2  # one trace per process
    proc_of = {span_id: attrs["millrace.proc_id"] for span_id, _, attrs in runs}
    workers = sorted(
        (attrs["millrace.worker.index"], proc_of[parent]) for _, parent, attrs in tree.named("millrace.worker")
    )
    assert workers == [(0, 0), (1, 0), (2, 1), (3, 1)]
    # The keyed sum's items crossed between the processes: the reduce ran batches on both.
    reduce_procs = set()
    for name, _, parent, _, _ in tree.spans:
        if name == "reduce 'sum'":
            epoch_parent = tree.by_id[parent][1]
            worker_parent = tree.by_id[epoch_parent][1]
            reduce_procs.add(proc_of[worker_parent])
    assert reduce_procs == {0, 1}


@pytest.mark.timeout(60)
def test_an_untraced_run_does_not_load_opentelemetry() -> None:
    """Tracing off costs nothing at all: not even OpenTelemetry's import (in a fresh process)."""
    code = (
        "import sys\n"
        "from millrace.dataflow import Dataflow\n"
        "from millrace.execution import cluster_main, run_main\n"
        "from millrace.inputs import TestingInputConfig\n"
        "from millrace.outputs import TestingOutputConfig\n"
        "import millrace.tracing\n"
        "out = []\n"
        "flow = Dataflow()\n"
        "flow.input('inp', TestingInputConfig([('a', 1), ('b', 2)]))\n"
        "flow.reduce('sum', lambda a, b: a + b, lambda a: True)\n"
        "flow.capture(TestingOutputConfig(out))\n"
        "run_main(flow)\n"
        "cluster_main(flow, [], 0, worker_count_per_proc=2)\n"
        "print(sorted(out), sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('a', 1), ('a', 1), ('b', 2), ('b', 2)] []"
