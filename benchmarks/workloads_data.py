"""What both engines of ``benchmarks/vs_bytewax.py`` share: data, user functions, expected
results and the measuring harness. No engine is imported here; each engine module
(``bench_millrace.py``, ``bench_bytewax.py``) only builds and runs its own flows.

Data is made in blocks of :data:`BLOCK` items, each from its own seeded generator, so the
whole data set is the same however it is split: worker ``i`` of ``n`` makes (and reads) only
the blocks ``b`` with ``b % n == i``.

A measurement times each worker from the moment its input is first pulled (its data is already
made, and is let go of only after the clock stops) to the moment its run returned, and reports
``items / longest span``. The processes of a cluster start their input a little apart (by up
to a tenth of a second, as the operating system schedules their start-up); the longest single
span leaves that skew out, and still holds all the work of the slowest worker, waits on its
peers included.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import random
import socket
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path
from typing import Any, Protocol

# -- sizes -------------------------------------------------------------------------------------

BLOCK = 1_000
VOCABULARY = 10_000
KEYS = 1_000
#: Event ``i`` happens at ``EVENT_START + i ms``: 1,000 events a second, so 1,000,000 events
#: span 1,000 seconds.
EVENT_START = datetime(2024, 1, 1, tzinfo=UTC)
EVENT_STEP = timedelta(milliseconds=1)
WINDOW = timedelta(seconds=1)
#: How far the event clock waits behind the latest event of a key. Keys are random, so a
#: key's next event may come right after a window boundary that wall time has already pushed
#: its watermark past; waiting this long makes that impossible short of a 10-second stall.
WINDOW_WAIT = timedelta(seconds=10)


@dataclass(frozen=True)
class Measure:
    """One kind of measurement: which data, how much at scale 1, and how it runs."""

    flow: str  # "stateless" | "wordcount" | "windowed"
    size: int
    procs: int = 1
    stream: bool = False  # data made while read instead of before (bounded memory)
    epoch_s: float | None = None  # None: the engine's default (10 s in both)
    recovery: bool = False
    #: How the input hands over items, where the engines offer a choice (see :class:`Source`).
    variant: str = ""


MEASURES: dict[str, Measure] = {
    "stateless": Measure("stateless", 2_000_000),
    "wordcount": Measure("wordcount", 1_000_000),
    "windowed": Measure("windowed", 1_000_000),
    # The same stateless flow read three ways (``Source.variant``).
    "stateless-item": Measure("stateless", 2_000_000, variant="item"),
    "stateless-batch": Measure("stateless", 2_000_000, variant="batch"),
    "stateless-pairs": Measure("stateless", 2_000_000, variant="pairs"),
    "stateless-checked": Measure("stateless", 2_000_000, variant="checked"),
    "stateless-batch-checked": Measure("stateless", 2_000_000, variant="batch-checked"),
    "stateless-2p": Measure("stateless", 2_000_000, procs=2),
    "wordcount-2p": Measure("wordcount", 1_000_000, procs=2),
    "rss": Measure("stateless", 10_000_000, stream=True),
    # Four times the words of ``wordcount``: a run of a few seconds, several epochs long, so
    # that the cost measured is the snapshots', not one final snapshot's against half a second.
    "wordcount-1s": Measure("wordcount", 4_000_000, epoch_s=1.0),
    "recovery": Measure("wordcount", 4_000_000, epoch_s=1.0, recovery=True),
}


def size(measure: str, scale: float) -> int:
    return max(BLOCK, int(MEASURES[measure].size * scale))


# -- user functions: the same in both engines -------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def is_even(x: int) -> bool:
    return x % 2 == 0


def to_pair(word: str) -> tuple[str, int]:
    return word, 1


def add(a: int, b: int) -> int:
    return a + b


def event_time(at: datetime) -> datetime:
    return at


def zero() -> int:
    return 0


def count_one(acc: int, _value: Any) -> int:
    return acc + 1


# -- data --------------------------------------------------------------------------------------


#: Items per batch of the batched inputs: Bytewax's sources' default.
BATCH = 1_000


def batches(data: Iterator[Any], done: int = 0) -> Iterator[tuple[int, list[Any]]]:
    """``data`` in lists of :data:`BATCH`, each with the count of items after it (its resume
    state): what millrace's batched input builder yields."""
    while batch := list(islice(data, BATCH)):
        done += len(batch)
        yield done, batch


def _vocabulary() -> list[str]:
    rng = random.Random("vocabulary")
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        words["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))] = None
    return list(words)


_VOCAB: list[str] | None = None
_KEY_NAMES = [f"k{i}" for i in range(KEYS)]


def _block(flow: str, b: int, lo: int, hi: int) -> list[Any]:
    """Items ``lo..hi`` (block ``b``) of the data of ``flow``."""
    global _VOCAB
    rng = random.Random(f"{flow}:{b}")
    if flow == "stateless":
        bits = rng.getrandbits
        return [bits(31) for _ in range(hi - lo)]
    if flow == "wordcount":
        if _VOCAB is None:
            _VOCAB = _vocabulary()
        return rng.choices(_VOCAB, k=hi - lo)
    if flow == "windowed":
        keys = rng.choices(_KEY_NAMES, k=hi - lo)
        return [(k, EVENT_START + i * EVENT_STEP) for k, i in zip(keys, range(lo, hi), strict=True)]
    raise ValueError(f"no data for flow {flow!r}")


def items(flow: str, n: int, shard: int = 0, shards: int = 1) -> Iterator[Any]:
    """The items of ``flow``'s data set of ``n`` items that belong to ``shard`` of ``shards``,
    made block by block as they are read."""
    for b in range(shard, -(-n // BLOCK), shards):
        yield from _block(flow, b, b * BLOCK, min(n, (b + 1) * BLOCK))


# -- expected results --------------------------------------------------------------------------


def pairs_digest(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Digest of a ``(key, count)`` result: how many, their sum, a hash of them sorted.

    A count may come as Bytewax 0.21's window result ``(window_id, count)``; only the count
    is kept."""
    flat = sorted((k, v[1] if isinstance(v, tuple) else v) for k, v in pairs)
    blob = "\n".join(f"{k}\t{v}" for k, v in flat).encode()
    return {"results": len(flat), "total": sum(v for _, v in flat), "sha256": hashlib.sha256(blob).hexdigest()[:16]}


def expected(measure: str, scale: float) -> dict[str, Any]:
    """The digest a correct run of ``measure`` at ``scale`` reports."""
    m = MEASURES[measure]
    n = size(measure, scale)
    if m.flow == "stateless":
        return {"count": sum(x & 1 for x in items("stateless", n))}  # x + 1 even <=> x odd
    if m.flow == "wordcount":
        return pairs_digest(Counter(items("wordcount", n)).items())
    windows = Counter((k, (at - EVENT_START) // WINDOW) for k, at in items("windowed", n))
    return pairs_digest((k, c) for (k, _), c in windows.items())


# -- what each worker records ------------------------------------------------------------------


#: What a sink keeps: a count of items, every item, or each key's last value.
SINK_MODES = {"stateless": "count", "wordcount": "last", "windowed": "all"}


@dataclass
class Probe:
    """One worker's record: when its input was first pulled, when its run ended, and what its
    sink got (see :data:`SINK_MODES`)."""

    first: float | None = None
    end: float | None = None
    count: int = 0
    mode: str = "count"
    pairs: list[Any] = field(default_factory=list)
    data: Iterable[Any] = ()

    def sink_mode(self, mode: str) -> Probe:
        """Set what the sink keeps and bind :attr:`one` / :attr:`batch` for it, so that sinks
        call them without a per-item branch."""
        self.mode = mode
        self.one: Callable[[Any], None] = self._count_one if mode == "count" else self.pairs.append
        self.batch: Callable[[list[Any]], None] = self._count_batch if mode == "count" else self.pairs.extend
        return self

    def _count_one(self, _item: Any) -> None:
        self.count += 1

    def _count_batch(self, batch: list[Any]) -> None:
        self.count += len(batch)

    def pull(self, data: Iterable[Any]) -> Iterator[Any]:
        """``data``, stamping :attr:`first` when its first item is asked for. Only that first
        request passes through Python: the items come from ``data``'s own iterator, so the
        harness adds no per-item cost to any engine or loop (a generator passing each item
        on took about 15 ns an item, a tenth of the batched engines' time)."""
        self.data = data  # freed after the clock stops: freeing millions of items takes a while
        return chain(self._stamp_first(), data)

    def _stamp_first(self) -> Iterator[Any]:
        self.first = time.monotonic()
        return
        yield  # a generator that yields nothing: it runs once, on the first request

    def record(self) -> dict[str, Any]:
        pairs = list(dict(self.pairs).items()) if self.mode == "last" else self.pairs
        return {"first": self.first, "end": self.end, "count": self.count, "pairs": pairs}


_PROBES: dict[int, Probe] = {}


def probe(worker_index: int) -> Probe:
    """This process's probe of worker ``worker_index`` (made on first use)."""
    if worker_index not in _PROBES:
        _PROBES[worker_index] = Probe()
    return _PROBES[worker_index]


@dataclass(frozen=True)
class Source:
    """Callable ``(worker_index, worker_count) -> items`` giving a worker its share of the
    data, timed from its first pull. Unless ``sharded``, worker 0 reads everything. A plain
    picklable object, so it travels to cluster processes."""

    flow: str
    n: int
    sharded: bool = False
    stream: bool = False
    #: How the engine's input hands items over. ``""``: its usual way (millrace's
    #: ``ManualInputConfig`` one ``(state, item)`` at a time, Bytewax's ``next_batch`` 1,000
    #: at a time); ``"item"``: Bytewax's ``next_batch`` one item at a time (millrace as
    #: usual); ``"batch"``: millrace's ``ManualInputConfig(batched=True)``, lists of 1,000
    #: (Bytewax as usual); ``"pairs"``: the plain loop reads the ``(state, item)`` pairs
    #: millrace's builder yields, instead of the bare items; ``"checked"``: the same, in
    #: chunks of 1,024 with the checks millrace's API owes (each yield a tuple, each filter
    #: verdict a bool); ``"batch-checked"``: the plain loop over lists of 1,000 with the checks
    #: millrace's batched API owes (each yield a ``(state, list)`` tuple, each verdict a bool).
    variant: str = ""

    def __call__(self, worker_index: int, worker_count: int) -> Iterator[Any]:
        shard, shards = (worker_index, worker_count) if self.sharded else (0, 1)
        if not self.sharded and worker_index != 0:
            return iter(())
        data: Iterable[Any] = items(self.flow, self.n, shard, shards)
        if not self.stream:
            data = list(data)  # made before the clock starts
        return probe(worker_index).pull(data)


@dataclass(frozen=True)
class Sink:
    """Callable ``worker_index -> Probe`` for an engine's sink; with ``report_dir`` (cluster
    runs) each worker writes its record there when its process exits."""

    mode: str
    report_dir: str | None = None

    def __call__(self, worker_index: int) -> Probe:
        p = probe(worker_index).sink_mode(self.mode)
        if self.report_dir is not None:
            atexit.register(_write_report, p, Path(self.report_dir, f"worker-{worker_index}.json"))
        return p


def _write_report(p: Probe, path: Path) -> None:
    p.end = time.monotonic()
    path.write_text(json.dumps(p.record()))


# -- the engine side ---------------------------------------------------------------------------


class Engine(Protocol):
    """What an engine module provides."""

    NAME: str

    def version(self) -> str: ...

    def build(self, flow: str, source: Source, sink: Sink) -> Any:
        """The flow ``flow`` reading ``source`` into ``sink``."""

    def run(self, flow: Any, *, epoch_s: float | None, recovery_dir: str | None) -> None:
        """Run on one worker in this thread."""

    def run_cluster(self, flow: str, source: Source, sink: Sink, procs: int) -> None:
        """Run on ``procs`` local processes of one worker each; return when all are done."""


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _vm_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS where Linux allows it (so that a
    transient peak while importing does not count); the current RSS in KiB."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _vm_kib("VmRSS")


def measure(engine: Engine, name: str, scale: float) -> dict[str, Any]:
    """Run measurement ``name`` once in this process; the JSON-able result."""
    m = MEASURES[name]
    n = size(name, scale)
    mode = SINK_MODES[m.flow]
    _PROBES.clear()
    extra: dict[str, float] = {}
    if m.procs > 1:
        with tempfile.TemporaryDirectory() as report_dir:
            engine.run_cluster(m.flow, Source(m.flow, n, sharded=True), Sink(mode, report_dir), m.procs)
            records = [json.loads(p.read_text()) for p in Path(report_dir).glob("worker-*.json")]
        if len(records) != m.procs:
            raise RuntimeError(f"{len(records)} worker reports, expected {m.procs}")
    else:
        flow = engine.build(m.flow, Source(m.flow, n, stream=m.stream, variant=m.variant), Sink(mode))
        db = tempfile.TemporaryDirectory() if m.recovery else nullcontext(None)
        with db as db_dir:
            rss_before = _reset_peak_rss()
            engine.run(flow, epoch_s=m.epoch_s, recovery_dir=db_dir)
            probe(0).end = time.monotonic()
        if m.stream:
            peak = _vm_kib("VmHWM")
            extra = {
                "rss_setup_mb": rss_before / 1024,
                "rss_peak_mb": peak / 1024,
                "rss_growth_mb": (peak - rss_before) / 1024,
            }
        records = [p.record() for p in _PROBES.values()]
    starts = [r["first"] for r in records if r["first"] is not None]
    if not starts:
        raise RuntimeError("no worker read any input")
    seconds = max(r["end"] - r["first"] for r in records if r["first"] is not None)
    if mode != "count":
        digest = pairs_digest(chain.from_iterable(r["pairs"] for r in records))
    else:
        digest = {"count": sum(r["count"] for r in records)}
    return {
        "engine": engine.NAME,
        "version": engine.version(),
        "measure": name,
        "items": n,
        "seconds": seconds,
        "items_per_s": n / seconds,
        "digest": digest,
        **extra,
    }


def bench_main(engine: Engine, argv: list[str] | None = None) -> None:
    """Command line of an engine module: run one measurement, print one JSON line."""
    parser = argparse.ArgumentParser(description=f"One {engine.NAME} measurement as JSON.")
    parser.add_argument("measure", choices=sorted(MEASURES))
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(json.dumps(measure(engine, args.measure, args.scale)), flush=True)
