"""Prometheus metrics of the engine, scraped over HTTP from running flows: the counters add up to
the input a flow was given, across the processes and workers of a cluster; a window's late
items show; a taken port is a clear error; without a port nothing listens.

Each flow's input hands out its items, then holds the flow open ("nothing yet") until the test
has scraped, and the test reads the figures once every item is through: once every worker has
completed the epoch in which the last item was read, nothing of it is still on its way."""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from millrace.common.errors import MetricsServerError
from millrace.dataflow import Dataflow
from millrace.execution import PeriodicEpochConfig, cluster_main, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig, TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.testing import doctest_ctx
from millrace.window import EventClockConfig, TumblingWindowConfig

pytestmark = pytest.mark.timeout(180)

BIN = Path(sys.executable).parent
EPOCHS = PeriodicEpochConfig(timedelta(milliseconds=200))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive ports that were free a moment ago (on every interface,
    where the metrics server binds)."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def values(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s samples by the value of ``label``."""
    return {dict(labels)[label]: value for (sample, labels), value in samples.items() if sample == name}


def scrape_until(ports: list[int], done: Callable[[list[Samples]], bool]) -> list[Samples]:
    """Every port's samples, once ``done`` says they are what the test waits for (the test's
    timeout bounds the wait)."""
    while True:
        try:
            scraped = [scrape(port) for port in ports]
        except OSError:  # a process still starting its server
            scraped = []
        if scraped and done(scraped):
            return scraped
        time.sleep(0.1)


def settled(ports: list[int], items: int, workers: int) -> list[Samples]:
    """The samples once all ``items`` were read and every worker has completed the epoch the
    last one was read in (so every item is through every step)."""
    read = scrape_until(
        ports, lambda s: sum(total(x, "millrace_step_items_in_total", step_id="inp") for x in s) == items
    )
    last = max(max(values(x, "millrace_worker_epoch", "worker").values()) for x in read)

    def through(scraped: list[Samples]) -> bool:
        completed = {}
        for samples in scraped:
            completed.update(values(samples, "millrace_worker_epochs_completed_total", "worker"))
        return len(completed) == workers and min(completed.values()) >= last + 1

    return scrape_until(ports, through)


def gated(items: list[Any], gate: Path) -> ManualInputConfig:
    """Each worker's share of ``items``, then "nothing yet" until the file ``gate`` exists."""

    def builder(worker_index: int, worker_count: int, resume_state: Any) -> Iterator[Any]:
        for position in range(worker_index, len(items), worker_count):
            yield position + 1, items[position]
        while not gate.exists():
            time.sleep(0.005)
            yield None

    return ManualInputConfig(builder)


@contextmanager
def running(run: Callable[[], None], gate: Path) -> Iterator[None]:
    """``run`` in a thread for the block; then open ``gate`` (the flow ends) and check that it
    ended without an error."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield
    finally:
        gate.touch()
        thread.join(120)
    assert not thread.is_alive() and failure == []


def pair(word: str) -> tuple[str, int]:
    return word, 1


def running_count(count: int, one: int) -> tuple[int, int]:
    return count + one, count + one


LINES = [f"w{i % 13} x w{i % 5}" for i in range(400)]
WORDS = [word for line in LINES for word in line.split() if word != "x"]  # 800


def wordcount(gate: Path, out: Any) -> Dataflow:
    flow = Dataflow()
    flow.input("inp", gated(LINES, gate))
    flow.flat_map(str.split)
    flow.filter(lambda word: word != "x")
    flow.map(pair)
    flow.stateful_map("count", lambda: 0, running_count)
    flow.capture(TestingOutputConfig(out))
    return flow


def test_a_2x2_clusters_counters_add_up_to_its_input(tmp_path: Path) -> None:
    port = free_port_run(2)
    gate = tmp_path / "gate"
    with multiprocessing.Manager() as manager:
        out = manager.list()
        flow = wordcount(gate, out)
        run = partial(spawn_cluster, flow, epoch_config=EPOCHS, proc_count=2, worker_count_per_proc=2)
        with running(partial(run, metrics_port=port), gate):
            p0, p1 = settled([port, port + 1], len(LINES), workers=4)
        outputs = len(out)

    both = [p0, p1]
    # Process 0 has workers 0 and 1, process 1 workers 2 and 3.
    assert set(values(p0, "millrace_worker_epoch", "worker")) == {"0", "1"}
    assert set(values(p1, "millrace_worker_epoch", "worker")) == {"2", "3"}

    def step(name: str, step_id: str) -> float:
        return sum(total(samples, name, step_id=step_id) for samples in both)

    assert step("millrace_step_items_in_total", "inp") == step("millrace_step_items_out_total", "inp") == len(LINES)
    assert step("millrace_step_items_in_total", "flat_map#1") == len(LINES)
    assert step("millrace_step_items_out_total", "flat_map#1") == 3 * len(LINES)
    assert step("millrace_step_items_out_total", "filter#2") == len(WORDS)
    assert step("millrace_step_items_in_total", "count") == len(WORDS)
    assert step("millrace_step_items_out_total", "count") == len(WORDS)
    assert step("millrace_step_items_out_total", "capture#5") == outputs == len(WORDS)
    # Every worker's share went through its own steps.
    for worker, samples in (("0", p0), ("1", p0), ("2", p1), ("3", p1)):
        assert total(samples, "millrace_step_items_in_total", step_id="inp", worker=worker) == len(LINES) / 4
    assert step("millrace_step_keys_held", "count") == len(set(WORDS))

    # What process 0 sent to process 1 is what process 1 received from process 0, and back.
    sent_0_to_1 = total(p0, "millrace_exchange_items_sent_total", peer="1")
    sent_1_to_0 = total(p1, "millrace_exchange_items_sent_total", peer="0")
    assert sent_0_to_1 > 0 and sent_1_to_0 > 0
    assert total(p1, "millrace_exchange_items_received_total", peer="0") == sent_0_to_1
    assert total(p0, "millrace_exchange_items_received_total", peer="1") == sent_1_to_0
    # Between the workers of one process too.
    assert total(p0, "millrace_exchange_items_received_total", peer="0") == total(
        p0, "millrace_exchange_items_sent_total", peer="0"
    )
    # Every item the count step took in stayed on its worker or was received from another.
    kept = step("millrace_step_items_in_total", "count") - sum(
        total(samples, "millrace_exchange_items_received_total") for samples in both
    )
    assert 0 < kept < len(WORDS)
    # Bytes crossed both ways (progress messages still do, each epoch); no frame was refused.
    for samples, peer in ((p0, "1"), (p1, "0")):
        assert total(samples, "millrace_exchange_bytes_sent_total", peer=peer) > 0
        assert total(samples, "millrace_exchange_bytes_received_total", peer=peer) > 0
    assert total(p0, "millrace_transport_frames_refused_total") == 0
    assert set(values(p0, "millrace_transport_frames_refused_total", "reason")) >= {"unauthenticated", "replayed"}
    # Epochs: at least one completed, and the standard process metrics are there.
    assert min(values(p1, "millrace_worker_epochs_completed_total", "worker").values()) >= 1
    assert total(p0, "process_cpu_seconds_total") > 0


def stateless(gate: Path, out: Any) -> Dataflow:
    """A flow the worker runs as one fused loop (runtime/pump.py): input, stateless steps,
    capture."""
    flow = Dataflow()
    flow.input("inp", gated(LINES, gate))
    flow.flat_map(str.split)
    flow.filter(lambda word: word != "x")
    flow.map(str.upper)
    flow.capture(TestingOutputConfig(out))
    return flow


@pytest.mark.parametrize("workers", [1, 2])
def test_a_fused_input_loop_counts_its_steps(tmp_path: Path, workers: int) -> None:
    port = free_port_run(1)
    gate = tmp_path / "gate"
    out: list[str] = []
    flow = stateless(gate, out)
    # One process either way: with one worker the capture is called inside the loop, with two
    # each worker's items are written per call.
    run = (
        partial(cluster_main, flow, None, 0, worker_count_per_proc=workers) if workers > 1 else partial(run_main, flow)
    )
    with running(partial(run, epoch_config=EPOCHS, metrics_port=port), gate):
        (samples,) = settled([port], len(LINES), workers=workers)

    def step(name: str, step_id: str) -> float:
        return total(samples, name, step_id=step_id)

    assert step("millrace_step_items_in_total", "inp") == step("millrace_step_items_out_total", "inp") == len(LINES)
    assert step("millrace_step_items_in_total", "flat_map#1") == len(LINES)
    assert step("millrace_step_items_out_total", "flat_map#1") == 3 * len(LINES)
    assert step("millrace_step_items_in_total", "filter#2") == 3 * len(LINES)
    assert step("millrace_step_items_out_total", "filter#2") == len(WORDS)
    assert step("millrace_step_items_out_total", "map#3") == len(WORDS)
    assert step("millrace_step_items_in_total", "capture#4") == step("millrace_step_items_out_total", "capture#4")
    assert step("millrace_step_items_out_total", "capture#4") == len(out) == len(WORDS)


def test_a_windows_late_items_and_its_snapshots_show(tmp_path: Path) -> None:
    from millrace.recovery import SqliteRecoveryConfig

    port = free_port_run(1)
    gate = tmp_path / "gate"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    # The second item is 24 s older than the first of its key: its window closed when that came.
    items = [("k", start + timedelta(seconds=25)), ("k", start + timedelta(seconds=1)), ("j", start)]
    flow = Dataflow()
    flow.input("inp", gated(items, gate))
    flow.reduce_window(
        "sum",
        EventClockConfig(lambda at: at, wait_for_system_duration=timedelta(0)),
        TumblingWindowConfig(length=timedelta(seconds=10), start_at=start),
        lambda a, b: max(a, b),
    )
    out: list[Any] = []
    flow.capture(TestingOutputConfig(out))
    (tmp_path / "recovery").mkdir()
    recovery = SqliteRecoveryConfig(tmp_path / "recovery")
    with running(partial(run_main, flow, epoch_config=EPOCHS, recovery_config=recovery, metrics_port=port), gate):
        (samples,) = settled([port], len(items), workers=1)
    assert total(samples, "millrace_window_late_items_dropped_total", step_id="sum", worker="0") == 1
    assert total(samples, "millrace_step_items_in_total", step_id="sum") == 3
    # Each key has its own watermark: "j" is not late, and both keys hold an open window.
    assert total(samples, "millrace_step_keys_held", step_id="sum") == 2
    assert total(samples, "millrace_step_items_out_total", step_id="sum") == 0
    # Snapshots were written (recovery is on), each one timed and sized.
    assert total(samples, "millrace_snapshot_duration_seconds_count") >= 1
    assert total(samples, "millrace_snapshot_size_bytes") > 0
    assert sorted(out) == [("j", start), ("k", start + timedelta(seconds=25))]


def taken_port() -> tuple[socket.socket, int]:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def small_flow() -> Dataflow:
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1, 2, 3]))
    flow.capture(TestingOutputConfig([]))
    return flow


def test_a_taken_port_is_an_error_naming_it() -> None:
    holder, port = taken_port()
    with holder:
        with pytest.raises(MetricsServerError, match=f"cannot serve metrics on port {port}: "):
            run_main(small_flow(), metrics_port=port)
        # Process 1 of a spawn_cluster takes port + 1: the cluster fails with its error.
        with pytest.raises(MetricsServerError, match=f"port {port}"):
            spawn_cluster(small_flow(), proc_count=2, mp_ctx=doctest_ctx, metrics_port=port - 1)
    with pytest.raises(ValueError, match="metrics_port must be a port number"):
        run_main(small_flow(), metrics_port=70000)


def test_the_command_names_a_taken_port_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text(
        textwrap.dedent(
            """
            from millrace.dataflow import Dataflow
            from millrace.inputs import TestingInputConfig
            from millrace.outputs import StdOutputConfig

            flow = Dataflow()
            flow.input("inp", TestingInputConfig([1]))
            flow.capture(StdOutputConfig())
            """
        )
    )
    holder, port = taken_port()
    with holder:
        done = subprocess.run(
            [str(BIN / "millrace"), "run", str(script), "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and f"cannot serve metrics on port {port}" in done.stderr
    assert done.stdout == ""


# Run in a fresh interpreter: during the flow, how many TCP sockets this process listens on,
# and whether prometheus_client was loaded.
_LISTENING = """
import sys
from pathlib import Path
from millrace.dataflow import Dataflow
from millrace.execution import run_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig

def listening(item):
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                count += 1
    print(count, "prometheus_client" in sys.modules)

port = int(sys.argv[1]) if len(sys.argv) > 1 else None
flow = Dataflow()
flow.input("inp", TestingInputConfig([1]))
flow.inspect(listening)
flow.capture(TestingOutputConfig([]))
run_main(flow, metrics_port=port)
"""


def test_without_a_port_nothing_listens(tmp_path: Path) -> None:
    script = tmp_path / "listening.py"
    script.write_text(_LISTENING)

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run() == "0 False"
    assert run(str(free_port_run(1))) == "1 True"  # the check can tell


def test_the_command_reads_the_port_from_the_environment_and_names_a_bad_one(tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_text("raise SystemExit('the flow must not be loaded')\n")
    done = subprocess.run(
        [str(BIN / "millrace"), "run", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MILLRACE_METRICS_PORT": "99999"},
    )
    assert done.returncode == 2
    assert done.stderr == "millrace: error: MILLRACE_METRICS_PORT must be a port number (1-65535), got 99999\n"


def test_the_readme_lists_every_metric() -> None:
    from millrace.runtime.metrics import FAMILIES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Metrics") :]
    exposed = [f"{name}_total" if kind == "counter" else name for name, (kind, _, _) in FAMILIES.items()]
    assert [name for name in exposed if f"`{name}`" not in section] == []
