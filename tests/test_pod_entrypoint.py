"""The worker pod entrypoint's reading of its environment, and its reports to the operator."""

from __future__ import annotations

import pytest

from millrace import pod, readiness

ENV = {
    "MILLRACE_SERVICE": "wc",
    "MILLRACE_NAMESPACE": "jobs",
    "MILLRACE_PROCESSES": "3",
    "MILLRACE_PORT": "2101",
    "MILLRACE_FLOW": "flows:flow",
}


def test_proc_id_from_the_label_then_the_pod_name_then_the_hostname():
    assert pod.settings_from({**ENV, "MILLRACE_POD_INDEX": "2"}, "x").proc_id == 2
    assert pod.settings_from({**ENV, "MILLRACE_POD_INDEX": "", "MILLRACE_POD_NAME": "wc-1"}, "x").proc_id == 1
    assert pod.settings_from(ENV, "wc-0").proc_id == 0
    with pytest.raises(pod.PodConfigError, match="cannot tell this pod's process id"):
        pod.settings_from(ENV, "somehost")
    with pytest.raises(pod.PodConfigError, match=r"outside 0\.\.2"):
        pod.settings_from(ENV, "wc-7")


def test_addresses_come_from_the_headless_service():
    settings = pod.settings_from(ENV, "wc-0")
    assert settings.addresses == [f"wc-{i}.wc.jobs.svc.cluster.local:2101" for i in range(3)]


def test_missing_or_bad_variables_are_named():
    with pytest.raises(pod.PodConfigError, match="MILLRACE_NAMESPACE is not set"):
        pod.settings_from({k: v for k, v in ENV.items() if k != "MILLRACE_NAMESPACE"}, "wc-0")
    with pytest.raises(pod.PodConfigError, match="MILLRACE_PROCESSES must be an integer"):
        pod.settings_from({**ENV, "MILLRACE_PROCESSES": "three"}, "wc-0")
    with pytest.raises(pod.PodConfigError, match="exactly one of MILLRACE_FLOW"):
        pod.settings_from({**ENV, "MILLRACE_FLOW_FILE": "/x.py"}, "wc-0")


def test_unresolvable_peer_names_are_a_clear_error_after_the_timeout():
    with pytest.raises(pod.PodConfigError, match=r"did not resolve within 0\.5 s: nowhere-0\.invalid"):
        pod.wait_for_names(["localhost:1", "nowhere-0.invalid:2101"], 0.5)


def test_a_flow_that_cannot_load_is_reported_to_the_operator(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    for name, value in {
        **ENV,
        "MILLRACE_FLOW": "no_such_module_here:flow",
        "MILLRACE_POD_INDEX": "0",
        "MILLRACE_TERMINATION_LOG": str(log),
    }.items():
        monkeypatch.setenv(name, value)
    assert pod.main([]) == 1
    assert log.read_text().startswith("millrace: failed: ModuleNotFoundError: No module named 'no_such_module_here'")


STEPS_FLOW = """
from millrace.dataflow import Dataflow
from millrace.inputs import TestingInputConfig
from millrace.outputs import StdOutputConfig

flow = Dataflow()
flow.input("lines", TestingInputConfig(["a b"]))
flow.flat_map(str.split)
flow.map(lambda word: (word, 1))
flow.reduce("count", lambda a, b: a + b, lambda total: total > 9)
flow.capture(StdOutputConfig())
"""


def test_step_ids_name_every_step_as_the_metrics_step_id_label_does(tmp_path):
    flow_file = tmp_path / "flow.py"
    flow_file.write_text(STEPS_FLOW)
    flow = pod.load_flow(None, flow_file)
    assert pod.step_ids(flow) == ["lines", "flat_map#1", "map#2", "count", "capture#4"]


def test_a_file_without_a_flow_is_named(tmp_path):
    flow_file = tmp_path / "flow.py"
    flow_file.write_text("x = 1\n")
    with pytest.raises(pod.PodConfigError, match="does not define a Dataflow named 'flow'"):
        pod.load_flow(None, flow_file)


ENDLESS_FLOW = """
import itertools, time
from millrace.dataflow import Dataflow
from millrace.inputs import ManualInputConfig
from millrace.outputs import StdOutputConfig

def ticks(worker_index, worker_count, resume_state):
    for tick in itertools.count(resume_state or 0):
        time.sleep(0.01)
        yield tick + 1, tick

flow = Dataflow()
flow.input("ticks", ManualInputConfig(ticks))
flow.capture(StdOutputConfig())
"""


def _probe(port: int) -> int | None:
    """What the kubelet's readiness probe gets: the status of GET /ready (None: no answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return refused.code
    except OSError:
        return None


@pytest.mark.timeout(120)
def test_sigterm_stops_the_pod_promptly_and_says_so(tmp_path, procs):
    """What the kubelet does on a pod deletion: SIGTERM to PID 1. The worker stops at once
    (no 30 s grace period spent computing), reports it, and is no longer ready."""
    import json
    import signal
    import socket
    import time
    import urllib.request

    flow_file = tmp_path / "flow.py"
    flow_file.write_text(ENDLESS_FLOW)
    state = tmp_path / "state"
    log = tmp_path / "termination-log"
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        health_port = spare.getsockname()[1]
    env = {
        **ENV,
        "MILLRACE_PROCESSES": "1",
        "MILLRACE_POD_INDEX": "0",
        "MILLRACE_FLOW": "",
        "MILLRACE_FLOW_FILE": str(flow_file),
        "MILLRACE_STATE_DIR": str(state),
        "MILLRACE_EPOCH_SECONDS": "0.2",
        "MILLRACE_RECOVERY_DIR": str(tmp_path),
        "MILLRACE_TERMINATION_LOG": str(log),
        "MILLRACE_HEALTH_PORT": str(health_port),
    }
    proc = procs.start("-m", "millrace.pod", env=env)
    deadline = time.monotonic() + 60
    while _probe(health_port) != 200:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    assert (state / readiness.READY_FILE).exists()
    # The operator asks the same port for the flow's steps (status.steps).
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/steps", timeout=5) as answer:
        assert json.load(answer) == ["ticks", "capture#1"]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert log.read_text() == "millrace: stopped: SIGTERM"
    assert not (state / readiness.READY_FILE).exists()
    assert _probe(health_port) is None
    assert "stopped (SIGTERM)" in stderr


@pytest.mark.timeout(120)
def test_a_pod_serves_its_metrics_on_the_port_it_is_given(tmp_path, procs):
    """With MILLRACE_METRICS_PORT (the operator sets 9102), /metrics answers while the flow runs:
    the input's items, completed epochs and their snapshots; once the pod stops, nothing does."""
    import signal
    import time
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from millrace.transport.addresses import free_ports

    flow_file = tmp_path / "flow.py"
    flow_file.write_text(ENDLESS_FLOW)
    (metrics_port,) = free_ports(1)
    env = {
        **ENV,
        "MILLRACE_PROCESSES": "1",
        "MILLRACE_POD_INDEX": "0",
        "MILLRACE_FLOW": "",
        "MILLRACE_FLOW_FILE": str(flow_file),
        "MILLRACE_STATE_DIR": str(tmp_path / "state"),
        "MILLRACE_EPOCH_SECONDS": "0.2",
        "MILLRACE_RECOVERY_DIR": str(tmp_path),
        "MILLRACE_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "MILLRACE_METRICS_PORT": str(metrics_port),
    }
    proc = procs.start("-m", "millrace.pod", env=env)

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {
            f"{sample.name}{sorted(sample.labels.items())}": sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    read = "millrace_step_items_in_total[('step_id', 'ticks'), ('worker', '0')]"
    snapshots = "millrace_snapshot_duration_seconds_count[('worker', '0')]"
    while True:  # the test's timeout bounds the wait
        assert proc.poll() is None, proc.communicate()
        try:
            samples = scrape()
        except OSError:  # not serving yet
            samples = {}
        if samples.get(read, 0) > 0 and samples.get(snapshots, 0) >= 1:
            break
        time.sleep(0.1)
    assert samples["millrace_worker_epochs_completed_total[('worker', '0')]"] >= 1
    assert samples["process_cpu_seconds_total[]"] > 0
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 143
    with pytest.raises(OSError):
        scrape()
