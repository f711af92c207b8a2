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


def every_child(df: dict) -> list[dict]:
    return manifests.children(df, "k3y") + manifests.jobs(df, suspend=False) + manifests.claims(df)


def test_every_child_validates_against_kubernetes(df):
    for child in every_child(df):
        kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_every_child_is_owned_by_the_dataflow(df):
    for child in every_child(df):
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


def test_each_process_gets_a_job_that_follows_the_contract(df):
    name = df["metadata"]["name"]
    jobs = manifests.jobs(df, suspend=False)
    assert [job["metadata"]["name"] for job in jobs] == [f"{name}-{i}" for i in range(df["spec"]["processes"])]
    for index, job in enumerate(jobs):
        spec = job["spec"]
        assert spec["completions"] == 1 and spec["parallelism"] == 1 and spec["suspend"] is False
        # A replacement only once the old pod has ended: never two pods of one process.
        assert spec["podReplacementPolicy"] == "Failed"
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "OnFailure"
        # The peers' DNS names: N-i.N.<namespace>.svc.<domain>.
        assert pod["hostname"] == f"{name}-{index}" and pod["subdomain"] == name
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env["MILLRACE_POD_INDEX"] == str(index)
        assert env["MILLRACE_SERVICE"] == name
        assert env["MILLRACE_PROCESSES"] == str(df["spec"]["processes"])
        assert env["MILLRACE_FLOW_FILE"] == "/etc/millrace/flow/flow.py"
        assert container["command"] == ["millrace-worker"]
        # Ready only while in a formed cluster: the worker keeps that file only then.
        assert container["readinessProbe"]["exec"]["command"] == ["test", "-e", "/var/run/millrace/ready"]
        labels = spec["template"]["metadata"]["labels"]
        assert labels["millrace.dev/process"] == str(index)
        assert manifests.template_hash_of(job) == manifests.template_hash_of(spec["template"])


def test_pods_meet_the_restricted_pod_security_standard(df):
    pod = manifests.job(df, 0, suspend=False)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_the_pod_security_check_catches_what_the_standard_forbids(df):
    pod = copy.deepcopy(manifests.job(df, 0, suspend=False)["spec"]["template"]["spec"])
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
    # The policy selects exactly the Jobs' pods.
    template_labels = manifests.job(df, 0, suspend=False)["spec"]["template"]["metadata"]["labels"]
    assert pods["matchLabels"].items() <= template_labels.items()


def test_without_an_image_dataflows_run_the_operators_worker_image(df, monkeypatch):
    df = copy.deepcopy(df)
    df["spec"].pop("image", None)
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    assert manifests.job(df, 0, suspend=False)["spec"]["template"]["spec"]["containers"][0]["image"] == BUILTIN_IMAGE
    monkeypatch.setenv(IMAGE_ENV, "registry.example/millrace:9")
    assert manifests.job(df, 0, suspend=False)["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/millrace:9"
    df["spec"]["image"] = "mine:1"
    assert manifests.job(df, 0, suspend=False)["spec"]["template"]["spec"]["containers"][0]["image"] == "mine:1"


def test_recovery_gets_a_volume_per_process():
    df = dataflow(next(p for p in EXAMPLES if "batch" in p.name))
    claims = manifests.claims(df)
    assert [c["metadata"]["name"] for c in claims] == [f"recovery-wordcount-{i}" for i in range(3)]
    assert {c["spec"]["resources"]["requests"]["storage"] for c in claims} == {"256Mi"}
    for index, job in enumerate(manifests.jobs(df, suspend=False)):
        pod = job["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["recovery"]["persistentVolumeClaim"] == {"claimName": f"recovery-wordcount-{index}"}
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["MILLRACE_RECOVERY_DIR"] == "/var/lib/millrace/recovery"
    df["spec"]["recovery"] = {"enabled": False}
    assert manifests.claims(df) == []


def test_a_module_flow_has_no_configmap():
    df = dataflow(EXAMPLES[0])
    df["spec"]["flow"] = {"module": "flows.count:flow"}
    assert manifests.flow_configmap(df) is None
    env = {e["name"]: e.get("value") for e in manifests.job(df, 0, suspend=False)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MILLRACE_FLOW"] == "flows.count:flow" and "MILLRACE_FLOW_FILE" not in env


def test_suspend_suspends_the_jobs_without_a_new_template():
    df = dataflow(EXAMPLES[0])
    before = manifests.job(df, 0, suspend=False)
    df["spec"]["suspend"] = True
    assert manifests.template_hash(parse_spec(df["spec"])) == manifests.template_hash_of(before)
    after = manifests.job(df, 0, suspend=True)
    assert after["spec"]["suspend"] is True
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
