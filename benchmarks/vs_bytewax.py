"""Millrace against Bytewax 0.21.1: the same workloads on both engines, side by side in one run.

    python benchmarks/vs_bytewax.py                          # all, full size (~6 min on 2 cores)
    python benchmarks/vs_bytewax.py --scale 0.05 --repeat 1  # a quick check that all works
    python benchmarks/vs_bytewax.py --only stateless windowed

Run it with the project's Python (millrace importable: ``pip install -e '.[bench]'``, which
also brings matplotlib for the chart). Bytewax runs from its own virtual environment,
``.bench/bytewax``; ``benchmarks/setup-bytewax`` makes it, and this script calls that when the
environment is missing.

Every measurement is a fresh interpreter (``benchmarks/bench_millrace.py MEASURE`` or
``benchmarks/bench_bytewax.py MEASURE`` under Bytewax's Python) printing one JSON line; the
engines alternate run by run, ``--repeat`` times, and tables show medians (throughputs with the
range of their runs); a ratio is the median over the rounds of the ratio of that round's runs.
Both engines make the same seeded data (``benchmarks/workloads_data.py``) and call the same
user functions.
Every run's output digest is checked against one computed here; a figure counts only if all
its runs are correct, and a wrong or crashed run is a loud FAIL and a non-zero exit.

Workloads (sizes times ``--scale``) and the targets for millrace:

a stateless     2,000,000 random ints: map(x+1), filter(even), a counting sink
                read three ways: millrace's item input (``ManualInputConfig``) and its
                batched one (``batched=True``, lists of 1,000, written by a batched
                ``ManualOutputConfig``: >= 2x Bytewax's batch source), Bytewax's batch
                source (``next_batch`` of 1,000) and one that hands out one item per
                ``next_batch``; beside them plain loops: over the ``(state, item)`` pairs
                millrace's builder yields (item input: >= 90% of it), over the bare items
                (batched input: >= 80% of it) and over the same lists of 1,000,
                each of the two also with the checks millrace's API owes
b wordcount     1,000,000 words of 10,000: each word's final count               >= 8x Bytewax
c windowed      1,000,000 events, 1,000 keys, 1,000 s: 1-second tumbling event-time
                windows counting per key                                          >= 12x Bytewax
d stateless-2p  (a) on 2 processes x 1 worker, each reading only its own share:
                >= 1.6x millrace's own 1 process, and ahead of Bytewax on 2 processes
  wordcount-2p  (b) likewise: ahead of Bytewax on 2 processes
e rss           peak RSS growth over a 10,000,000-item streaming (a)              < 50 MB
f recovery      (b) at 4,000,000 words with 1-second epochs, snapshots at each
                vs none                                                           cost < 15%

Throughput is ``items / the longest span of a worker`` from its first input pull to the end
of its run: data is made before the clock starts (except for ``rss``, which streams it);
process start-up, and how far apart the processes of a cluster start, are not counted. Results
go to ``--results`` (markdown) and ``--chart`` (PNG).

How the engines differ where their APIs differ (details in the engine modules):

- word count: final counts, once per word at the end of input: Bytewax's ``reduce_final``,
  millrace's ``reduce_window`` over a system-clock window longer than the run (in the 0.14
  API ``reduce`` emits only when ``is_complete`` says so, never at the end of input), with
  ``combine=True`` (its reducer, ``+``, is associative): on 2 processes each reduces the words
  the other owns before they cross, as Flink's and Spark's combiners do; Bytewax 0.21 has no
  such option, and sends every word;
- inputs: millrace reads ``ManualInputConfig`` (one item at a time, as its API has it;
  ``batched=True`` in the ``stateless-batch`` measure), Bytewax custom sources hand out
  batches of 1,000 (one item at a time in ``stateless-item``); sinks: millrace's is called
  per item (per list, ``ManualOutputConfig(batched=True)``, in ``stateless-batch``),
  Bytewax's per batch;
- windows: millrace's ``fold_window`` emits ``(key, count)``, Bytewax's ``(key, (window_id,
  count))``; both fold in arrival order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import workloads_data as wd  # noqa: E402

ENGINES = ("millrace", "bytewax")
LABEL = {"millrace": "millrace", "bytewax": "Bytewax", "python": "plain loop"}
RUN_TIMEOUT_S = 1800


# -- what to run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    letter: str
    measures: tuple[str, ...]  # run on both engines
    millrace_only: tuple[str, ...] = ()  # reference figures of millrace alone
    #: Plain Python loops calling the same functions (``bench_python.py``), timed beside.
    ceilings: tuple[str, ...] = ()
    bytewax_only: tuple[str, ...] = ()  # figures of Bytewax alone (another way to read)

    @property
    def ceiling(self) -> bool:
        return bool(self.ceilings)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "stateless",
            "a",
            ("stateless",),
            ("stateless-batch",),
            ceilings=(
                "stateless",
                "stateless-pairs",
                "stateless-checked",
                "stateless-batch",
                "stateless-batch-checked",
            ),
            bytewax_only=("stateless-item",),
        ),
        Workload("wordcount", "b", ("wordcount",), ceilings=("wordcount",)),
        Workload("windowed", "c", ("windowed",), ceilings=("windowed",)),
        Workload("stateless-2p", "d", ("stateless-2p",), ("stateless",)),
        Workload("wordcount-2p", "d", ("wordcount-2p",), ("wordcount",)),
        Workload("rss", "e", ("rss",)),
        Workload("recovery", "f", ("wordcount-1s", "recovery")),
    ]
}


@dataclass
class Runs:
    """The runs of one measure on one engine."""

    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failures

    def median(self, key: str = "items_per_s") -> float | None:
        """Median of ``key`` over the runs; ``None`` if any run failed."""
        return statistics.median(r[key] for r in self.results) if self.ok else None

    def spread(self, key: str = "items_per_s") -> tuple[float, float] | None:
        """The lowest and highest ``key`` of the runs; ``None`` if any run failed."""
        values = [r[key] for r in self.results]
        return (min(values), max(values)) if self.ok else None


class Bench:
    """Runs measurements in fresh interpreters and checks each one."""

    def __init__(self, scale: float, repeat: int, pythons: dict[str, str]) -> None:
        self.scale = scale
        self.repeat = repeat
        self.pythons = pythons
        self.runs: dict[tuple[str, str], Runs] = {}
        self._expected: dict[tuple[str, int], dict[str, Any]] = {}
        self.versions: dict[str, str] = {}

    def expected(self, measure: str) -> dict[str, Any]:
        key = (wd.MEASURES[measure].flow, wd.size(measure, self.scale))
        if key not in self._expected:
            self._expected[key] = wd.expected(measure, self.scale)
        return self._expected[key]

    def run_once(self, engine: str, measure: str, key: str | None = None) -> None:
        """Run ``measure`` on ``engine`` once and file the result under ``(engine, key)``
        (``key`` defaults to the measure)."""
        runs = self.runs.setdefault((engine, key or measure), Runs())
        attempt = len(runs.results) + len(runs.failures) + 1
        cmd = [self.pythons[engine], str(BENCH / f"bench_{engine}.py"), measure, "--scale", repr(self.scale)]
        head = f"  {LABEL[engine]:<9} {measure:<13} run {attempt}/{self.repeat} "
        print(head, end="", flush=True)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            why = f"timed out after {RUN_TIMEOUT_S} s: {shlex.join(cmd)}"
            return self._fail(runs, engine, measure, why)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            why = f"exit {done.returncode}: {shlex.join(cmd)}\n{tail}"
            return self._fail(runs, engine, measure, why)
        result = json.loads(lines[-1])
        self.versions[engine] = result["version"]
        want = self.expected(measure)
        if result["digest"] != want:
            why = f"wrong output: got {result['digest']}, expected {want}"
            return self._fail(runs, engine, measure, why)
        runs.results.append(result)
        extra = f", RSS +{result['rss_growth_mb']:.1f} MB" if "rss_growth_mb" in result else ""
        print(f"{result['items_per_s']:>13,.0f} items/s{extra}  ok", flush=True)

    def _fail(self, runs: Runs, engine: str, measure: str, why: str) -> None:
        why = f"{LABEL[engine]} {measure}: {why}"
        runs.failures.append(why)
        print(f"\n{'!' * 78}\nFAIL: {why}\n{'!' * 78}", flush=True)

    def run_workload(self, w: Workload) -> None:
        """``repeat`` rounds; in each, every engine runs every measure once (alternating, so
        that a slow spell of the machine hits both). A reference measure of millrace alone
        runs in each round too, filed apart (:func:`beside`), so that it pairs with the runs
        of this workload rather than with those of the workload it belongs to."""
        wanted = (
            [(e, m, m) for m in w.measures for e in ENGINES]
            + [("millrace", m, beside(m, w)) for m in w.millrace_only]
            + [("bytewax", m, m) for m in w.bytewax_only]
            + [("python", m, m) for m in w.ceilings]
        )
        for round_ in range(1, self.repeat + 1):
            for engine, measure, key in wanted:
                runs = self.runs.get((engine, key), Runs())
                if len(runs.results) + len(runs.failures) < round_:  # not run by another workload
                    self.run_once(engine, measure, key)

    def median(self, engine: str, measure: str, key: str = "items_per_s") -> float | None:
        runs = self.runs.get((engine, measure))
        return runs.median(key) if runs else None

    def ratio(self, a: tuple[str, str], b: tuple[str, str], key: str = "items_per_s") -> float | None:
        """``a``'s figure over ``b``'s (each an (engine, measure)): the median over the rounds
        of the ratio of their runs in that round. Runs of one round ran one after the other,
        so a slow spell of this shared machine weighs on both sides of a ratio instead of on
        one side of a median. ``None`` if any run failed."""
        runs_a, runs_b = self.runs.get(a), self.runs.get(b)
        if runs_a is None or runs_b is None or not (runs_a.ok and runs_b.ok):
            return None
        pairs = list(zip(runs_a.results, runs_b.results, strict=False))
        return statistics.median(x[key] / y[key] for x, y in pairs if y[key])

    def throughput(self, engine: str, measure: str) -> str:
        """The median items/s of ``engine`` on ``measure``, with the range of its runs (on a
        shared machine they can differ by half)."""
        runs = self.runs.get((engine, measure))
        spread = runs.spread() if runs else None
        text = _ips(self.median(engine, measure))
        if spread is None or len(runs.results) < 2:  # type: ignore[union-attr]
            return text
        return f"{text} (runs {_short(spread[0])}–{_short(spread[1])})"


# -- verdicts ----------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    millrace: str
    bytewax: str
    ratio: str
    target: str
    verdict: str  # PASS, MISS, FAIL or "info"


@dataclass
class Bar:
    """One bar of the chart: a figure and the target line drawn across it."""

    panel: str
    label: str
    millrace: float | None
    bytewax: float | None = None
    target: float | None = None


def _ips(v: float | None) -> str:
    return "FAIL" if v is None else f"{v:,.0f} items/s"


def _short(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def _mb(v: float | None) -> str:
    return "FAIL" if v is None else f"{v:,.1f} MB"


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _pct(v: float | None) -> str:
    return "FAIL" if v is None else f"{v:.1%}"


def _x(v: float | None) -> str:
    return "FAIL" if v is None else f"{v:.2f}x"


def _verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "FAIL"
    return "PASS" if ok(value) else "MISS"


def beside(measure: str, w: Workload) -> str:
    """The key of the runs of ``measure`` made in the rounds of workload ``w``."""
    return f"{measure}, beside {w.name}"


def stateless_rows(bench: Bench, w: Workload) -> tuple[list[Row], list[Bar]]:
    """Workload a: millrace's item input and its batched one, against Bytewax's batch source
    (``next_batch`` of 1,000) and its item-by-item one, and against the plain loops."""
    mr, bw, py = "millrace", "bytewax", "python"
    batch = beside("stateless-batch", w)
    item_vs_bw = bench.ratio((mr, "stateless"), (bw, "stateless"))
    item_vs_bw_item = bench.ratio((mr, "stateless"), (bw, "stateless-item"))
    batch_vs_bw = bench.ratio((mr, batch), (bw, "stateless"))
    share_pairs = bench.ratio((mr, "stateless"), (py, "stateless-pairs"))
    share_items = bench.ratio((mr, batch), (py, "stateless"))
    rows = [
        Row(
            # Issue 7 asked 2x of item input; issue 24 set it against the plain loop instead
            # (target 1 below), because that loop itself stays under 2x: shown beside it.
            "item input (ManualInputConfig) vs Bytewax's batch source (next_batch: 1,000 items); "
            "the plain loop over the same (state, item) generator reaches "
            f"{_x(bench.ratio((py, 'stateless-pairs'), (bw, 'stateless')))} of it",
            bench.throughput(mr, "stateless"),
            bench.throughput(bw, "stateless"),
            _x(item_vs_bw),
            "—",
            "info",
        ),
        Row(
            "item input vs Bytewax's source one item per next_batch",
            bench.throughput(mr, "stateless"),
            bench.throughput(bw, "stateless-item"),
            _x(item_vs_bw_item),
            "—",
            "info",
        ),
        Row(
            "batched input and output (ManualInputConfig and ManualOutputConfig with batched=True, "
            "lists of 1,000) vs Bytewax's batch source and sink",
            bench.throughput(mr, batch),
            bench.throughput(bw, "stateless"),
            _x(batch_vs_bw),
            ">= 2x",
            _verdict(batch_vs_bw, lambda r: r >= 2.0),
        ),
        Row(
            "item input as a share of a plain loop over the same (state, item) generator "
            f"({_ips(bench.median(py, 'stateless-pairs'))}); Bytewax's batch source beside it",
            _pct(share_pairs),
            _pct(bench.ratio((bw, "stateless"), (py, "stateless-pairs"))),
            "—",
            ">= 90%",
            _verdict(share_pairs, lambda r: r >= 0.9),
        ),
        Row(
            "item input as a share of that loop with the checks the API owes (the first yield of "
            "each 1,024 a tuple, each filter verdict a bool, a stop every 1,024 items), written by hand "
            f"({_ips(bench.median(py, 'stateless-checked'))})",
            _pct(bench.ratio((mr, "stateless"), (py, "stateless-checked"))),
            "—",
            "—",
            "—",
            "info",
        ),
        Row(
            "batched input and output as a share of a plain loop over the items "
            f"({_ips(bench.median(py, 'stateless'))}); Bytewax's batch source beside it",
            _pct(share_items),
            _pct(bench.ratio((bw, "stateless"), (py, "stateless"))),
            "—",
            ">= 80%",
            _verdict(share_items, lambda r: r >= 0.8),
        ),
        Row(
            "batched input and output as a share of the same written by hand: lists of 1,000 from "
            "the same source, the same two functions per item, a list at a time to the sink "
            f"({_ips(bench.median(py, 'stateless-batch'))}; Bytewax's batch source beside it): "
            "the most a batched engine can reach, "
            f"{_x(bench.ratio((py, 'stateless-batch'), (bw, 'stateless')))} Bytewax's batch source",
            _pct(bench.ratio((mr, batch), (py, "stateless-batch"))),
            _pct(bench.ratio((bw, "stateless"), (py, "stateless-batch"))),
            "—",
            "—",
            "info",
        ),
        Row(
            "batched input and output as a share of that loop with the checks the API owes (each "
            "yield a (state, list) tuple, each filter verdict a bool), written by hand "
            f"({_ips(bench.median(py, 'stateless-batch-checked'))}): "
            f"{_x(bench.ratio((py, 'stateless-batch-checked'), (bw, 'stateless')))} Bytewax's batch source",
            _pct(bench.ratio((mr, batch), (py, "stateless-batch-checked"))),
            _pct(bench.ratio((bw, "stateless"), (py, "stateless-batch-checked"))),
            "—",
            "—",
            "info",
        ),
    ]
    bars = [
        Bar("ratio", "a stateless, item input", item_vs_bw),
        Bar("ratio", "a stateless, batched input", batch_vs_bw, target=2.0),
    ]
    return rows, bars


def rows_for(bench: Bench, w: Workload) -> tuple[list[Row], list[Bar]]:
    def m(measure: str, key: str = "items_per_s") -> float | None:
        return bench.median("millrace", measure, key)

    def b(measure: str, key: str = "items_per_s") -> float | None:
        return bench.median("bytewax", measure, key)

    if w.name == "stateless":
        return stateless_rows(bench, w)
    if w.name in ("wordcount", "windowed"):
        goal = {"wordcount": 8.0, "windowed": 12.0}[w.name]
        ratio = bench.ratio(("millrace", w.name), ("bytewax", w.name))
        rows = [
            Row(
                f"{w.name}, 1 process",
                bench.throughput("millrace", w.name),
                bench.throughput("bytewax", w.name),
                _x(ratio),
                f">= {goal:g}x",
                _verdict(ratio, lambda r: r >= goal),
            )
        ]
        if w.ceiling:
            loop = bench.median("python", w.name)
            rows.append(
                Row(
                    f"ceiling: a plain loop calling the same functions, {_ips(loop)}; each engine as a share of it",
                    _pct(bench.ratio(("millrace", w.name), ("python", w.name))),
                    _pct(bench.ratio(("bytewax", w.name), ("python", w.name))),
                    _x(bench.ratio(("python", w.name), ("bytewax", w.name))),
                    "the most any engine can reach",
                    "info",
                )
            )
        return rows, [Bar("ratio", f"{w.letter} {w.name}", ratio, target=goal)]
    if w.name.endswith("-2p"):
        one = beside(w.millrace_only[0], w)
        two, one_m = m(w.name), m(one)
        vs_bw = bench.ratio(("millrace", w.name), ("bytewax", w.name))
        vs_one = bench.ratio(("millrace", w.name), ("millrace", one))
        rows = [
            Row(
                f"{w.name}: 2 processes",
                bench.throughput("millrace", w.name),
                bench.throughput("bytewax", w.name),
                _x(vs_bw),
                "> 1x (ahead)",
                _verdict(vs_bw, lambda r: r > 1.0),
            )
        ]
        bars = [Bar("ratio", f"{w.letter} {w.name} vs Bytewax 2p", vs_bw, target=1.0)]
        scaling = Row(
            f"{w.name} vs millrace 1 process, run beside it ({_ips(one_m)})", _ips(two), "—", _x(vs_one), "—", "info"
        )
        if w.name == "stateless-2p":
            scaling.target, scaling.verdict = ">= 1.6x", _verdict(vs_one, lambda r: r >= 1.6)
            bars.append(Bar("ratio", f"{w.letter} stateless 2p / 1p", vs_one, target=1.6))
        return [*rows, scaling], bars
    if w.name == "rss":
        grow_m, grow_b = m("rss", "rss_growth_mb"), b("rss", "rss_growth_mb")
        return (
            [
                Row("peak RSS growth", _mb(grow_m), _mb(grow_b), "—", "< 50 MB", _verdict(grow_m, lambda g: g < 50)),
                Row(
                    "throughput while measuring",
                    _ips(m("rss")),
                    _ips(b("rss")),
                    _x(bench.ratio(("millrace", "rss"), ("bytewax", "rss"))),
                    "—",
                    "info",
                ),
            ],
            [Bar("rss", "e peak RSS growth (MB)", grow_m, grow_b, target=50)],
        )
    # recovery
    with_m = bench.ratio(("millrace", "recovery"), ("millrace", "wordcount-1s"))
    with_b = bench.ratio(("bytewax", "recovery"), ("bytewax", "wordcount-1s"))
    cost_m = None if with_m is None else 1 - with_m
    cost_b = None if with_b is None else 1 - with_b
    return (
        [
            Row(
                "wordcount, 1 s epochs, no recovery",
                bench.throughput("millrace", "wordcount-1s"),
                bench.throughput("bytewax", "wordcount-1s"),
                _x(bench.ratio(("millrace", "wordcount-1s"), ("bytewax", "wordcount-1s"))),
                "—",
                "info",
            ),
            Row(
                "wordcount, 1 s epochs, snapshot at each",
                bench.throughput("millrace", "recovery"),
                bench.throughput("bytewax", "recovery"),
                _x(bench.ratio(("millrace", "recovery"), ("bytewax", "recovery"))),
                "—",
                "info",
            ),
            Row(
                "cost of recovery (1 - with/without)",
                _pct(cost_m),
                _pct(cost_b),
                "—",
                "< 15%",
                _verdict(cost_m, lambda c: c < 0.15),
            ),
            # How many snapshots a run holds depends on how long it runs: one per second,
            # and the last one at the end of input.
            Row(
                "length of a run with recovery (a snapshot each second and at the end)",
                _secs(m("recovery", "seconds")),
                _secs(b("recovery", "seconds")),
                "—",
                "—",
                "info",
            ),
        ],
        [
            Bar(
                "recovery",
                "f recovery cost (%)",
                None if cost_m is None else 100 * cost_m,
                None if cost_b is None else 100 * cost_b,
                target=15,
            )
        ],
    )


# -- output ------------------------------------------------------------------------------------


def millrace_source() -> tuple[str, str]:
    """The checkout's commit (``-dirty`` with local changes) and a hash of the millrace code
    itself, to tell whether that code changed while the benchmarks ran."""
    commit = (
        subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    code = hashlib.sha256()
    for path in sorted((ROOT / "worker" / "millrace").rglob("*.py")):
        code.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return commit, code.hexdigest()[:12]


def machine_facts(
    pythons: dict[str, str], versions: dict[str, str], source_at_start: tuple[str, str]
) -> list[tuple[str, str]]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    (commit, code), (commit_end, code_end) = source_at_start, millrace_source()
    if code_end != code:
        commit = (
            f"{commit} at the start, {commit_end} at the end: **the millrace code changed "
            f"during the run** (worker/millrace hash {code} -> {code_end})"
        )
    bw_python = subprocess.run(
        [pythons["bytewax"], "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True
    ).stdout.strip()
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("Python", f"{platform.python_version()} (millrace, plain loop), {bw_python} (Bytewax)"),
        ("millrace commit", commit),
        ("Bytewax", versions.get("bytewax", "not run")),
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("load average at the end", load),
    ]


def write_results(
    path: Path,
    command: str,
    facts: list[tuple[str, str]],
    scale: float,
    repeat: int,
    tables: list[tuple[Workload, list[Row]]],
    failures: list[str],
    chart: Path | None,
) -> None:
    out = ["# millrace vs Bytewax 0.21.1", ""]
    out += [f"- **{k}**: {v}" for k, v in facts]
    out += [
        "",
        "Command:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Scale {scale:g}, median of {repeat} run(s) per figure, each in a fresh "
        "interpreter, the engines alternating; beside a throughput, the lowest and highest "
        "of its runs (this machine is shared, and runs of one figure can differ by half). "
        "A ratio is the median over the rounds of the ratio of the two runs of that round, "
        "which ran one after the other. "
        "Every run's output is checked; a figure "
        "with a wrong or failed run shows FAIL. How each workload is built and timed: "
        "the docstrings of `benchmarks/vs_bytewax.py` and `benchmarks/bench_bytewax.py`.",
        "",
    ]
    for w, rows in tables:
        out += [
            f"## {w.letter}. {w.name}",
            "",
            "| measurement | millrace | Bytewax | millrace / Bytewax | target | verdict |",
            "|---|---:|---:|---:|---|---|",
        ]
        out += [f"| {r.label} | {r.millrace} | {r.bytewax} | {r.ratio} | {r.target} | **{r.verdict}** |" for r in rows]
        out.append("")
    if failures:
        out += ["## Failures", ""] + [f"- `{f.splitlines()[0]}`" for f in failures] + [""]
    if chart is not None:
        out += ["## Chart", "", f"![ratios]({os.path.relpath(chart, path.parent)})", ""]
    # Other benchmarks' sections (benchmarks/operator_scale.py's) follow this marker: kept.
    if path.exists() and OTHER_RESULTS in (kept := path.read_text()):
        out += [kept[kept.index(OTHER_RESULTS) :].rstrip("\n"), ""]
    path.write_text("\n".join(out))


OTHER_RESULTS = "<!-- other benchmarks: kept when vs_bytewax.py writes this file -->"


def draw_chart(bars: list[Bar], path: Path, title: str) -> bool:
    """Bar chart of the figures with their target lines; ``False`` if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no chart: pip install -e '.[bench]'")
        return False
    panels = [(p, [b for b in bars if b.panel == p]) for p in ("ratio", "rss", "recovery")]
    panels = [(p, bs) for p, bs in panels if bs]
    widths = [max(2, len(bs)) for _, bs in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3 + 1.4 * sum(widths), 5), gridspec_kw={"width_ratios": widths}, squeeze=False
    )
    for ax, (panel, bs) in zip(axes[0], panels, strict=True):
        xs = range(len(bs))
        if panel == "ratio":
            drawn = ax.bar(xs, [b.millrace or 0 for b in bs], color="#3b7dd8", label="millrace / Bytewax")
            ax.bar_label(drawn, fmt="%.2fx", fontsize=8)
            ax.set_ylabel("ratio (x)")
            ax.set_title("speed ratios")
        else:
            sides = ((-0.2, "millrace", "#3b7dd8"), (0.2, "bytewax", "#999999"))
            for shift, engine, color in sides:
                drawn = ax.bar(
                    [x + shift for x in xs],
                    [getattr(b, engine) or 0 for b in bs],
                    0.4,
                    color=color,
                    label=LABEL[engine],
                )
                ax.bar_label(drawn, fmt="%.1f", fontsize=8)
            ax.set_title("memory" if panel == "rss" else "recovery")
        for x, b in zip(xs, bs, strict=True):
            if b.target is not None:
                ax.hlines(b.target, x - 0.45, x + 0.45, colors="#d62728", linestyles="--")
            if b.millrace is None:
                ax.text(x, 0, "FAIL", ha="center", va="bottom", color="#d62728")
        ax.set_xticks(list(xs), [b.label for b in bs], rotation=20, ha="right", fontsize=8)
        ax.plot([], [], color="#d62728", linestyle="--", label="target")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main --------------------------------------------------------------------------------------


def ensure_bytewax(python: Path, is_default: bool) -> None:
    if python.exists():
        return
    if not is_default:
        sys.exit(f"no Bytewax Python at {python}")
    print(f"{python} is missing: running benchmarks/setup-bytewax", flush=True)
    subprocess.run([str(BENCH / "setup-bytewax")], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median shown)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(WORKLOADS),
        metavar="NAME",
        help=f"run only these workloads: {', '.join(WORKLOADS)}",
    )
    default_bw = ROOT / ".bench/bytewax/bin/python"
    parser.add_argument(
        "--bytewax-python",
        type=Path,
        default=default_bw,
        help="Python with bytewax==0.21.1 (default .bench/bytewax/bin/python)",
    )
    parser.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--chart", type=Path, default=BENCH / "ratios.png")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        parser.error("--scale must be > 0 and --repeat >= 1")

    ensure_bytewax(args.bytewax_python, args.bytewax_python == default_bw)
    pythons = {"millrace": sys.executable, "bytewax": str(args.bytewax_python), "python": sys.executable}
    source_at_start = millrace_source()
    bench = Bench(args.scale, args.repeat, pythons)
    selected = [WORKLOADS[n] for n in (args.only or WORKLOADS)]
    print(f"millrace vs Bytewax: scale {args.scale:g}, {args.repeat} run(s) each, {os.cpu_count()} cores", flush=True)
    tables: list[tuple[Workload, list[Row]]] = []
    bars: list[Bar] = []
    for w in selected:
        print(f"{w.letter} {w.name}", flush=True)
        bench.run_workload(w)
        rows, more = rows_for(bench, w)
        tables.append((w, rows))
        bars += more
        for r in rows:
            print(
                f"    {r.verdict:<5} {r.label}: millrace {r.millrace}, Bytewax {r.bytewax}, "
                f"ratio {r.ratio}, target {r.target}",
                flush=True,
            )

    command = (
        "python benchmarks/vs_bytewax.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    facts = machine_facts(pythons, bench.versions, source_at_start)
    if millrace_source()[1] != source_at_start[1]:
        print("WARNING: the millrace code (worker/millrace) changed while this ran; the figures mix two versions")
    title = f"millrace vs Bytewax {bench.versions.get('bytewax', '0.21.1')}, scale {args.scale:g}"
    chart = args.chart if draw_chart(bars, args.chart, title) else None
    failures = [f for runs in bench.runs.values() for f in runs.failures]
    write_results(args.results, command, facts, args.scale, args.repeat, tables, failures, chart)
    print(f"wrote {args.results}" + (f" and {args.chart}" if chart else ""))
    verdicts = [r.verdict for _, rows in tables for r in rows]
    print(f"{verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS, {verdicts.count('FAIL')} FAIL")
    if failures:
        print(f"\n{'!' * 78}\nFAIL: {len(failures)} run(s) crashed or gave wrong output:")
        for f in failures:
            print("  - " + f.splitlines()[0])
        print("!" * 78)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
