"""Workers that hear from their peers in any order.

The transport keeps the order of the messages from one worker to another, and nothing more
(:mod:`millrace.runtime.exchange`): a worker may hear a fast peer's message of the next phase
before a slow peer's last one of this phase. Here every message a worker sends waits in a
queue of its own pair of workers, and one thread delivers the queues' heads in a random order,
now and then after a pause. Under every such order, the flows of the differential harness
give run_main's results, a cluster grown over its recovery store keeps every key's state, and
a crashed cluster resumes exactly where it stopped.

Each "process" is a thread (:data:`~millrace.testing.doctest_ctx`), so that the shuffled
``Exchange.send`` is the one every worker calls; on a 2-process shape the messages between
processes still cross real ZeroMQ sockets, after their pair's queue.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import pytest

from millrace.dataflow import Dataflow
from millrace.execution import TestingEpochConfig, run_main, spawn_cluster
from millrace.inputs import ManualInputConfig
from millrace.outputs import TestingOutputConfig
from millrace.recovery import SqliteRecoveryConfig
from millrace.runtime.exchange import Exchange
from millrace.testing import doctest_ctx

from .support import flows
from .test_recovery import Crash, counting_flow

pytestmark = pytest.mark.timeout(120)

SEEDS = range(3)


class Shuffler:
    """Stands in for ``Exchange.send``: queues each message behind the earlier ones of its
    pair (sending thread, destination worker) and delivers the pairs' heads in an order drawn
    from ``seed``, pausing up to 2 ms before one message in ten."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._pairs: dict[tuple[int, int], deque[tuple[Exchange, tuple[Any, ...]]]] = {}
        self._ready = threading.Condition()
        self._closed = False
        self._send = Exchange.send
        self.delivered = 0
        self._thread = threading.Thread(target=self._deliver, name=f"shuffler-{seed}", daemon=True)

    def send(self, exchange: Exchange, dest: int, msg: tuple[Any, ...]) -> None:
        with self._ready:
            self._pairs.setdefault((threading.get_ident(), dest), deque()).append((exchange, msg))
            self._ready.notify()

    def _deliver(self) -> None:
        rng = self._rng
        while True:
            with self._ready:
                waiting = [pair for pair, queue in self._pairs.items() if queue]
                while not waiting and not self._closed:
                    self._ready.wait()
                    waiting = [pair for pair, queue in self._pairs.items() if queue]
                if not waiting:
                    return
                pair = rng.choice(waiting)
                exchange, msg = self._pairs[pair].popleft()
            if rng.random() < 0.1:
                time.sleep(rng.random() * 0.002)
            self._send(exchange, pair[1], msg)
            self.delivered += 1

    def __enter__(self) -> Shuffler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(10)


@pytest.fixture
def shuffled(monkeypatch, request) -> Iterator[Shuffler]:
    with Shuffler(request.param) as shuffler:
        monkeypatch.setattr(Exchange, "send", lambda exchange, dest, msg: shuffler.send(exchange, dest, msg))
        yield shuffler


def in_threads(flow, procs: int, workers: int, **options: Any) -> None:
    spawn_cluster(flow, proc_count=procs, worker_count_per_proc=workers, mp_ctx=doctest_ctx, **options)


@pytest.mark.parametrize("shuffled", SEEDS, indirect=True, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("shape", [(1, 3), (2, 2)], ids=lambda shape: f"{shape[0]}x{shape[1]}")
@pytest.mark.parametrize("name", sorted(flows.DIFFERENTIAL))
def test_every_flow_gives_the_run_main_result_in_any_delivery_order(name, shape, shuffled):
    build = flows.DIFFERENTIAL[name]
    expected: list = []
    run_main(build(TestingOutputConfig(expected)))
    out: list = []
    in_threads(build(TestingOutputConfig(out)), *shape)
    assert Counter(out) == Counter(expected)
    assert shuffled.delivered > 0


@pytest.mark.parametrize("shuffled", SEEDS, indirect=True, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize(
    "before,after", [((1, 2), (1, 3)), ((1, 2), (2, 2)), ((1, 1), (2, 2))], ids=["2to3", "2to2x2", "1to2x2"]
)
def test_a_grown_cluster_keeps_every_keys_state_in_any_delivery_order(tmp_path, before, after, shuffled):
    options = dict(epoch_config=TestingEpochConfig(), recovery_config=SqliteRecoveryConfig(tmp_path))
    first: list = []
    in_threads(counting_flow(first, 60), *before, **options)
    second: list = []
    in_threads(counting_flow(second, 130), *after, **options)
    assert sorted(first) == sorted((f"k{k}", n) for k in range(10) for n in range(1, 7))
    assert sorted(second) == sorted((f"k{k}", n) for k in range(10) for n in range(7, 14))


def crashing_count(out: list, items: int, crash_at: int | None) -> Dataflow:
    """Worker 0 reads ticks 0..items-1 keyed over 10 keys, one tick per epoch, and fails at
    tick ``crash_at``; a running count per key."""

    def ticks(worker_index, worker_count, resume_state):
        if worker_index == 0:
            for tick in range(resume_state or 0, items):
                yield tick + 1, (tick, f"k{tick % 10}")

    def crash(item):
        if item[0] == crash_at:
            raise Crash(f"crash at tick {crash_at}")
        return item[1], 1

    flow = Dataflow()
    flow.input("ticks", ManualInputConfig(ticks))
    flow.map(crash)
    flow.stateful_map("count", lambda: 0, lambda seen, one: (seen + one, seen + one))
    flow.capture(TestingOutputConfig(out))
    return flow


@pytest.mark.parametrize("shuffled", SEEDS, indirect=True, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("shape", [(1, 3), (2, 2)], ids=lambda shape: f"{shape[0]}x{shape[1]}")
def test_a_crashed_cluster_resumes_exactly_in_any_delivery_order(tmp_path, shape, shuffled):
    """Every tick is an epoch and the crash comes while reading tick 70, so ticks 0..69 are
    settled cluster-wide: the first run emits exactly their counts, the second the rest."""
    options = dict(epoch_config=TestingEpochConfig(), recovery_config=SqliteRecoveryConfig(tmp_path))
    first: list = []
    with pytest.raises(Crash):
        in_threads(crashing_count(first, 130, crash_at=70), *shape, **options)
    second: list = []
    in_threads(crashing_count(second, 130, crash_at=None), *shape, **options)
    assert sorted(first) == sorted((f"k{k}", n) for k in range(10) for n in range(1, 8))
    assert sorted(second) == sorted((f"k{k}", n) for k in range(10) for n in range(8, 14))
