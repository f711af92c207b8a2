"""Multi-worker execution: the same results on every cluster shape, and failure that is loud
and total, never a hang."""

from __future__ import annotations

import ast
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

from millrace.dataflow import Dataflow
from millrace.execution import cluster_main, run_main, spawn_cluster
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.runtime.errors import ClusterError
from millrace.testing import ManualClock, doctest_ctx
from millrace.transport import frames
from millrace.transport.addresses import free_ports
from millrace.transport.listener import Listener

from .conftest import SUPPORT, Procs
from .support import flows

pytestmark = pytest.mark.timeout(180)

SHAPES = [(1, 2), (2, 1), (2, 2), (3, 2)]
RUN_PROC = str(SUPPORT / "run_proc.py")


def reference(build) -> Counter:
    out: list = []
    run_main(build(TestingOutputConfig(out)))
    return Counter(out)


@pytest.fixture(scope="module")
def manager():
    with multiprocessing.Manager() as mgr:
        yield mgr


@pytest.mark.parametrize("name", sorted(flows.DIFFERENTIAL))
def test_every_shape_gives_the_run_main_result(name, manager):
    build = flows.DIFFERENTIAL[name]
    expected = reference(build)
    assert expected, "the reference run produced nothing"
    for procs, workers in SHAPES:
        out = manager.list()
        spawn_cluster(build(TestingOutputConfig(out)), proc_count=procs, worker_count_per_proc=workers)
        assert Counter(list(out)) == expected, f"shape {procs}x{workers} differs"


def test_keyed_items_live_on_their_owner_worker(manager):
    out = manager.list()

    def tag(worker_index, worker_count):
        return lambda item: out.append((worker_index, item))

    from millrace.outputs import ManualOutputConfig

    flow = Dataflow()
    flow.input("inp", TestingInputConfig([(k, 1) for k in [0, 1, 2, 3, 5, 8, "a", "b", "c"] * 3]))
    flow.reduce("sum", lambda a, b: a + b, lambda a: a == 3)
    flow.capture(ManualOutputConfig(tag))
    spawn_cluster(flow, proc_count=2, worker_count_per_proc=2)
    from millrace.runtime.routing import owner

    got = list(out)
    assert len(got) == 9
    for worker, (key, _) in got:
        assert worker == owner(key, 4), f"{key!r} was emitted by worker {worker}"


def test_stateless_steps_never_move_data(manager):
    out = manager.list()
    from millrace.outputs import ManualOutputConfig

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(40)))
    flow.map(lambda x: x + 1)
    flow.capture(ManualOutputConfig(lambda index, count: lambda x: out.append((index, x))))
    spawn_cluster(flow, proc_count=2, worker_count_per_proc=2)
    # TestingInputConfig gives item i to worker i % 4; map keeps it there.
    assert sorted(out) == sorted(((x - 1) % 4, x) for x in range(1, 41))


def test_epochs_advance_cluster_wide(manager):
    from millrace.execution import TestingEpochConfig
    from millrace.outputs import TestingEpochOutputConfig

    out = manager.list()
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([(i % 3, i) for i in range(12)]))
    flow.stateful_map("seen", lambda: 0, lambda n, v: (n + 1, v))
    flow.capture(TestingEpochOutputConfig(out))
    spawn_cluster(flow, proc_count=2, worker_count_per_proc=2, epoch_config=TestingEpochConfig())
    got = sorted(out)
    # Worker w reads items w, w+4, w+8: its k-th item is its epoch k.
    assert got == sorted((i // 4, (i % 3, i)) for i in range(12))


def test_two_clusters_side_by_side(manager):
    outs = [manager.list(), manager.list()]
    errors: list[BaseException] = []

    def run(out):
        try:
            spawn_cluster(flows.reduce_to_three(TestingOutputConfig(out)), proc_count=2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(out,)) for out in outs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    expected = reference(flows.reduce_to_three)
    assert Counter(list(outs[0])) == expected
    assert Counter(list(outs[1])) == expected


def test_doctest_ctx_runs_processes_as_threads():
    out: list = []
    spawn_cluster(
        flows.reduce_to_three(TestingOutputConfig(out)),
        proc_count=2,
        worker_count_per_proc=2,
        mp_ctx=doctest_ctx,
    )
    assert Counter(out) == reference(flows.reduce_to_three)


def test_flow_with_closures_travels_to_processes(manager):
    out = manager.list()
    offset = 1000
    factor = {"k": 3}

    def scale(x):
        return x * factor["k"] + offset

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(10)))
    flow.map(scale)
    flow.map(lambda x: x - offset)
    flow.capture(TestingOutputConfig(out))
    spawn_cluster(flow, proc_count=2)
    assert sorted(out) == [x * 3 for x in range(10)]


# -- failure -------------------------------------------------------------------------------


def _explode(x):
    if x == 13:
        raise ZeroDivisionError("thirteen")
    return x


def test_spawn_cluster_reraises_a_child_failure():
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(100)))
    flow.map(_explode)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(ZeroDivisionError, match="thirteen") as info:
        spawn_cluster(flow, proc_count=2, worker_count_per_proc=2)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "map #1 (_explode)" in notes and "worker 1" in notes


class _Exited:
    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode


class _Reports:
    """An error queue that counts how often it was asked (and has ``held`` in it)."""

    def __init__(self, *held) -> None:
        self.held = list(held)
        self.asked = 0

    def get(self, timeout):
        self.asked += 1
        if not self.held:
            raise queue.Empty
        return self.held.pop(0)


def test_spawn_cluster_waits_for_the_reports_of_failed_processes_only():
    from millrace.runtime.spawn import _reports

    clean = _Reports()
    assert _reports([_Exited(0), _Exited(0)], clean) == [] and clean.asked == 0
    one = _Reports((1, b"error"))
    assert _reports([_Exited(0), _Exited(1)], one) == [(1, b"error")] and one.asked == 1
    killed = _Reports((0, b"error"))  # process 1 was killed and reports nothing
    assert _reports([_Exited(1), _Exited(-9)], killed) == [(0, b"error")] and killed.asked == 2


def test_a_process_that_fails_before_the_cluster_forms_calls_off_the_start():
    """Process 1 cannot load the flow, so it never binds a port: process 0, which did, is told
    the start is off instead of waiting for addresses, and the original error is raised."""
    guard = flows.LoadsOutside("millrace-proc-1")
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(10)))
    flow.map(lambda x, guard=guard: x)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(ValueError, match="cannot load in millrace-proc-1 on purpose"):
        spawn_cluster(flow, proc_count=2)


def test_free_ports_are_distinct_bindable_and_never_ones_outgoing_connections_take():
    from millrace.transport.addresses import _ephemeral_range

    low, _ = _ephemeral_range()
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(1024 <= port < low for port in ports)
    sockets = [socket.create_server(("127.0.0.1", port)) for port in ports]
    for sock in sockets:
        sock.close()


def test_a_listener_binds_a_port_the_system_picks_and_refuses_a_taken_one():
    first = Listener.any_port(0)
    try:
        with pytest.raises(ClusterError, match=rf"process 3 cannot listen on 127.0.0.1:{first.port}: "):
            Listener(f"tcp://127.0.0.1:{first.port}", f"127.0.0.1:{first.port}", 3)
    finally:
        first.close()
    again = Listener(f"tcp://127.0.0.1:{first.port}", f"127.0.0.1:{first.port}", 0)
    assert again.port == first.port  # closed means free again
    again.close()


@pytest.mark.parametrize(
    "value, error, message",
    [
        # Pickling fails in the worker that sends it, which names its step and the item (each
        # process has one to send: whichever fails first stops the cluster).
        (threading.Lock, TypeError, r"reduce 'r': the item \(\d+, <unlocked _thread.lock.*cannot be pickled"),
        # Unpickling fails in the receiver: authenticated data is never dropped.
        (flows.Unloadable, ClusterError, r"cannot decode data that process \d .*unloadable on purpose"),
    ],
    ids=["unpicklable", "unloadable"],
)
def test_a_value_that_cannot_travel_fails_the_cluster(value, error, message):
    # Odd keys start on worker 0 (TestingInputConfig gives item i to worker i % 2) and live on
    # worker 1, in the other process; even keys the other way round.
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(10)))
    flow.map(lambda x: (x + 1, value()))
    flow.reduce("r", lambda a, b: a, lambda a: False)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(error, match=message):
        spawn_cluster(flow, proc_count=2)


def _cluster(procs: Procs, tmp_path: Path, scenario: str, count=2, workers=1, extra=(), env=None):
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(count))
    out = str(tmp_path / "out")
    started = []
    for proc_id in range(count):
        started.append(
            procs.start(
                RUN_PROC,
                scenario,
                "--addresses",
                addresses,
                "--proc-id",
                str(proc_id),
                "--workers",
                str(workers),
                "--out",
                out,
                "--running",
                _running(out, proc_id),
                *extra,
                env=(env[proc_id] if env else {"MILLRACE_CLUSTER_SECRET": "s3cret"}),
            )
        )
    return started, addresses, out


def _wait_running(started: list, out: str, timeout: float = 60.0) -> None:
    """Until every process of a :func:`_cluster` started with ``--running`` has had its first
    item: the cluster has formed and is computing. A readiness signal, not a guess at how
    long starting takes; fails at once if a process ends first."""
    marks = [Path(_running(out, proc_id)) for proc_id in range(len(started))]
    deadline = time.monotonic() + timeout
    while not all(mark.exists() for mark in marks):
        ended = [proc_id for proc_id, proc in enumerate(started) if proc.poll() is not None]
        assert not ended, (
            f"processes {ended} ended before the cluster ran",
            [started[proc_id].communicate()[1][-2000:] for proc_id in ended],
        )
        assert time.monotonic() < deadline, f"the cluster did not run within {timeout:g} s"
        time.sleep(0.01)


def _running(out: str, proc_id: int) -> str:
    # Beside the outputs, but not one of them (_read_outputs reads OUT.*).
    return f"{out}-running.{proc_id}"


def _read_outputs(out: str) -> list:
    items = []
    for path in Path(out).parent.glob(Path(out).name + ".*"):
        items += [ast.literal_eval(line) for line in path.read_text().splitlines()]
    return items


def _expected_sums(workers: int, count: int) -> Counter:
    sums: Counter = Counter()
    for w in range(workers):
        for i in range(count):
            sums[i % 5] += w * 1_000_000 + i
    return Counter(sums.items())


def test_cluster_main_processes_compute_together(procs, tmp_path):
    started, _, out = _cluster(procs, tmp_path, "sum", count=3, workers=2)
    for proc in started:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
    assert Counter(_read_outputs(out)) == _expected_sums(6, 50)


def test_exception_in_one_worker_stops_every_process(procs, tmp_path):
    started, _, _ = _cluster(procs, tmp_path, "boom", extra=("--delay", "0.01"))
    results = [proc.communicate(timeout=60) for proc in started]
    assert all(proc.returncode != 0 for proc in started)
    failing_stderr = results[1][1]
    assert "ZeroDivisionError: boom" in failing_stderr
    other_stderr = results[0][1]
    assert "ClusterError" in other_stderr
    assert "worker 1 (process 1) failed" in other_stderr
    assert "map #1 (explode_on.<locals>.check)" in other_stderr
    assert "ZeroDivisionError" in other_stderr


def test_a_killed_process_fails_its_peers(procs, tmp_path):
    started, addresses, out = _cluster(procs, tmp_path, "forever", extra=("--delay", "0.01"))
    _wait_running(started, out)
    assert all(proc.poll() is None for proc in started), "the cluster should be running"
    started[1].send_signal(signal.SIGKILL)
    _, stderr = started[0].communicate(timeout=30)
    assert started[0].returncode != 0
    assert "lost process 1" in stderr and addresses.split(",")[1] in stderr
    # Noticed from ZeroMQ's monitor of the connection to it, which the kill dropped.
    assert "its connection closed, or it stopped answering, before the flow finished" in stderr


def _endless_cluster_script(tmp_path: Path, *body: str) -> str:
    """A script that runs spawn_cluster on an endless, slow input; ``body`` (lines, after
    ``flow.input``) finishes the flow and calls spawn_cluster."""
    script = tmp_path / "spawn.py"
    script.write_text(
        "\n".join(
            [
                "import sys",
                f"sys.path.insert(0, {str(SUPPORT.parent)!r})",
                "from support.flows import print_running, slow_numbers",
                "from millrace.dataflow import Dataflow",
                "from millrace.execution import spawn_cluster",
                "from millrace.outputs import StdOutputConfig, TestingOutputConfig",
                "if __name__ == '__main__':",
                "    flow = Dataflow()",
                "    flow.input('inp', slow_numbers(10**9, 0.01))",
                *(f"    {line}" for line in body),
            ]
        )
        + "\n"
    )
    return str(script)


def _no_leftovers_within(procs: Procs, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while procs.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    return procs.leftovers()


def test_ctrl_c_stops_the_whole_cluster(procs, tmp_path):
    parent = procs.start(
        _endless_cluster_script(
            tmp_path,
            "flow.inspect(print_running)",
            "flow.reduce('r', lambda a, b: a + b, lambda a: False)",
            "flow.capture(TestingOutputConfig([]))",
            "print('starting', flush=True)",
            "spawn_cluster(flow, proc_count=2, worker_count_per_proc=2)",
        )
    )
    assert parent.stdout.readline().strip() == "starting"
    # Each child prints "running" at its first item, once the cluster has formed; a line that
    # does not come (the parent ended) fails here, and pytest's timeout bounds the wait.
    for _ in range(2):
        line = parent.stdout.readline()
        assert line.strip() == "running", f"the cluster did not start: {line!r}"
    assert parent.poll() is None
    # A terminal's Ctrl-C goes to the whole foreground process group.
    os.killpg(parent.pid, signal.SIGINT)
    _, stderr = parent.communicate(timeout=30)
    assert parent.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert _no_leftovers_within(procs, 10) == []


def test_a_killed_spawn_cluster_parent_takes_its_processes_with_it(procs, tmp_path):
    """spawn_cluster's processes serve the process that started them: once it is gone
    (SIGKILL, the OOM killer), nobody reads their results or their failure, so they stop."""
    parent = procs.start(
        _endless_cluster_script(
            tmp_path,
            "flow.capture(StdOutputConfig())",
            "spawn_cluster(flow, proc_count=2, worker_count_per_proc=1)",
        )
    )
    assert parent.stdout.readline().startswith("("), "the cluster should be running"
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    assert _no_leftovers_within(procs, 30) == []
    # The processes share the parent's stderr, and say why they stopped.
    assert "the process that ran spawn_cluster" in parent.stderr.read()


def _inject(addresses: str, *messages: list[bytes], pause: float = 0.5) -> None:
    """As an outsider, send ``messages`` (each a list of frame parts) to process 0's port,
    ``pause`` seconds apart, and disconnect."""
    host, port = addresses.split(",")[0].split(":")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://{host}:{port}")
    for parts in messages:
        push.send_multipart(parts)
        time.sleep(pause)
    push.close(linger=1000)
    ctx.term()


def test_hostile_bytes_are_dropped_and_the_flow_finishes(procs, tmp_path):
    started, addresses, out = _cluster(procs, tmp_path, "sum", extra=("--count", "150", "--delay", "0.02"))
    host, port = addresses.split(",")[0].split(":")
    _wait_running(started, out)
    # Raw garbage that is not even ZMTP.
    for payload in (b"\x00" * 64, os.urandom(4096), b"GET / HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(payload)
    # Well-formed ZeroMQ, but malformed or forged millrace frames.
    _inject(
        addresses,
        [b"hello"],
        [frames.MAGIC, b"short", b"", b""],
        [frames.MAGIC, b"\x09" * 15, b"x", b"y"],
        frames.seal(b"k" * 32, frames.MESSAGE, 1, 0, 10**9, b"\x80\x04N."),
        frames.seal(b"k" * 32, frames.ABORT, 1, 0, 10**9, b"stop everything"),
        pause=0.1,
    )
    for proc in started:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
    assert Counter(_read_outputs(out)) == _expected_sums(2, 150)


def test_hostile_frames_are_logged(procs, tmp_path):
    started, addresses, out = _cluster(procs, tmp_path, "sum", extra=("--count", "100", "--delay", "0.02"))
    _wait_running(started, out)
    _inject(addresses, frames.seal(b"x" * 32, frames.MESSAGE, 1, 0, 10**9, b"garbage"))
    results = [proc.communicate(timeout=60) for proc in started]
    assert [proc.returncode for proc in started] == [0, 0]
    assert "dropped a frame" in results[0][1]
    assert "authentication failed" in results[0][1]
    assert Counter(_read_outputs(out)) == _expected_sums(2, 100)


@pytest.mark.parametrize("secret", [b"s3cret", None], ids=["with-secret", "without"])
def test_authentic_frames_of_another_run_are_dropped_and_the_flow_finishes(procs, tmp_path, secret):
    """Every frame names its sender's run (drawn when the process joined). Frames of a run the
    receiver never accepted a HELLO of, such as those a peer's earlier run still had in flight,
    are dropped, however authentic: nothing of theirs is mixed into this run, and nothing of
    this run is lost."""
    key = frames.derive_key(secret)
    env = [{"MILLRACE_CLUSTER_SECRET": secret.decode()}] * 2 if secret else [{}, {}]
    started, addresses, out = _cluster(procs, tmp_path, "sum", extra=("--count", "200", "--delay", "0.02"), env=env)
    _wait_running(started, out)
    other_run = b"\x01" * frames.RUN_SIZE
    _inject(
        addresses,
        frames.seal(key, frames.BYE, 1, 0, 1, b"", other_run),
        frames.seal(key, frames.MESSAGE, 1, 0, 10**9, b"P\x80\x04N.", other_run),
        frames.seal(key, frames.ABORT, 1, 0, 2, frames.abort_payload("stop", lost=False), other_run),
    )
    results = [proc.communicate(timeout=60) for proc in started]
    assert [proc.returncode for proc in started] == [0, 0], results
    assert results[0][1].count("a frame of another run of process 1") == 3
    assert Counter(_read_outputs(out)) == _expected_sums(2, 200)


def test_a_peer_with_the_wrong_secret_is_refused_on_both_sides(procs, tmp_path):
    """Its HELLO is dropped (a forged one must not stop the cluster from forming), and the
    timeout's error says what the dropped HELLO suggests."""
    started, _, _ = _cluster(
        procs,
        tmp_path,
        "sum",
        extra=("--connect-timeout", "3"),
        env=[{"MILLRACE_CLUSTER_SECRET": "one"}, {"MILLRACE_CLUSTER_SECRET": "two"}],
    )
    for proc in started:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "different cluster secret" in stderr


def test_processes_of_different_cluster_ids_refuse_each_other(procs, tmp_path):
    """Refused, not failed at once: a pod of an old template that is still stopping must not
    keep the new cluster from forming. The timeout's error names the refusal."""
    common = {"MILLRACE_CLUSTER_SECRET": "s", "MILLRACE_CONNECT_TIMEOUT": "3"}
    started, _, _ = _cluster(
        procs,
        tmp_path,
        "sum",
        env=[
            {**common, "MILLRACE_CLUSTER_ID": "df-aaaa"},
            {**common, "MILLRACE_CLUSTER_ID": "df-bbbb"},
        ],
    )
    for proc in started:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "refused a HELLO" in stderr
        assert "answered, but it runs as" in stderr and "cluster id" in stderr and "df-" in stderr


class _Failures:
    """What a link under test reports to its exchange."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

        self.lost: list[bool] = []
        self.delivered: list[tuple[int, Any]] = []

    def fail(self, reason: str, from_remote: bool = False, peer_lost: bool = False) -> None:
        self.reasons.append(reason)
        self.lost.append(peer_lost)

    def is_local(self, worker: int) -> bool:
        return worker == 0

    def deliver(self, dest: int, msg: Any, sender: int | None = None) -> None:
        self.delivered.append((dest, msg))


def _formed_link(connected: bool) -> tuple[Any, _Failures, ManualClock]:
    """A link of process 0 of two whose peer said HELLO, connected to it or not; no sockets.
    Its grace periods run on the manual clock returned, which the test moves past them."""
    import zmq

    from millrace.transport import link as link_module

    clock = ManualClock()
    link = link_module.ZmqLink(["127.0.0.1:1", "127.0.0.1:2"], 0, 1, b"s", 5.0, clock=clock)
    failures = _Failures()
    link._exchange = failures  # type: ignore[assignment]
    if connected:
        link._on_connection(1, zmq.EVENT_CONNECTED)
    link._hellos.add(1)
    link._formed()
    return link, failures, clock


@pytest.mark.parametrize("late_connect", [False, True])
def test_a_peer_that_said_hello_but_cannot_be_reached_is_lost(late_connect):
    """A peer may say HELLO and die before our connection to it is made (or while it drops,
    before the cluster formed): no later event tells, so the link must judge it itself."""
    import zmq

    link, failures, clock = _formed_link(connected=False)
    if late_connect:
        link._on_connection(1, zmq.EVENT_CONNECTED)  # slow, but there
    clock.advance(4.9)
    link._judge_suspects()
    assert failures.reasons == []  # still within the grace period
    clock.advance(0.2)
    link._judge_suspects()
    if late_connect:
        assert failures.reasons == []
    else:
        assert len(failures.reasons) == 1
        assert (
            "lost process 1 (127.0.0.1:2): it said HELLO, but could not be reached within 5 s after the cluster formed"
            in failures.reasons[0]
        )


def test_a_dropped_connection_after_the_cluster_formed_loses_the_peer():
    import zmq

    link, failures, clock = _formed_link(connected=True)
    link._on_connection(1, zmq.EVENT_DISCONNECTED)
    link._on_connection(1, zmq.EVENT_CONNECTED)  # a reconnect does not make up for lost frames
    clock.advance(1.9)
    link._judge_suspects()
    assert failures.reasons == []  # its BYE may still come
    clock.advance(0.2)
    link._judge_suspects()
    assert (
        len(failures.reasons) == 1
        and "its connection closed, or it stopped answering, before the flow finished" in failures.reasons[0]
    )


def test_a_peer_that_said_bye_is_not_lost():
    import zmq

    link, failures, clock = _formed_link(connected=True)
    link._byes.add(1)
    link._on_connection(1, zmq.EVENT_DISCONNECTED)
    clock.advance(10)
    link._judge_suspects()
    assert failures.reasons == []


def _hello_from(link, sender: int, run: bytes, seq: int, cluster_id: str = "", echo: bool = True) -> list[bytes]:
    """A HELLO to ``link`` from process ``sender`` of ``run``; ``echo``: it names the link's
    run (an answer, which confirms ``run``), else none (a first HELLO)."""
    payload = frames.hello_payload(sender, link.proc_count, link.workers_per_proc, cluster_id)
    dest_run = link.run if echo else frames.NO_RUN
    return frames.seal(link.key, frames.HELLO, sender, link.proc_id, seq, payload, run, dest_run)


def _fresh_link():
    from millrace.transport import link as link_module

    link = link_module.ZmqLink(["127.0.0.1:1", "127.0.0.1:2"], 0, 1, b"s", 5.0, "df-new")
    failures = _Failures()
    link._exchange = failures  # type: ignore[assignment]
    return link, failures


def test_a_run_counts_from_its_hello_and_replays_and_gaps_are_told_apart():
    link, failures = _fresh_link()
    run = b"r" * frames.RUN_SIZE
    data = frames.dump_messages([(0, (0, 0, 0, [1]))])
    link._on_frame(frames.seal(link.key, frames.MESSAGE, 1, 0, 1, data, run, link.run))  # before its HELLO
    assert failures.delivered == [] and link.dropped_frames == 1
    link._on_frame(_hello_from(link, 1, run, 5, "df-new"))
    assert link._ready.is_set() and link._outbound.get_nowait() == (1, frames.HELLO, link._hello, run)  # answered
    link._on_frame(frames.seal(link.key, frames.MESSAGE, 1, 0, 6, data, run, link.run))
    link._on_frame(frames.seal(link.key, frames.MESSAGE, 1, 0, 6, data, run, link.run))  # a replay
    assert failures.delivered == [(0, (0, 0, 0, [1]))] and link.dropped_frames == 2
    assert failures.reasons == []
    # The metrics' causes: the frame before the HELLO was of a run not confirmed yet.
    assert {cause: n for cause, n in link.counters.refused.items() if n} == {"stale_run": 1, "replayed": 1}
    link._on_frame(frames.seal(b"another secret" * 3, frames.MESSAGE, 1, 0, 7, data, run, link.run))
    assert link.counters.refused["unauthenticated"] == 1 and link.dropped_frames == 3
    assert link.counters.bytes_received[1] > 0
    link._on_frame(frames.seal(link.key, frames.MESSAGE, 1, 0, 9, data, run, link.run))  # 7 and 8 are lost
    assert failures.lost == [True] and "lost frames 7..8 from process 1" in failures.reasons[0]


def test_a_hello_of_another_cluster_is_refused_and_the_right_peer_still_joins():
    link, failures = _fresh_link()
    link._on_frame(_hello_from(link, 1, b"o" * frames.RUN_SIZE, 1, "df-old"))
    assert not link._ready.is_set() and failures.reasons == []
    assert "df-old" in link._admission.refused[1]
    link._on_frame(_hello_from(link, 1, b"n" * frames.RUN_SIZE, 1, "df-new"))
    assert link._ready.is_set() and failures.reasons == [] and 1 not in link._admission.refused


def test_a_peer_that_starts_again_after_the_cluster_formed_is_a_lost_peer():
    link, failures = _fresh_link()
    link._on_frame(_hello_from(link, 1, b"a" * frames.RUN_SIZE, 1, "df-new"))
    link._on_frame(_hello_from(link, 1, b"a" * frames.RUN_SIZE, 2, "df-new"))  # its answer: same run
    assert failures.reasons == []
    link._on_frame(_hello_from(link, 1, b"b" * frames.RUN_SIZE, 1, "df-new"))
    assert failures.lost == [True] and "started again while the cluster ran" in failures.reasons[0]


def test_unreachable_peers_are_named(tmp_path):
    ports = free_ports(3)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    with pytest.raises(ClusterError) as info:
        cluster_main(
            flows.stateless(TestingOutputConfig([])),
            addresses,
            0,
            secret="x",
            connect_timeout=1.0,
        )
    message = str(info.value)
    assert addresses[1] in message and addresses[2] in message
    assert "could not reach" in message


def test_without_a_secret_cluster_main_warns(tmp_path):
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    with pytest.warns(RuntimeWarning, match="unauthenticated"):
        with pytest.raises(ClusterError):
            cluster_main(flows.stateless(TestingOutputConfig([])), addresses, 0, connect_timeout=0.5)


def test_bad_arguments_are_clear_errors():
    flow = flows.stateless(TestingOutputConfig([]))
    with pytest.raises(ValueError, match="proc_id"):
        cluster_main(flow, ["127.0.0.1:1", "127.0.0.1:2"], 5, secret="x")
    with pytest.raises(ValueError, match="host:port"):
        cluster_main(flow, ["nocolon", "127.0.0.1:2"], 0, secret="x")
    with pytest.raises(ValueError, match="proc_count"):
        spawn_cluster(flow, proc_count=0)
    with pytest.raises(ValueError, match="worker_count_per_proc"):
        spawn_cluster(flow, worker_count_per_proc=0)


def test_admission_and_liveness_are_plain_state_machines():
    """The link's judgement of frames and of peers needs no sockets: each decision is shown
    by feeding the state machines directly."""
    from millrace.transport.admission import Admission
    from millrace.transport.liveness import BYE_GRACE, Liveness

    mine = b"m" * frames.RUN_SIZE
    gate = Admission(proc_id=0, proc_count=3, workers_per_proc=1, cluster_id="c", run=mine)
    hello = frames.hello_payload(2, 3, 1, "c")
    run = b"x" * frames.RUN_SIZE
    assert gate.admit(frames.Frame(frames.HELLO, 2, 0, 7, hello, run, mine), formed=False).action == "join"
    assert gate.admit(frames.Frame(frames.MESSAGE, 2, 0, 7, b"", run, mine), formed=True).reason == (
        "replayed frame 7 from process 2"
    )
    # Once formed, a HELLO of a new run that does not echo ours is dropped; one that does (ours
    # answered it before) is a restart.
    assert gate.admit(frames.Frame(frames.HELLO, 2, 0, 1, hello, b"y" * 8), formed=True).action == "drop"
    assert gate.admit(frames.Frame(frames.HELLO, 2, 0, 2, hello, b"y" * 8, mine), formed=True).action == "restarted"
    assert gate.admit(frames.Frame(frames.BYE, 0, 0, 1, b"", run, mine), formed=True).action == "drop"
    other = frames.hello_payload(1, 3, 2, "c")
    first = gate.admit(frames.Frame(frames.HELLO, 1, 0, 1, other, run, mine), formed=False)
    again = gate.admit(frames.Frame(frames.HELLO, 1, 0, 2, other, run, mine), formed=False)
    assert (first.action, first.first, again.first) == ("refuse", True, False)

    live = Liveness([1, 2])
    live.connected(1)
    live.connected(2)
    live.formed(now=0.0)
    live.disconnected(1, now=1.0, expected=True)  # it said BYE
    live.disconnected(2, now=1.0)
    assert live.judge(now=1.0 + BYE_GRACE - 0.1, finished=set()) == []
    assert live.judge(now=1.0 + BYE_GRACE, finished=set()) == [
        (2, "its connection closed, or it stopped answering, before the flow finished")
    ]
    assert live.judge(now=100.0, finished=set()) == []  # reported once


class _Watched(_Failures):
    """An exchange for a link under test with real sockets: no local work, failures recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = threading.Event()
        self.inboxes: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue()]
        self.reason = None


def test_a_peer_that_takes_nothing_for_the_connect_timeout_is_lost_not_waited_for_forever():
    """A peer that is there (its socket accepts the connection) but never reads: the sender
    waits for it (backpressure) only as long as the connect timeout, then the peer is lost,
    named. Real sockets; the timeout runs on a manual clock the test moves."""
    from millrace.transport import link as link_module

    ports = free_ports(2)
    ctx = zmq.Context()
    stuck = ctx.socket(zmq.PULL)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.bind(f"tcp://127.0.0.1:{ports[1]}")  # never read
    clock = ManualClock()
    addresses = [f"127.0.0.1:{port}" for port in ports]
    link = link_module.ZmqLink(addresses, 0, 1, b"s", 30.0, clock=clock)
    exchange = _Watched()
    link.start(exchange)  # type: ignore[arg-type]
    try:
        big = ("x" * 256_000,)
        for _ in range(400):  # far more than the socket buffers on both ends hold
            link.send(1, big)
        for _ in range(600):
            if exchange.reasons:
                break
            clock.advance(31)
            time.sleep(0.05)
        assert exchange.lost == [True], exchange.reasons
        assert f"process 1 ({addresses[1]}) has taken nothing that process 0 sent for 30 s" in exchange.reasons[0]
    finally:
        link.close(clean=False)
        stuck.close(linger=0)
        ctx.term()
