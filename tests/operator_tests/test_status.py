"""The status state machine, driven by scripted pods."""

from __future__ import annotations

import copy

from millrace_operator import manifests, status
from millrace_operator.spec import parse_spec

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def dataflow(**spec) -> dict:
    return {
        "metadata": {"name": "df", "namespace": "ns", "uid": "u", "generation": 3},
        "spec": {"processes": 2, "flow": {"module": "a:b"}, **spec},
    }


def pod(df: dict, index: int, *, ready=False, terminated=None, last=None, waiting=None, restarts=0, hash_=None) -> dict:
    container = {"name": "worker", "restartCount": restarts, "state": {}, "lastState": {}}
    if terminated:
        container["state"]["terminated"] = {"exitCode": terminated[0], "message": terminated[1]}
    if last:
        container["lastState"]["terminated"] = {"exitCode": last[0], "message": last[1]}
    if waiting:
        container["state"]["waiting"] = {"reason": waiting}
    return {
        "metadata": {
            "name": f"df-{index}",
            "annotations": {manifests.TEMPLATE_HASH: hash_ or manifests.template_hash(parse_spec(df["spec"]))},
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [container],
        },
    }


def conditions(st: dict) -> dict:
    return {c["type"]: c["status"] for c in st["conditions"]}


def test_pending_until_every_process_is_ready():
    df = dataflow()
    st = status.compute_status(df, [pod(df, 0, ready=True)], NOW)
    assert st["phase"] == "Pending" and st["readyProcesses"] == 1
    assert st["observedGeneration"] == 3 and st["startTime"] == NOW
    assert conditions(st) == {"Ready": "False", "Completed": "False", "Failed": "False"}


def test_running_when_every_process_is_ready():
    df = dataflow()
    st = status.compute_status(df, [pod(df, 0, ready=True), pod(df, 1, ready=True)], NOW)
    assert st["phase"] == "Running" and conditions(st)["Ready"] == "True"
    assert st["readyProcesses"] == 2 and "desiredReplicas" not in st


def test_pods_of_an_old_template_do_not_count():
    df = dataflow()
    pods = [pod(df, 0, ready=True), pod(df, 1, ready=True, hash_="old")]
    assert status.compute_status(df, pods, NOW)["phase"] == "Pending"


def test_succeeded_when_every_process_completed_and_then_terminal():
    df = dataflow()
    done = [pod(df, i, terminated=(0, "millrace: completed")) for i in range(2)]
    st = status.compute_status(df, done, NOW)
    assert st["phase"] == "Succeeded" and st["completionTime"] == NOW
    assert conditions(st)["Completed"] == "True" and st["readyProcesses"] == 0
    # A no-op edit, pods gone: still Succeeded, same times, not run again.
    edited = copy.deepcopy(df)
    edited["status"] = st
    edited["metadata"]["generation"] = 4
    again = status.compute_status(edited, [], LATER)
    assert again["phase"] == "Succeeded" and again["completionTime"] == NOW
    assert again["templateHash"] == st["templateHash"]


def test_a_template_change_runs_a_finished_flow_again():
    df = dataflow()
    df["status"] = status.compute_status(df, [pod(df, i, terminated=(0, "millrace: completed")) for i in range(2)], NOW)
    df["spec"]["restartNonce"] = "again"
    st = status.compute_status(df, [], LATER)
    assert st["phase"] == "Pending" and st["templateHash"] != df["status"]["templateHash"]
    assert conditions(st) == {"Ready": "False", "Completed": "False", "Failed": "False"}


def test_a_flow_that_cannot_load_fails_with_the_import_error():
    df = dataflow()
    message = "millrace: failed: ModuleNotFoundError: No module named 'flows'"
    st = status.compute_status(df, [pod(df, 0, last=(1, message), waiting="CrashLoopBackOff", restarts=1)], NOW)
    assert st["phase"] == "Failed"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "FlowFailed"
    assert "No module named 'flows'" in failed["message"]


def test_a_lost_peer_is_not_a_failure_but_a_crash_loop_is():
    df = dataflow()
    lost = "millrace: failed: ClusterError: lost process 1"
    st = status.compute_status(df, [pod(df, 0, last=(1, lost), restarts=1)], NOW)
    assert st["phase"] == "Pending"
    boom = "millrace: failed: ZeroDivisionError: division by zero"
    st = status.compute_status(df, [pod(df, 0, last=(1, boom), waiting="CrashLoopBackOff", restarts=3)], NOW)
    assert st["phase"] == "Failed"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "CrashLoop" and "ZeroDivisionError" in failed["message"]


def test_a_failed_run_keeps_its_reason_on_every_later_reconcile():
    df = dataflow()
    boom = "millrace: failed: ZeroDivisionError: division by zero"
    df["status"] = status.compute_status(df, [pod(df, 0, last=(1, boom), waiting="CrashLoopBackOff", restarts=3)], NOW)
    again = status.compute_status(df, [], "2026-01-01T00:05:00Z")  # the pods are gone
    failed = next(c for c in again["conditions"] if c["type"] == "Failed")
    assert again["phase"] == "Failed" and failed["reason"] == "CrashLoop"
    assert "ZeroDivisionError" in failed["message"] and failed["lastTransitionTime"] == NOW


def test_suspended_whatever_the_pods_say():
    df = dataflow(suspend=True)
    st = status.compute_status(df, [], NOW)
    assert st["phase"] == "Suspended" and st["readyProcesses"] == 0
    st = status.compute_status(df, [pod(df, i, ready=True) for i in range(2)], NOW)
    assert st["phase"] == "Suspended" and st["message"] == "spec.suspend is true"


def test_transition_times_move_only_on_change():
    df = dataflow()
    first = status.compute_status(df, [], NOW)
    df["status"] = first
    second = status.compute_status(df, [], LATER)
    assert [c["lastTransitionTime"] for c in second["conditions"]] == [NOW] * 3
    df["status"] = second
    running = status.compute_status(df, [pod(df, i, ready=True) for i in range(2)], LATER)
    ready = next(c for c in running["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == LATER


def test_the_step_ids_a_pod_of_the_current_template_said_are_written():
    df = dataflow()
    current = manifests.template_hash(parse_spec(df["spec"]))
    st = status.compute_status(df, [pod(df, 0)], NOW)
    assert "steps" not in st  # not known yet: no key, nothing written
    st = status.compute_status(df, [pod(df, 0, ready=True), pod(df, 1, ready=True)], NOW, (current, ["lines", "count"]))
    assert st["phase"] == "Running" and st["steps"] == ["lines", "count"]
    # Steps said by a pod of another template are not this flow's.
    assert "steps" not in status.compute_status(df, [], NOW, ("another", ["x"]))


def test_the_step_ids_stay_while_the_template_does_and_go_when_it_changes():
    df = dataflow()
    current = manifests.template_hash(parse_spec(df["spec"]))
    df["status"] = status.compute_status(df, [pod(df, 0)], NOW, (current, ["lines"]))
    # Suspended: no pods, the same template: the steps stay.
    suspended = {**dataflow(suspend=True), "status": df["status"]}
    st = status.compute_status(suspended, [], LATER)
    assert st["phase"] == "Suspended" and st["steps"] == ["lines"]
    # Another image is another pod template, maybe another flow: the old steps are removed (null).
    changed = {**dataflow(image="other:1"), "status": df["status"]}
    assert status.compute_status(changed, [], LATER, (current, ["lines"]))["steps"] is None
    # And once removed, nothing more is written about them.
    changed["status"] = {**df["status"], **status.compute_status(changed, [], LATER)}
    assert "steps" not in status.compute_status(changed, [], LATER)
