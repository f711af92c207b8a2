"""The Dataflow CRD: a valid, structural CustomResourceDefinition whose schema accepts the
examples and refuses bad Dataflows with a message that names the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .crd_validation import errors, load_crd, version_schema

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("dataflow-*.yaml"))


def test_the_crd_is_a_valid_customresourcedefinition():
    kubernetes_validate.validate(load_crd(), "1.37", strict=True)


def test_the_crd_has_the_contracts_names_columns_and_status():
    crd = load_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "dataflows.millrace.dev"
    assert spec["group"] == "millrace.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["df"] and spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Processes": ".spec.processes",
        "Ready": ".status.readyProcesses",
        "Steps": ".status.steps",
        "Age": ".metadata.creationTimestamp",
    }
    # The step ids are for `kubectl get df -o wide` (and `describe`), not the short listing.
    assert {c["name"]: c.get("priority", 0) for c in version["additionalPrinterColumns"]}["Steps"] == 1
    steps = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["steps"]
    assert steps["type"] == "array" and steps["items"] == {"type": "string"}


def _untyped(schema: dict[str, Any], path: str) -> list[str]:
    found = []
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
        found.append(path)
    for name, sub in schema.get("properties", {}).items():
        found += _untyped(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _untyped(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += _untyped(schema["additionalProperties"], f"{path}.*")
    return found


def test_the_schema_is_structural():
    assert _untyped(version_schema(load_crd()), "") == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_are_valid_dataflows(path):
    (obj,) = list(yaml.safe_load_all(path.read_text()))
    assert errors(obj) == []


def _base() -> dict[str, Any]:
    return {
        "apiVersion": "millrace.dev/v1alpha1",
        "kind": "Dataflow",
        "metadata": {"name": "x"},
        "spec": {"processes": 2, "flow": {"module": "flows.count:flow"}},
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(_base())
    target = obj["spec"]
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    if value is _DROP:
        target.pop(last, None)
    else:
        target[last] = value
    return obj


_DROP = object()

INVALID = [
    ("processes", 0, "processes"),
    ("processes", "three", "processes"),
    ("workersPerProcess", 0, "workersPerProcess"),
    ("port", 80, "port"),
    ("epochSeconds", 0, "epochSeconds"),
    ("epochSeconds", -5, "epochSeconds"),
    ("imagePullPolicy", "Sometimes", "imagePullPolicy"),
    ("flow", _DROP, "flow"),
    ("flow", {}, "flow needs exactly one of code and module"),
    ("flow", {"code": "flow = 1", "module": "a:b"}, "flow needs exactly one of code and module"),
    ("flow.module", "not a path", "flow.module"),
    ("recovery.volumeSize", "lots", "recovery.volumeSize"),
    ("env", [{"value": "no name"}], "env.0"),
    ("env", [{"name": "MILLRACE_PORT", "value": "1"}], "reserved for the operator"),
    ("env", [{"name": "P", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}], "not both"),
    ("env", [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "s"}}}], "secretKeyRef: 'key' is a required"),
    ("resources", {"limits": {"memory": "a lot"}}, "resources.limits.memory"),
    ("suspend", "yes", "suspend"),
    ("replicas", 3, "replicas"),
]


@pytest.mark.parametrize("path,value,named", INVALID, ids=[f"{p}={v!r}"[:40] for p, v, _ in INVALID])
def test_invalid_dataflows_are_refused_naming_the_field(path, value, named):
    found = errors(_with(path, value))
    assert found, f"spec.{path}={value!r} was accepted"
    assert any(named in error for error in found), found


def test_the_base_of_the_invalid_cases_is_valid():
    assert errors(_base()) == []


def _transition_rule(saying: str) -> dict[str, Any]:
    """The transition rule of the spec whose message says ``saying``."""
    spec = version_schema(load_crd())["properties"]["spec"]
    rules = [rule for rule in spec.get("x-kubernetes-validations", []) if "oldSelf" in rule["rule"]]
    (rule,) = [rule for rule in rules if saying in rule["message"]]
    return rule


def _allows(rule: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> bool:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(rule["rule"]))
    return bool(program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)}))


def _spec(processes: int, workers: int, recovery: bool | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"processes": processes, "workersPerProcess": workers, "flow": {"module": "a:b"}}
    if recovery is not None:
        spec["recovery"] = {"enabled": recovery, "volumeSize": "1Gi"}
    return spec


@pytest.mark.parametrize(
    "old,new,allowed",
    [
        (_spec(2, 2, True), _spec(3, 1, True), False),  # 4 workers -> 3: their state has no reader
        (_spec(3, 1, True), _spec(2, 1, True), False),
        (_spec(2, 2, True), _spec(4, 1, True), True),  # as many workers (the next rule refuses it)
        (_spec(2, 1, True), _spec(3, 1, True), True),  # more workers
        (_spec(3, 1, True), _spec(2, 1, False), True),  # recovery off: nothing to read
        (_spec(3, 1, False), _spec(2, 1, True), True),  # nothing recovered yet
        (_spec(3, 1, None), _spec(2, 1, True), True),
        (_spec(3, 1, True), _spec(2, 1, None), True),
    ],
    ids=["4to3", "3to2", "4to4", "2to3", "off-now", "off-before", "none-before", "none-now"],
)
def test_with_recovery_the_worker_count_cannot_shrink(old, new, allowed):
    """A transition rule (the API server checks it on updates, against the stored spec)."""
    rule = _transition_rule("cannot shrink")
    assert "processes x workersPerProcess" in rule["message"]
    assert _allows(rule, old, new) is allowed
    # A create has no old object: the rule does not apply, and the schema accepts either spec.
    assert errors({**_base(), "spec": new}) == []


@pytest.mark.parametrize(
    "old,new,allowed",
    [
        (_spec(2, 2, True), _spec(4, 1, True), False),  # worker 1's store is on process 0's volume
        (_spec(2, 1, True), _spec(2, 2, True), False),  # worker 1 would be process 0's
        (_spec(1, 2, True), _spec(2, 1, True), False),
        (_spec(1, 1, True), _spec(1, 3, True), True),  # one volume holds every store
        (_spec(1, 2, True), _spec(2, 2, True), True),  # process 0 keeps its workers
        (_spec(2, 2, True), _spec(3, 2, True), True),
        (_spec(2, 2, True), _spec(4, 1, False), True),  # recovery off: nothing to read
        (_spec(2, 2, False), _spec(4, 1, True), True),  # nothing recovered yet
        (_spec(2, 2, None), _spec(4, 1, True), True),
    ],
    ids=["2x2to4x1", "2x1to2x2", "1x2to2x1", "1x1to1x3", "1x2to2x2", "2x2to3x2", "off-now", "off-before", "none"],
)
def test_with_recovery_on_many_processes_the_workers_per_process_stay(old, new, allowed):
    """Each process's recovery volume holds its own workers' stores: on a cluster of more
    than one process, a worker may not move to another process (what the engine refuses too,
    tests/test_recovery.py), so the API server refuses it first, saying why."""
    rule = _transition_rule("workersPerProcess cannot change")
    assert _allows(rule, old, new) is allowed
