"""A program written for Bytewax 0.15 behaves the same on millrace (issue 19): Manager proxies
of either multiprocessing package in a spawned flow, errors from children that say where they
happened, an input that fails after some items, Ctrl-C under cluster_main."""

from __future__ import annotations

import importlib
import re
import signal
import traceback
from pathlib import Path

import pytest

from millrace.dataflow import Dataflow
from millrace.execution import spawn_cluster
from millrace.inputs import TestingInputConfig
from millrace.outputs import TestingOutputConfig

from .conftest import Procs

pytestmark = pytest.mark.timeout(180)


# -- spawn_cluster and Manager proxies ------------------------------------------------------


@pytest.mark.parametrize("package", ["multiprocessing", "multiprocess"])
@pytest.mark.parametrize("context", ["default", "multiprocessing", "multiprocess"])
def test_manager_proxies_of_either_package_travel_to_spawned_processes(package, context):
    """Bytewax 0.15 programs hand ``multiprocess.Manager()`` lists to their flows; the
    children must authenticate to that manager whichever package's context started them."""
    manager_package = importlib.import_module(package)
    mp_ctx = None if context == "default" else importlib.import_module(context).get_context("spawn")
    with manager_package.Manager() as manager:
        source = manager.list(range(20))  # iterated through __getitem__ by TestingInputConfig
        out = manager.list()
        flow = Dataflow()
        flow.input("inp", TestingInputConfig(source))
        flow.map(lambda x: x * 10)
        flow.capture(TestingOutputConfig(out))
        spawn_cluster(flow, proc_count=2, worker_count_per_proc=2, mp_ctx=mp_ctx)
        assert sorted(out) == [x * 10 for x in range(20)]


# -- a child's traceback --------------------------------------------------------------------


def test_a_child_failure_is_raised_with_the_traceback_of_the_child(procs: Procs, tmp_path: Path):
    """The function is defined in the script (``__main__``), so it travels by value, as in
    most programs: the parent's traceback still shows its file, line and source."""
    script = tmp_path / "flow_script.py"
    script.write_text(
        "from millrace.dataflow import Dataflow\n"
        "from millrace.execution import spawn_cluster\n"
        "from millrace.inputs import TestingInputConfig\n"
        "from millrace.outputs import TestingOutputConfig\n"
        "\n"
        "def explode(x):\n"
        "    if x == 7:\n"
        "        raise ZeroDivisionError(f'cannot take {x}')\n"
        "    return x\n"
        "\n"
        "if __name__ == '__main__':\n"
        "    flow = Dataflow()\n"
        "    flow.input('inp', TestingInputConfig(range(20)))\n"
        "    flow.map(explode)\n"
        "    flow.capture(TestingOutputConfig([]))\n"
        "    spawn_cluster(flow, proc_count=2)\n"
    )
    proc = procs.start(str(script))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert f'File "{script}", line 8, in explode' in stderr, stderr
    assert "raise ZeroDivisionError(f'cannot take {x}')" in stderr, stderr
    assert "The above exception was the direct cause of the following exception" in stderr
    assert stderr.rstrip().splitlines()[-2:] == [
        "ZeroDivisionError: cannot take 7",
        "millrace: raised in map #1 (explode) on worker 1",
    ], stderr


def _explode(x: int) -> int:
    if x == 3:
        raise KeyError(x)
    return x


def test_the_cause_of_a_child_failure_holds_its_traceback():
    from millrace.runtime.errors import RemoteTraceback

    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(10)))
    flow.map(_explode)
    flow.capture(TestingOutputConfig([]))
    with pytest.raises(KeyError) as info:
        spawn_cluster(flow, proc_count=2)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    line = _explode.__code__.co_firstlineno + 2
    assert f'File "{__file__}", line {line}, in _explode' in cause.text
    shown = "".join(traceback.format_exception(info.value))
    assert re.search(r"raise KeyError\(x\)\nKeyError: 3\nmillrace: raised in map #1 \(_explode\)", shown), shown


# -- an input that raises after some items ---------------------------------------------------


class SourceFailed(Exception):
    pass


def _failing_builder(fail_at: int | None, count: int = 10):
    """A Bytewax 0.15 input builder: ``(state, item)`` for the items from ``resume_state`` on,
    raising instead of yielding item ``fail_at``."""

    def build(worker_index, worker_count, resume_state):
        for i in range(resume_state or 0, count):
            if i == fail_at:
                raise SourceFailed(f"the source failed before item {i}")
            yield i + 1, i

    return build


def _run_single(flow, **kwargs):
    from millrace.execution import run_main

    run_main(flow, **kwargs)


def _run_cluster_main(flow, **kwargs):
    from millrace.execution import cluster_main

    cluster_main(flow, [], 0, **kwargs)


@pytest.mark.parametrize("entry", [_run_single, _run_cluster_main])
@pytest.mark.parametrize("epochs", ["periodic", "testing"])
@pytest.mark.parametrize("source", ["manual", "testing_builder"])
def test_every_item_before_an_input_error_reaches_the_output(entry, epochs, source):
    from millrace.execution import TestingEpochConfig
    from millrace.inputs import ManualInputConfig, TestingBuilderInputConfig

    def numbers_then_error():
        yield from range(5)
        raise SourceFailed("the source failed after 5 items")

    flow = Dataflow()
    if source == "manual":
        flow.input("inp", ManualInputConfig(_failing_builder(5)))
    else:
        flow.input("inp", TestingBuilderInputConfig(numbers_then_error))
    flow.map(lambda x: x * 10)
    out: list = []
    flow.capture(TestingOutputConfig(out))
    with pytest.raises(SourceFailed) as info:
        entry(flow, epoch_config=TestingEpochConfig() if epochs == "testing" else None)
    assert out == [0, 10, 20, 30, 40]
    assert info.value.__notes__ == ["millrace: raised in input 'inp' on worker 0"]


@pytest.mark.parametrize("epochs", ["periodic", "testing"])
def test_after_an_input_error_recovery_resumes_at_the_failed_epoch(tmp_path, epochs):
    """As Bytewax's recovery tests have it: the first run's output has every item before the
    error; the resumed run starts over at the epoch that failed (its items come again, those of
    finished epochs do not), with the state as of the epoch before it."""
    from millrace.execution import TestingEpochConfig, run_main
    from millrace.inputs import ManualInputConfig
    from millrace.outputs import ManualEpochOutputConfig
    from millrace.recovery import SqliteRecoveryConfig

    def flow_failing_at(fail_at, out):
        flow = Dataflow()
        flow.input("inp", ManualInputConfig(_failing_builder(fail_at)))
        flow.map(lambda x: ("total", x))
        flow.stateful_map("sum", lambda: 0, lambda total, x: (total + x, total + x))
        flow.capture(ManualEpochOutputConfig(lambda worker_index, worker_count: out.append))
        return flow

    epoch_config = TestingEpochConfig() if epochs == "testing" else None
    recovery = SqliteRecoveryConfig(tmp_path)
    first: list = []
    with pytest.raises(SourceFailed):
        run_main(flow_failing_at(6, first), epoch_config=epoch_config, recovery_config=recovery)
    sums = [sum(range(i + 1)) for i in range(10)]
    if epochs == "testing":  # one epoch per item: epochs 0-5 finished, 6 failed
        assert first == [(i, ("total", sums[i])) for i in range(6)]
    else:  # everything in epoch 0, which failed
        assert first == [(0, ("total", sums[i])) for i in range(6)]
    resumed: list = []
    run_main(flow_failing_at(None, resumed), epoch_config=epoch_config, recovery_config=recovery)
    if epochs == "testing":
        assert resumed == [(i, ("total", sums[i])) for i in range(6, 10)]
    else:
        assert resumed == [(0, ("total", sums[i])) for i in range(10)]


# -- Ctrl-C under cluster_main --------------------------------------------------------------

_CTRL_C_SCRIPT = """\
import signal
import sys
import time
from pathlib import Path

from millrace.dataflow import Dataflow
from millrace.execution import cluster_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import ManualOutputConfig
from millrace.runtime.exchange import Exchange

GATE = Path(sys.argv[1])
OUT = sys.argv[2]


def fail_then_open(self, reason, **how):
    # The gate opens once Ctrl-C has stopped the workers: opened before (in the handler), a
    # worker could pass it and take more items while the main thread waits for the GIL.
    FAIL(self, reason, **how)
    GATE.touch()


FAIL = Exchange.fail
Exchange.fail = fail_then_open


def hold(x):
    if not GATE.exists():
        sys.stdout.write("waiting\\n")  # one write: the threads' lines do not interleave
        sys.stdout.flush()
        while not GATE.exists():
            time.sleep(0.005)
    return x


def to_file(worker_index, worker_count):
    handle = open(f"{OUT}.{worker_index}", "a", buffering=1)
    return lambda item: handle.write(f"{item}\\n")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own Ctrl-C
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(1000)))
    flow.map(hold)
    flow.capture(ManualOutputConfig(to_file))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
"""


def test_ctrl_c_under_cluster_main_stops_the_workers_at_once(procs: Procs, tmp_path: Path):
    """Three worker threads each hold their first item until Ctrl-C (a real SIGINT, handled by
    Python's own handler in the main thread) has stopped them, when the gate opens: they finish
    the item in hand and stop, and none of the other items reaches the output."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_SCRIPT)
    out = tmp_path / "out"
    proc = procs.start(str(script), str(tmp_path / "gate"), str(out))
    for _ in range(3):  # each worker holds its first item
        line = proc.stdout.readline()
        assert line == "waiting\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    written = sorted(int(line) for path in tmp_path.glob("out.*") for line in path.read_text().split())
    # The item each worker held, and nothing after it.
    assert written == [0, 1, 2], written


_CTRL_C_AT_START_SCRIPT = """\
import sys
import threading
import time
from pathlib import Path

from millrace.dataflow import Dataflow
from millrace.execution import cluster_main
from millrace.inputs import TestingInputConfig
from millrace.outputs import ManualOutputConfig

GATE = Path(sys.argv[1])
OUT = sys.argv[2]
HOLDING = []


def hold(x):
    if not GATE.exists():
        HOLDING.append(x)
        while not GATE.exists():
            time.sleep(0.005)
    return x


def to_file(worker_index, worker_count):
    handle = open(f"{OUT}.{worker_index}", "a", buffering=1)
    return lambda item: handle.write(f"{item}\\n")


start = threading.Thread.start


def start_or_ctrl_c(self):
    # Ctrl-C lands while the main thread starts the third worker: the first two hold an item.
    if self.name.startswith("millrace-worker-2"):
        while len(HOLDING) < 2:
            time.sleep(0.005)
        threading.Timer(0.2, GATE.touch).start()  # the two finish their item once stopped
        raise KeyboardInterrupt
    start(self)


if __name__ == "__main__":
    threading.Thread.start = start_or_ctrl_c
    flow = Dataflow()
    flow.input("inp", TestingInputConfig(range(1000)))
    flow.map(hold)
    flow.capture(ManualOutputConfig(to_file))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
"""


def test_ctrl_c_while_the_workers_start_stops_those_already_running(procs: Procs, tmp_path: Path):
    """A Ctrl-C in the middle of starting the worker threads stops the cluster like any other:
    the workers already running finish the item in hand and nothing more (it used to end the
    process under them, their items lost), the one not started never runs."""
    script = tmp_path / "ctrl_c_at_start.py"
    script.write_text(_CTRL_C_AT_START_SCRIPT)
    proc = procs.start(str(script), str(tmp_path / "gate"), str(tmp_path / "out"))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert "still inside user code" not in stderr, stderr
    written = sorted(int(line) for path in tmp_path.glob("out.*") for line in path.read_text().split())
    assert written == [0, 1], written


# -- help() shows examples ----------------------------------------------------------------


def _documented():
    from millrace.dataflow import Dataflow
    from millrace.execution import TestingEpochConfig
    from millrace.testing import doctest_ctx, test_print
    from millrace.window import SystemClockConfig

    return {
        "Dataflow.input": Dataflow.input,
        "TestingEpochConfig": TestingEpochConfig,
        "SystemClockConfig": SystemClockConfig,
        "test_print": test_print,
        "doctest_ctx": doctest_ctx,
    }


@pytest.mark.parametrize("name", sorted(_documented()))
def test_help_shows_an_example_that_runs(name):
    """What ``help()`` prints holds an example, and that example passes (the suite also runs
    every docstring of millrace with --doctest-modules)."""
    import doctest
    import pydoc

    obj = _documented()[name]
    shown = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    assert ">>> " in shown, shown
    # help() of an instance (doctest_ctx) shows its class's docstring.
    documented = obj if callable(obj) else type(obj)
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(documented, name) if t.examples]
    assert tests, f"{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        result = runner.run(test)
        assert result.failed == 0 and result.attempted > 0, name


# -- the README -----------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    text = README.read_text()
    tour = text[text.index("## A short tour") :]
    return tour[tour.index("```python\n") + len("```python\n") : tour.index("```\n", tour.index("```python"))]


@pytest.mark.parametrize("entry", ["run_main", "spawn_cluster"])
def test_the_readme_tour_runs_as_written(procs: Procs, tmp_path: Path, entry):
    """Its code, saved as a file and run, with either of its two entry points in use."""
    code = _tour()
    if entry == "spawn_cluster":
        lines = code.splitlines()
        run = next(i for i, line in enumerate(lines) if line.strip().startswith("run_main(flow)"))
        spawn = next(i for i, line in enumerate(lines) if line.strip().startswith("# spawn_cluster("))
        lines[run] = lines[run].replace("run_main(flow)", "# run_main(flow)", 1)
        lines[spawn] = lines[spawn].replace("# spawn_cluster(", "spawn_cluster(", 1)
        code = "\n".join(lines) + "\n"
    script = tmp_path / "tour.py"
    script.write_text(code)
    proc = procs.start(str(script))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert sorted(stdout.splitlines()) == sorted(["('the', 2)", "('cat', 1)", "('saw', 1)", "('dog', 1)"]), stdout


def test_the_readme_links_only_to_files_of_the_repository():
    root = README.parent
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" in target:
            continue
        path = (root / target).resolve()
        assert path.is_relative_to(root) and path.exists(), target
    assert "shared/reference" not in README.read_text()
