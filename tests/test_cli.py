"""The console scripts as a user runs them: ``millrace`` (run, visualize, manifest) and ``millrace-worker``
outside a pod. Every test runs the real script installed in the venv, in a subprocess."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from .operator_tests.crd_validation import errors as crd_errors

pytestmark = pytest.mark.timeout(120)

BIN = Path(sys.executable).parent
MILLRACE = str(BIN / "millrace")
WORKER = str(BIN / "millrace-worker")

WORDS = """
from millrace.dataflow import Dataflow
from millrace.inputs import TestingInputConfig
from millrace.outputs import StdOutputConfig

def pair(word):
    return word, 1

flow = Dataflow()
flow.input("lines", TestingInputConfig(["a b", "b c", "a b"]))
flow.flat_map(str.split)
flow.map(pair)
flow.reduce("count", lambda total, one: total + one, lambda total: total == 2)
flow.capture(StdOutputConfig())

other = Dataflow()
other.input("one", TestingInputConfig(["only"]))
other.capture(StdOutputConfig())
not_a_flow = 42
"""

FAILING = """
from millrace.dataflow import Dataflow
from millrace.inputs import TestingInputConfig
from millrace.outputs import StdOutputConfig

def invert(x):
    return 1 / x

flow = Dataflow()
flow.input("inp", TestingInputConfig([2, 1, 0]))
flow.map(invert)
flow.capture(StdOutputConfig())
"""
FAILING_LINE = 7  # `return 1 / x`

# Every item a worker sees touches PIDS.<pid>, named by its process id: the test's sign that
# the flow runs, and where it finds the processes that must be gone after Ctrl-C.
ENDLESS = """
import itertools, os, time
from pathlib import Path
from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import ManualOutputConfig

def ticks(worker_index, worker_count, resume_state):
    for tick in itertools.count(resume_state or 0):
        time.sleep(0.005)
        yield tick + 1, tick

def output(worker_index, worker_count):
    path = Path(__file__).parent / f"PIDS.{os.getpid()}"
    def write(item):
        path.touch()
    return write

flow = Dataflow()
flow.input("ticks", ManualInputConfig(ticks))
flow.capture(ManualOutputConfig(output))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for name in list(env):
        if name.startswith("MILLRACE_"):
            del env[name]
    return env


def _run(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    (tmp_path / "words.py").write_text(textwrap.dedent(WORDS))
    (tmp_path / "failing.py").write_text(textwrap.dedent(FAILING))
    (tmp_path / "endless.py").write_text(textwrap.dedent(ENDLESS))
    (tmp_path / "shadow").mkdir()  # not beside the others: it would shadow the module in their runs
    (tmp_path / "shadow" / "queue.py").write_text(textwrap.dedent(WORDS))
    (tmp_path / "import_fails.py").write_text("import no_such_dependency_of_the_flow\n")
    (tmp_path / "other.py").write_text("from words import other\n")
    (tmp_path / "not_a_flow.py").write_text("flow = 42\n")
    (tmp_path / "latin1.py").write_bytes(
        "# -*- coding: latin-1 -*-\nfrom words import flow  # café\n".encode("latin-1")
    )
    return tmp_path


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["visualize"], ["manifest"]])
def test_every_command_has_help(flows: Path, command: list[str]) -> None:
    result = _run(MILLRACE, *command, "--help", cwd=flows)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: millrace {' '.join(command)}".rstrip())
    if command == ["manifest"]:
        assert "kubectl apply -f -" in result.stdout and "--recovery SIZE" in result.stdout
    elif command:
        assert "FILE_OR_MODULE[:ATTR]" in result.stdout


# -- visualize ------------------------------------------------------------------------------

WORDS_GRAPH = """\
flowchart TD
    step0[/"input 'lines'<br>TestingInputConfig"/]
    step1["flat_map<br>str.split"]
    step2["map<br>pair"]
    step3[("reduce 'count'")]
    step4[\\"capture<br>StdOutputConfig"/]
    step0 --> step1
    step1 --> step2
    step2 ==>|by key| step3
    step3 --> step4
"""


def test_visualize_prints_the_graph_of_a_file(flows: Path) -> None:
    result = _run(MILLRACE, "visualize", "words.py", cwd=flows)
    assert result.returncode == 0, result.stderr
    assert result.stdout == WORDS_GRAPH
    # The same from the module's own entry point, as `python -m bytewax.visualize`.
    module = _run(sys.executable, "-m", "millrace.visualize", str(flows / "words.py"), cwd=flows.parent)
    assert (module.returncode, module.stdout) == (0, WORDS_GRAPH), module.stderr
    missing = _run(sys.executable, "-m", "millrace.visualize", "words.py:nothing", cwd=flows)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == ["python -m millrace.visualize: error: words.py has no attribute 'nothing'"]


def test_visualize_finds_a_module_and_attribute(flows: Path) -> None:
    result = _run(MILLRACE, "visualize", "words:other", cwd=flows)
    assert result.returncode == 0, result.stderr
    assert "input 'one'" in result.stdout
    assert "reduce" not in result.stdout


# -- run ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [[], ["-w", "2"], ["-p", "2"], ["-p", "2", "-w", "2"]])
def test_run_runs_the_flow(flows: Path, layout: list[str]) -> None:
    result = _run(MILLRACE, "run", "words.py", *layout, cwd=flows)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["('a', 2)", "('b', 2)"]
    # stderr is no terminal here: no progress line.
    assert "items/s" not in result.stderr


def test_run_a_module_attribute_with_recovery(flows: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    result = _run(MILLRACE, "run", "words:other", "--recovery-dir", str(store), "--epoch-seconds", "0.5", cwd=flows)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["only"]
    assert any(store.iterdir()), "the run kept no recovery snapshot"


# -- manifest -------------------------------------------------------------------------------


def test_manifest_prints_a_dataflow_the_api_server_accepts(flows: Path) -> None:
    args = ["words.py", "--name", "words", "-p", "3", "-w", "2", "--recovery", "256Mi", "--image", "flows:1"]
    result = _run(MILLRACE, "manifest", *args, cwd=flows)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = yaml.safe_load(result.stdout)
    assert crd_errors(document) == []
    assert document == {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": "words"},
        "spec": {
            "image": "flows:1",
            "processes": 3,
            "workersPerProcess": 2,
            "recovery": {"enabled": True, "volumeSize": "256Mi"},
            "flow": {"code": (flows / "words.py").read_text()},
        },
    }


def test_manifest_imports_the_file_without_running_the_flow(flows: Path) -> None:
    result = _run(MILLRACE, "manifest", "endless.py", "--name", "endless", cwd=flows)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["spec"] == {
        "processes": 1,
        "workersPerProcess": 1,
        "flow": {"code": (flows / "endless.py").read_text()},
    }
    assert not list(flows.glob("PIDS.*")), "the flow ran"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "nowhere.py"], 2, "no such file: nowhere.py"),
        (["run", "no_such_module_anywhere"], 2, "no module named 'no_such_module_anywhere'"),
        (["run", "words.py:missing"], 2, "words.py has no attribute 'missing'"),
        (["run", "words:not_a_flow"], 2, "words:not_a_flow is a int, not a Dataflow"),
        (["visualize", "words.py:not_a_flow"], 2, "words.py:not_a_flow is a int, not a Dataflow"),
        (["visualize", "nowhere.py"], 2, "no such file: nowhere.py"),
        (["visualize", "./"], 2, ". is not a file"),
        (["visualize", "shadow/queue.py"], 2, "queue.py would import as 'queue', a module of the standard library"),
        (["visualize", "words.py:"], 2, "'' in 'words.py:' is not an attribute name"),
        (["visualize", ":flow"], 2, "no file or module before ':' in ':flow'"),
        (["run", "words.py", "-p", "0"], 2, "'-p' / '--processes': 0 is not in the range x>=1"),
        (["run", "words.py", "-w", "two"], 2, "'-w' / '--workers': 'two' is not a valid integer range"),
        (["run", "words.py", "--epoch-seconds", "0"], 2, "'--epoch-seconds': 0.0 is not in the range x>0"),
        (["run", "words.py", "--recovery-dir", "words.py"], 2, "'--recovery-dir': Directory 'words.py' is a file"),
        (["run", "words.py", "--recovery-dir", "no-dir"], 2, "'--recovery-dir': Directory 'no-dir' does not exist"),
        (["run"], 2, "Missing argument 'FILE_OR_MODULE[:ATTR]'"),
        (["manifest", "nowhere.py", "--name", "w"], 2, "'FILE': File 'nowhere.py' does not exist"),
        (["manifest", "shadow", "--name", "w"], 2, "'FILE': File 'shadow' is a directory"),
        (["manifest", "words.py"], 2, "Missing option '--name'"),
        (["manifest", "import_fails.py", "--name", "Words"], 2, "'--name': 'Words' is not a valid name"),
        (["manifest", "words.py", "--name", "w_1"], 2, "lowercase letters, digits and '-', starting with a letter"),
        (["manifest", "words.py", "--name", "w" * 62], 2, "'--name': 'www...w' is too long"),
        (["manifest", "words.py", "--name", "w", "-p", "1001"], 2, "'-p' / '--processes': 1001 is not in the range"),
        (["manifest", "words.py", "--name", "w", "-w", "0"], 2, "'-w' / '--workers': 0 is not in the range 1<=x<=256"),
        (["manifest", "words.py", "--name", "w", "--recovery", "1GB"], 2, "'--recovery': '1GB' is not a volume size"),
        (["manifest", "failing.py", "--name", "w", "--image", ""], 2, "the image name is empty"),
        (["manifest", "other.py", "--name", "w"], 2, "other.py has no attribute 'flow'"),
        (["manifest", "not_a_flow.py", "--name", "w"], 2, "not_a_flow.py:flow is a int, not a Dataflow"),
        (["manifest", "latin1.py", "--name", "w"], 2, "latin1.py is not UTF-8 text"),
        (["launch"], 2, "No such command 'launch'"),
    ],
)
def test_bad_input_is_one_line(flows: Path, args: list[str], code: int, message: str) -> None:
    result = _run(MILLRACE, *args, cwd=flows)
    assert result.returncode == code, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("millrace: error: ") and message in line
    assert result.stdout == ""


@pytest.mark.parametrize("layout", [[], ["-p", "2"]])
def test_an_error_of_the_flow_shows_its_traceback(flows: Path, layout: list[str]) -> None:
    result = _run(MILLRACE, "run", "failing.py", *layout, cwd=flows)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert f'File "{flows / "failing.py"}", line {FAILING_LINE}, in invert' in result.stderr
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "map #1 (invert)" in result.stderr  # the step, as the runtime's note names it
    # Our own frames (the command, click) are left out: the traceback starts at the entry point.
    assert "click" not in result.stderr and "cli/__init__.py" not in result.stderr


def test_a_flow_failing_to_import_shows_its_traceback(flows: Path) -> None:
    result = _run(MILLRACE, "run", "import_fails.py", cwd=flows)
    assert result.returncode == 1
    assert f'File "{flows / "import_fails.py"}", line 1' in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'no_such_dependency_of_the_flow'"
    )


def test_millrace_worker_outside_a_pod_says_what_to_use(tmp_path: Path) -> None:
    result = _run(WORKER, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("millrace-worker: error: MILLRACE_SERVICE is not set; millrace-worker is the entrypoint")
    assert "millrace run FILE_OR_MODULE[:ATTR]" in line


# -- Ctrl-C and the progress line ----------------------------------------------------------


def _wait_for(predicate, what: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"millrace run exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize(
    ("layout", "group"),
    [([], False), (["-w", "2"], False), (["-p", "2"], False), (["-p", "2"], True)],
    ids=["one-worker", "threads", "processes", "processes-terminal-group"],
)
def test_ctrl_c_stops_an_endless_flow(flows: Path, layout: list[str], group: bool) -> None:
    """SIGINT to the command (``group``: to its process group, as a terminal's Ctrl-C does)
    stops every process of the run, with one line and exit code 130."""
    proc = subprocess.Popen(
        [MILLRACE, "run", "endless.py", *layout, "--epoch-seconds", "0.2"],
        cwd=flows,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        expected = 2 if "-p" in layout else 1
        _wait_for(lambda: len(list(flows.glob("PIDS.*"))) >= expected, "items flowing", proc)
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = stderr.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1] == "millrace: stopped (Ctrl-C)"
    pids = [int(path.suffix[1:]) for path in flows.glob("PIDS.*")]
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), f"processes of the run still alive: {pids}"


def test_progress_line_on_a_terminal(flows: Path) -> None:
    """With stderr on a terminal (a pseudo-terminal here), a line shows items, rate and epoch."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [MILLRACE, "run", "endless.py", "-p", "2", "--epoch-seconds", "0.2"],
        cwd=flows,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        # A line with items counted, a rate and an epoch reached: both processes report.
        while b" items/s, epoch " not in seen.split(b"\r")[-1] or b"epoch -" in seen.split(b"\r")[-1]:
            assert proc.poll() is None, seen.decode(errors="replace")
            assert time.monotonic() < deadline, f"no progress line: {seen!r}"
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                seen += os.read(leader, 4096)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        try:
            while select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)
        except OSError:  # the terminal's other side closed
            pass
    finally:
        os.close(leader)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    text = seen.decode()
    assert "millrace: " in text and " items in, " in text
    # The line is cleared before the last word, which stands on its own.
    assert text.rstrip().endswith("\r\x1b[Kmillrace: stopped (Ctrl-C)")


# -- the README ---------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(text: str, after: str, fence: str) -> str:
    start = text.index(fence, text.index(after)) + len(fence)
    return text[start : text.index("```\n", start)]


def test_the_readme_shows_the_tour_as_the_command_runs_and_draws_it(tmp_path: Path) -> None:
    text = README.read_text()
    (tmp_path / "tour.py").write_text(_block(text, "## A short tour", "```python\n"))
    ran = _run(MILLRACE, "run", "tour.py", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    # The tour's own quick start, and the command's section.
    for section in ("## A short tour", "## The `millrace` command"):
        shown = _block(text, section, "```console\n").splitlines()
        assert shown[0] == "$ millrace run tour.py                  # one worker: run_main"
        assert ran.stdout.splitlines() == shown[1:5]
    listed = _block(text, "## The `millrace` command", "```console\n")
    manifest_line = next(line for line in listed.splitlines() if line.startswith("$ millrace manifest "))
    args = manifest_line.removeprefix("$ millrace ").split(" | ")[0].split()
    printed = _run(MILLRACE, *args, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert crd_errors(yaml.safe_load(printed.stdout)) == []
    drawn = _run(MILLRACE, "visualize", "tour.py", cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout == _block(text, "## The `millrace` command", "```mermaid\n")
