"""The children a Dataflow gets: valid against the Kubernetes schemas, owned by the Dataflow,
and shaped by the pod contract (docs/pod-contract.md)."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from millrace_operator import manifests
from millrace_operator.spec import BUILTIN_IMAGE, IMAGE_ENV, SpecError, parse_spec
from tests.support.pod_security import restricted_violations

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("dataflow-*.yaml"))
KUBERNETES = "1.37"


def dataflow(path: Path) -> dict:
    obj = yaml.safe_load(path.read_text())
    obj["metadata"].update(namespace="jobs", uid="1234-abcd", generation=1)
    return obj


@pytest.fixture(params=EXAMPLES, ids=lambda p: p.name)
def df(request) -> dict:
    return dataflow(request.param)


def test_every_child_validates_against_kubernetes(df):
    for child in manifests.children(df, "k3y"):
        kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_every_child_is_owned_by_the_dataflow(df):
    for child in manifests.children(df, "k3y"):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "millrace.dev/v1alpha1",
            "kind": "Dataflow",
            "name": df["metadata"]["name"],
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["namespace"] == "jobs"


def test_the_service_is_headless_and_publishes_unready_pods(df):
    svc = manifests.service(df)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["metadata"]["name"] == df["metadata"]["name"]


def test_the_statefulset_follows_the_contract(df):
    sts = manifests.statefulset(df)
    name = df["metadata"]["name"]
    spec = sts["spec"]
    assert spec["serviceName"] == name and spec["podManagementPolicy"] == "Parallel"
    assert spec["replicas"] == df["spec"]["processes"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MILLRACE_POD_INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    assert env["MILLRACE_SERVICE"] == name
    assert env["MILLRACE_PROCESSES"] == str(df["spec"]["processes"])
    assert env["MILLRACE_FLOW_FILE"] == "/etc/millrace/flow/flow.py"
    assert container["command"] == ["millrace-worker"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_pods_meet_the_restricted_pod_security_standard(df):
    pod = manifests.statefulset(df)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_the_pod_security_check_catches_what_the_standard_forbids(df):
    pod = copy.deepcopy(manifests.statefulset(df)["spec"]["template"]["spec"])
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    container = pod["containers"][0]
    container["securityContext"].update(allowPrivilegeEscalation=True, capabilities={"add": ["SYS_ADMIN"]})
    del pod["securityContext"]["seccompProfile"]
    found = "\n".join(restricted_violations(pod))
    for rule in ("host namespaces", "HostPath", "Volume types", "Privilege escalation", "SYS_ADMIN",
                 "must drop ALL", "Seccomp"):
        assert rule in found


def test_only_the_dataflows_own_pods_reach_its_worker_port(df):
    policy = manifests.network_policy(df)
    name = df["metadata"]["name"]
    pods = {"matchLabels": {"millrace.dev/dataflow": name}}
    assert policy["spec"]["podSelector"] == pods
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{
        "from": [{"podSelector": pods}],
        "ports": [{"protocol": "TCP", "port": df["spec"].get("port", 2101)}],
    }]
    # The policy selects exactly the StatefulSet's pods.
    template_labels = manifests.statefulset(df)["spec"]["template"]["metadata"]["labels"]
    assert pods["matchLabels"].items() <= template_labels.items()


def test_without_an_image_dataflows_run_the_operators_worker_image(df, monkeypatch):
    df = copy.deepcopy(df)
    df["spec"].pop("image", None)
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    assert manifests.statefulset(df)["spec"]["template"]["spec"]["containers"][0]["image"] == BUILTIN_IMAGE
    monkeypatch.setenv(IMAGE_ENV, "registry.example/millrace:9")
    assert manifests.statefulset(df)["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/millrace:9"
    df["spec"]["image"] = "mine:1"
    assert manifests.statefulset(df)["spec"]["template"]["spec"]["containers"][0]["image"] == "mine:1"


def test_recovery_gets_a_volume_per_pod():
    df = dataflow(next(p for p in EXAMPLES if "batch" in p.name))
    sts = manifests.statefulset(df)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "256Mi"
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MILLRACE_RECOVERY_DIR"] == "/var/lib/millrace/recovery"
    # Deleting the Dataflow deletes its volumes; suspending or finishing keeps them.
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_a_module_flow_has_no_configmap():
    df = dataflow(EXAMPLES[0])
    df["spec"]["flow"] = {"module": "flows.count:flow"}
    assert manifests.flow_configmap(df) is None
    env = {e["name"]: e.get("value") for e in manifests.statefulset(df)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MILLRACE_FLOW"] == "flows.count:flow" and "MILLRACE_FLOW_FILE" not in env


def test_suspend_scales_to_zero_without_a_restart():
    df = dataflow(EXAMPLES[0])
    before = manifests.statefulset(df)
    df["spec"]["suspend"] = True
    after = manifests.statefulset(df)
    assert after["spec"]["replicas"] == 0
    assert after["spec"]["template"] == before["spec"]["template"]


@pytest.mark.parametrize(
    "change",
    [
        ("processes", 5),
        ("image", "registry.example/other:1"),
        ("flow", {"code": "flow = None"}),
        ("env", [{"name": "X", "value": "1"}]),
        ("restartNonce", "again"),
        ("workersPerProcess", 4),
        ("epochSeconds", 3),
    ],
    ids=lambda c: c[0] if isinstance(c, tuple) else c,
)
def test_the_template_hash_changes_with_everything_that_restarts_pods(change):
    df = dataflow(EXAMPLES[0])
    before = manifests.template_hash(parse_spec(df["spec"]))
    changed = copy.deepcopy(df)
    changed["spec"][change[0]] = change[1]
    assert manifests.template_hash(parse_spec(changed["spec"])) != before


@pytest.mark.parametrize(
    "spec,named",
    [
        ({}, "spec.flow"),
        ({"flow": {"code": "x", "module": "a:b"}}, "exactly one"),
        ({"flow": {"module": "a:b"}, "processes": 0}, "spec.processes"),
        ({"flow": {"module": "a:b"}, "processes": "2"}, "spec.processes"),
        ({"flow": {"module": "a:b"}, "env": [{"value": 1}]}, "spec.env[0]"),
        ("nonsense", "spec must be an object"),
    ],
)
def test_a_malformed_spec_is_a_clear_error(spec, named):
    with pytest.raises(SpecError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(spec)
