"""Bounded memory between processes: a fast sender meeting a slow receiver waits for it, on
every path a worker emits on (a peer's messages, the end of input, a timer), and the result
is exact.

The bound is read from the link's own count of the messages waiting in its outbound queue
(logged at close), not from timings or RSS."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

from millrace.transport.addresses import free_ports

from .conftest import SUPPORT, Procs
from .support.fanout_proc import expected

pytestmark = pytest.mark.timeout(180)

FANOUT_PROC = str(SUPPORT / "fanout_proc.py")
# Smaller than the default, so that what the bound allows is far below what is sent.
WINDOW = 8
PEAK = re.compile(r"process (\d+): sent (\d+) messages; at most (\d+) messages \((\d+) bytes\) waited to be sent")


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
            "--window",
            str(WINDOW),
            env={"MILLRACE_CLUSTER_SECRET": "s3cret"},
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
