"""Frames recorded on the wire and sent again: into a later run of the same cluster (same
secret), or into another process of the same run. Real cluster_main processes, real ZeroMQ
sockets: a recording proxy stands between process 1 and process 0 (process 1's address list
names the proxy for process 0), and the test replays what it recorded. No replayed frame is
ever accepted, and the genuine frames still are: every process ends well, the output is exact,
and the process that got the replays logs each one, naming the peer it claims to come from."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq

from millrace.transport import frames
from millrace.transport.addresses import free_ports

from .conftest import Procs
from .test_cluster import RUN_PROC, _expected_sums, _read_outputs, _running, _wait_running

pytestmark = pytest.mark.timeout(180)

SECRET = b"replay-secret"
KEY = frames.derive_key(SECRET)


class Recorder:
    """A proxy: binds ``listen`` and forwards every frame to ``forward``, keeping a copy."""

    def __init__(self, listen: int, forward: int) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(f"tcp://127.0.0.1:{listen}")
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(f"tcp://127.0.0.1:{forward}")
        self.recorded: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pull.poll(50):
                parts = self.pull.recv_multipart()
                self.recorded.append(parts)
                self.push.send_multipart(parts)

    def kinds(self) -> list[int]:
        return [frames.open_frame(KEY, parts, 3).kind for parts in list(self.recorded)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pull.close(linger=0)
        self.push.close(linger=1000)
        self.ctx.term()


class StderrLines:
    """Reads a process's stderr as it comes, so a test can wait for a line."""

    def __init__(self, proc: Any) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: Any) -> None:
        for line in proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, count: int, timeout: float = 60.0) -> None:
        with self._changed:
            found = self._changed.wait_for(lambda: self.count(text) >= count, timeout)
        assert found, f"{count} lines with {text!r} did not come: {''.join(self.lines)[-3000:]}"

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(30)
        return "".join(self.lines)


def start(
    procs: Procs,
    addresses: list[str],
    proc_id: int,
    out: str,
    count: int,
    delay: float,
    env: dict[str, str] | None = None,
) -> Any:
    """Process ``proc_id`` of a ``sum`` cluster (see run_proc.py), with ``env`` (default: the
    secret of these tests)."""
    return procs.start(
        RUN_PROC,
        "sum",
        "--addresses",
        ",".join(addresses),
        "--proc-id",
        str(proc_id),
        "--out",
        out,
        "--count",
        str(count),
        "--delay",
        str(delay),
        "--running",
        _running(out, proc_id),
        env=env if env is not None else {"MILLRACE_CLUSTER_SECRET": SECRET.decode()},
    )


def _send(port: int, recorded: list[list[bytes]]) -> None:
    """As an outsider, send the ``recorded`` frames to the process listening on ``port``."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    for parts in recorded:
        push.send_multipart(parts)
    push.close(linger=5000)
    ctx.term()


def _record_a_run(procs: Procs, tmp_path: Path) -> list[list[bytes]]:
    """Run a two-process cluster whose traffic from process 1 to process 0 is recorded."""
    port0, port1, proxy = free_ports(3)
    recorder = Recorder(proxy, port0)
    out = str(tmp_path / "first")
    try:
        started = [
            start(procs, [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"], 0, out, 30, 0.0),
            start(procs, [f"127.0.0.1:{proxy}", f"127.0.0.1:{port1}"], 1, out, 30, 0.0),
        ]
        for proc in started:
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, stderr
    finally:
        recorder.close()
    assert Counter(_read_outputs(out)) == _expected_sums(2, 30)
    kinds = [frames.open_frame(KEY, parts, 2).kind for parts in recorder.recorded]
    assert kinds.count(frames.HELLO) >= 2 and frames.MESSAGE in kinds and kinds[-1] == frames.BYE, kinds
    return recorder.recorded


def test_frames_of_an_earlier_run_are_refused_and_the_new_run_is_exact(procs, tmp_path):
    recorded = _record_a_run(procs, tmp_path)
    port0, port1 = free_ports(2)
    addresses = [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]
    out = str(tmp_path / "second")
    first = start(procs, addresses, 0, out, 60, 0.01)
    log = StderrLines(first)
    # Before process 1 of the new run even starts, process 0 gets every frame of the old run's
    # process 1: the HELLOs (the old run's answer echoes the old run of process 0), the data
    # and the BYE. Only the first HELLO is answered (its answer goes nowhere useful); each of
    # the others is refused with a line naming process 1.
    _send(port0, recorded)
    log.wait_for("claiming to come from process 1", len(recorded) - 1)
    second = start(procs, addresses, 1, out, 60, 0.01)
    for proc in (first, second):
        proc.wait(timeout=60)
    stderr = log.text()
    assert [first.returncode, second.returncode] == [0, 0], (stderr, second.stderr.read())
    assert Counter(_read_outputs(out)) == _expected_sums(2, 60)
    assert stderr.count(f"claiming to come from process 1 ({addresses[1]})") == len(recorded) - 1
    assert "a frame of another run of process 1" in stderr


def test_frames_for_one_process_sent_to_another_of_the_same_run_are_refused(procs, tmp_path):
    ports = free_ports(4)
    real = [f"127.0.0.1:{port}" for port in ports[:3]]
    proxy = ports[3]
    recorder = Recorder(proxy, ports[0])
    out = str(tmp_path / "out")
    try:
        started = []
        for proc_id in range(3):
            addresses = [f"127.0.0.1:{proxy}", *real[1:]] if proc_id == 1 else real
            started.append(start(procs, addresses, proc_id, out, 150, 0.02))
        logs = [StderrLines(proc) for proc in started]
        _wait_running(started, out)
        while frames.MESSAGE not in recorder.kinds():
            assert all(proc.poll() is None for proc in started)
            threading.Event().wait(0.01)
        # Everything process 1 sent to process 0 so far (HELLOs and data of this very run),
        # sent to process 2, which gets frames from process 1 of the same run too.
        replayed = list(recorder.recorded)
        _send(ports[2], replayed)
        for proc in started:
            proc.wait(timeout=90)
    finally:
        recorder.close()
    stderrs = [log.text() for log in logs]
    assert [proc.returncode for proc in started] == [0, 0, 0], stderrs
    assert Counter(_read_outputs(out)) == _expected_sums(3, 150)
    assert stderrs[2].count("a frame from process 1 for process 0, not this one") == len(replayed), stderrs[2]
    assert f"claiming to come from process 1 ({real[1]})" in stderrs[2]


def test_a_forged_hello_before_the_cluster_forms_is_dropped_and_the_genuine_peer_joins(procs, tmp_path):
    """Anyone who reaches a port can send a HELLO with a bad MAC: it is dropped and logged,
    never a reason to stop the cluster from forming."""
    port0, port1 = free_ports(2)
    addresses = [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]
    out = str(tmp_path / "out")
    first = start(procs, addresses, 0, out, 40, 0.0)
    log = StderrLines(first)
    forged = frames.hello_payload(1, 2, 1, "")
    _send(port0, [frames.seal(b"not the key" * 3, frames.HELLO, 1, 0, 1, forged, b"f" * frames.RUN_SIZE)])
    log.wait_for("authentication failed for a frame claiming to come from process 1", 1)
    second = start(procs, addresses, 1, out, 40, 0.0)
    for proc in (first, second):
        proc.wait(timeout=60)
    assert [first.returncode, second.returncode] == [0, 0], (log.text(), second.stderr.read())
    assert Counter(_read_outputs(out)) == _expected_sums(2, 40)


def test_handshake_hellos_of_other_runs_are_answered_once_and_only_an_echo_of_this_run_confirms():
    """The admission state machine alone: HELLOs recorded in other runs (however many) are
    answered at most once each and never trusted; the HELLO that echoes this process's own run,
    which nobody could record before it was drawn, confirms the peer."""
    from millrace.transport.admission import Admission

    mine = b"m" * frames.RUN_SIZE
    gate = Admission(proc_id=0, proc_count=2, workers_per_proc=1, cluster_id="", run=mine)
    hello = frames.hello_payload(1, 2, 1, "")
    verdicts = []
    for n in range(100):
        old_run = n.to_bytes(frames.RUN_SIZE, "big")
        old = frames.Frame(frames.HELLO, 1, 0, 1, hello, old_run, b"o" * frames.RUN_SIZE)
        verdicts += [gate.admit(old, formed=False).action, gate.admit(old, formed=False).action]
    assert verdicts.count("answer") == 64 and "join" not in verdicts and gate.runs == {}
    genuine = b"g" * frames.RUN_SIZE
    confirm = gate.admit(frames.Frame(frames.HELLO, 1, 0, 2, hello, genuine, mine), formed=False)
    assert (confirm.action, confirm.first, gate.runs) == ("join", True, {1: genuine})
    data = frames.Frame(frames.MESSAGE, 1, 0, 3, b"", genuine, mine)
    assert gate.admit(data, formed=True).action == "accept"
    # The same frame again, or sent to process 0 as if for another process, counts for nothing.
    assert gate.admit(data, formed=True).action == "drop"
    elsewhere = frames.Frame(frames.MESSAGE, 1, 2, 4, b"", genuine, mine)
    assert gate.admit(elsewhere, formed=True).reason == "a frame from process 1 for process 2, not this one"
    assert gate.admit(frames.Frame(frames.MESSAGE, 1, 0, 4, b"", genuine, mine), formed=True).action == "accept"
