"""Bounded memory between processes: a fast sender meeting a slow receiver waits for it, on
every path a worker emits on (a peer's messages, the end of input, a timer), and the result
is exact.

The bound is read from the link's own count of the messages waiting in its outbound queue
(logged at close), and for a combiner's partials also from the receiving process's count of
those that arrived and were not handled yet; not from timings or RSS."""

from __future__ import annotations

import ast
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from millrace.transport.addresses import free_ports

from .conftest import SUPPORT, Procs
from .support import combine_proc
from .support.fanout_proc import expected

pytestmark = pytest.mark.timeout(180)

FANOUT_PROC = str(SUPPORT / "fanout_proc.py")
COMBINE_PROC = str(SUPPORT / "combine_proc.py")
# Smaller than the default, so that what the bound allows is far below what is sent.
WINDOW = 8
PEAK = re.compile(r"process (\d+): sent (\d+) messages; at most (\d+) messages \((\d+) bytes\) waited to be sent")
UNHANDLED = re.compile(r"handled (\d+) partial messages of peers; at most (\d+) arrived unhandled")


def _run(
    procs: Procs, tmp_path: Path, scenario: str, workers: int, count: int, width: int
) -> dict[int, tuple[int, int, int]]:
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    out = str(tmp_path / "out")
    started = [
        procs.start(
            FANOUT_PROC,
            scenario,
            "--addresses",
            addresses,
            "--proc-id",
            str(proc_id),
            "--workers",
            str(workers),
            "--out",
            out,
            "--count",
            str(count),
            "--fan",
            str(width),
            env={"MILLRACE_CLUSTER_SECRET": "s3cret", "MILLRACE_CREDIT_WINDOW": str(WINDOW)},
        )
        for proc_id in range(2)
    ]
    stats = {}
    for proc in started:
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err[-3000:]
        for match in PEAK.finditer(err):
            proc_id, sent, peak, peak_bytes = map(int, match.groups())
            stats[proc_id] = (sent, peak, peak_bytes)
    got = Counter()
    for path in tmp_path.glob("out.*"):
        got.update(ast.literal_eval(line) for line in path.read_text().splitlines())
    assert got == expected(2 * workers, count, width)
    return stats


@pytest.mark.parametrize("scenario", ["peer", "eof", "timer"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_fast_sender_waits_for_a_slow_receiver(procs, tmp_path, scenario, workers):
    stats = _run(procs, tmp_path, scenario, workers, count=2000, width=20)
    sent, peak, _ = stats[0]
    # Each worker of process 0 has at most a window of unhandled DATA per worker of process 1
    # and stateful step (two here),
    # and a couple of CREDIT and progress messages beside them.
    bound = workers * workers * (2 * WINDOW + 4) + 8
    assert peak <= bound, f"{peak} messages waited in process 0's outbound queue (bound {bound})"
    # Without the bound, far more would have waited: process 0 sent many times as many.
    assert sent >= 4 * bound, f"process 0 sent only {sent} messages: the test shows nothing"


@pytest.mark.parametrize("scenario", combine_proc.SCENARIOS)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_combiners_drain_waits_for_a_slow_owner(procs, tmp_path, scenario, workers):
    """Partials of ``reduce_window(..., combine=True)`` and ``fold_window(..., merger=...)``
    drained many times (whenever ``combine.LIMIT`` keys are held, or at each epoch's end), each
    drain many chunks, to an owner whose merger is slow: the drains wait for its credit, and
    every value is counted once."""
    count, keys = 4000, 600
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    out = str(tmp_path / "out")
    args = ["--addresses", addresses, "--workers", str(workers), "--out", out, "--count", str(count)]
    env = {"MILLRACE_CLUSTER_SECRET": "s3cret", "MILLRACE_CREDIT_WINDOW": str(WINDOW)}
    started = [
        procs.start(COMBINE_PROC, scenario, *args, "--keys", str(keys), "--proc-id", str(p), env=env) for p in range(2)
    ]
    errs = []
    for proc in started:
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err[-3000:]
        errs.append(err)
    got: dict[str, tuple[int, int]] = {}
    for path in tmp_path.glob("out.*"):
        for line in path.read_text().splitlines():
            key, (n, total) = ast.literal_eval(line)
            # A key's values may span two windows, should a day end during the run.
            had = got.get(key, (0, 0))
            got[key] = (had[0] + n, had[1] + total)
    assert got == combine_proc.expected(2 * workers, count, keys)
    # What the owner holds: per worker of process 0 and worker of process 1, at most a window
    # of partial messages arrived and not handled yet.
    handled, unhandled = map(int, UNHANDLED.search(errs[1]).groups())
    assert unhandled <= WINDOW, f"{unhandled} partial messages of one worker waited at another (window {WINDOW})"
    # What the sender holds: as in test_a_fast_sender_waits_for_a_slow_receiver.
    proc_id, _, peak, _ = map(int, PEAK.search(errs[0]).groups())
    bound = workers * workers * (2 * WINDOW + 4) + 8
    assert proc_id == 0 and peak <= bound, f"{peak} messages waited in process 0's outbound queue (bound {bound})"
    # Without the bound, far more would have waited: process 1 handled many times as many.
    least = 4 * workers * workers * WINDOW
    assert handled >= least, f"process 1 handled only {handled} partials of process 0: the test shows nothing"


@pytest.mark.parametrize("end", ["killed", "frozen"])
def test_a_peer_that_dies_while_others_wait_for_its_credit_fails_the_cluster(procs, tmp_path, end):
    """Process 1 is stuck in user code: process 0 waits for its credit (a live peer, however
    slow, is backpressure, not a failure). Once process 1 is killed (SIGKILL) or frozen
    (SIGSTOP: it answers nothing, not even ZeroMQ's heartbeats), process 0 stops waiting and
    exits non-zero with an error naming process 1, instead of waiting for ever."""
    addresses = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    out = tmp_path / "out"
    args = ["peer", "--addresses", addresses, "--out", str(out), "--count", "2000", "--fan", "20"]
    args.append("--stuck")
    env = {"MILLRACE_CLUSTER_SECRET": "s3cret", "MILLRACE_CREDIT_WINDOW": str(WINDOW)}
    sender, stuck = (procs.start(FANOUT_PROC, *args, "--proc-id", str(p), env=env) for p in range(2))
    waiting, stuck_marker = Path(f"{out}.waiting"), Path(f"{out}.stuck")
    while not (waiting.exists() and stuck_marker.exists()):  # the test's timeout bounds this
        for proc in (sender, stuck):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    time.sleep(0.5)  # let process 0 spend its window: it waits for credit now
    # Nothing came out: the flow cannot end while process 1 is stuck.
    assert sender.poll() is None and not any(p.read_text() for p in tmp_path.glob("out.[0-9]"))
    os.kill(stuck.pid, signal.SIGKILL if end == "killed" else signal.SIGSTOP)
    _, err = sender.communicate(timeout=90)
    assert sender.returncode != 0, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "PeerLost" in last and "process 1 (127.0.0.1:" in last, err[-3000:]


@pytest.mark.parametrize("value", ["1", "many"])
def test_a_malformed_credit_window_is_refused_naming_the_variable(monkeypatch, value):
    from millrace.common.settings import SettingsError
    from millrace.dataflow import Dataflow
    from millrace.execution import cluster_main
    from millrace.inputs import TestingInputConfig
    from millrace.outputs import TestingOutputConfig

    monkeypatch.setenv("MILLRACE_CREDIT_WINDOW", value)
    flow = Dataflow()
    flow.input("inp", TestingInputConfig([1, 2]))
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(SettingsError, match="MILLRACE_CREDIT_WINDOW"):
        cluster_main(flow, [], 0, worker_count_per_proc=2)
