"""A Dataflow's status from what its pods say: a pure state machine, no API calls.

Phases: ``Pending`` (pods not all ready), ``Running`` (every process ready), ``Succeeded``
(every process reported completion), ``Failed`` (the flow cannot load, or a pod crash-loops),
``Suspended``. Succeeded and Failed are terminal for the current pod template: an edit that
does not change the template (see :func:`millrace_operator.manifests.template_hash`) keeps
them, so a finished flow is not run again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .manifests import TEMPLATE_HASH, made_for, template_hash, template_hash_of
from .spec import DataflowSpec, parse_spec

COMPLETED = "millrace: completed"
FAILED = "millrace: failed: "
# Termination messages that no restart can cure: the flow itself cannot be loaded.
_LOAD_ERRORS = ("ImportError", "ModuleNotFoundError", "SyntaxError", "PodConfigError", "NameError")
CRASH_LOOP_RESTARTS = 3
TERMINAL = ("Succeeded", "Failed")


def _terminations(pod: dict[str, Any]) -> Iterable[tuple[int, str]]:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        for state_key in ("state", "lastState"):
            terminated = (container.get(state_key) or {}).get("terminated")
            if terminated:
                yield int(terminated.get("exitCode", 0)), terminated.get("message") or ""


def _crash_looping(pod: dict[str, Any]) -> str | None:
    """The last termination message of a container that keeps crashing, if any."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff" and container.get("restartCount", 0) >= CRASH_LOOP_RESTARTS:
            last = (container.get("lastState") or {}).get("terminated") or {}
            return last.get("message") or waiting.get("message") or "the worker keeps crashing"
    return None


def _ready(pod: dict[str, Any]) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            status: object = condition.get("status")
            return status == "True"
    return False


def _condition(
    previous: list[dict[str, Any]], kind: str, value: bool, reason: str, message: str, generation: int | None, now: str
) -> dict[str, Any]:
    status = "True" if value else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    changed = old is None or old.get("status") != status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def _as_it_ended(previous: dict[str, Any], spec: DataflowSpec, current: str, made: list[dict[str, Any]]) -> bool:
    """Whether the flow finished (``previous`` says so) with the spec it has now: the same
    template hash; or, the operator's default image having moved since, that of the pods or
    Jobs ``made`` for it (see :func:`.manifests.made_for`; the Jobs stay when the completed
    pods are gone)."""
    if previous.get("phase") not in TERMINAL:
        return False
    recorded = previous.get("templateHash")
    if recorded == current:
        return True
    return any(template_hash_of(obj) == recorded and made_for(spec, obj) for obj in made)


def compute_status(
    df: dict[str, Any],
    pods: list[dict[str, Any]],
    now: str,
    steps: tuple[str, list[str]] | None = None,
    jobs: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The ``.status`` a Dataflow should have, given its pods and Jobs (of any template) and
    the flow's steps as a pod of the template ``steps[0]`` said them, if one did."""
    spec = parse_spec(df.get("spec"))
    previous = df.get("status") or {}
    generation = (df.get("metadata") or {}).get("generation")
    current = template_hash(spec)
    mine = [p for p in pods if ((p.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH) == current]
    ready = sum(1 for p in mine if _ready(p))
    phase, reason, message = "Pending", "Starting", f"{ready} of {spec.processes} processes ready"

    if _as_it_ended(previous, spec, current, [*pods, *jobs]):
        # A finished run stays as it ended: phase, message and the reason of its condition.
        phase, message = previous["phase"], previous.get("message", "")
        kind = "Failed" if phase == "Failed" else "Completed"
        reason = (
            next(
                (
                    c.get("reason")
                    for c in previous.get("conditions") or []
                    if c.get("type") == kind and c.get("status") == "True"
                ),
                None,
            )
            or "Finished"
        )
    elif spec.suspend:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend is true"
    else:
        done = 0
        for pod in mine:
            terminations = list(_terminations(pod))
            if any(code == 0 and text.startswith(COMPLETED) for code, text in terminations):
                done += 1
            for code, text in terminations:
                if code != 0 and text.startswith(FAILED) and any(e in text for e in _LOAD_ERRORS):
                    phase, reason, message = "Failed", "FlowFailed", text[len(FAILED) :]
            if phase != "Failed" and (looping := _crash_looping(pod)) is not None:
                name = (pod.get("metadata") or {}).get("name", "a pod")
                phase, reason, message = "Failed", "CrashLoop", f"{name}: {looping}"
        if phase != "Failed":
            if done == spec.processes:
                phase, reason, message = "Succeeded", "Completed", "every process completed the flow"
            elif ready == spec.processes:
                phase, reason, message = "Running", "AllReady", f"{ready} of {spec.processes} processes ready"

    conditions = previous.get("conditions") or []
    status: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "readyProcesses": ready if phase in ("Pending", "Running") else 0,
        "templateHash": current,
        "conditions": [
            _condition(conditions, "Ready", phase == "Running", reason, message, generation, now),
            _condition(conditions, "Completed", phase == "Succeeded", reason, message, generation, now),
            _condition(conditions, "Failed", phase == "Failed", reason, message, generation, now),
        ],
    }
    # What the flow does, for `kubectl describe df`: kept while the pod template is the same
    # (a suspended flow has no pods to say it), dropped (a merge patch's null) when it changed.
    known = steps[1] if steps is not None and steps[0] == current else None
    if known is None and previous.get("templateHash") == current:
        known = previous.get("steps")
    if known is not None:
        status["steps"] = known
    elif previous.get("steps") is not None:
        status["steps"] = None
    if phase in ("Pending", "Running", *TERMINAL):
        status["startTime"] = previous.get("startTime") or now
    if phase in TERMINAL:
        status["completionTime"] = previous.get("completionTime") or now
    return status


def volume_size_condition(df: dict[str, Any], problem: tuple[str, str] | None, now: str) -> dict[str, Any]:
    """The ``VolumeSize`` condition of a Dataflow with recovery volumes: whether every claim
    has ``recovery.volumeSize``; ``problem`` is ``(reason, message)`` when not."""
    previous = (df.get("status") or {}).get("conditions") or []
    generation = (df.get("metadata") or {}).get("generation")
    if problem is None:
        size = parse_spec(df.get("spec")).recovery.volume_size
        return _condition(
            previous, "VolumeSize", True, "Applied", f"every recovery volume claims {size}", generation, now
        )
    reason, message = problem
    return _condition(previous, "VolumeSize", False, reason, message, generation, now)
