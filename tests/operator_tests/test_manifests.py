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


def _all_children(df: dict) -> list[dict]:
    return [*manifests.children(df, "k3y"), *manifests.claims(df), *manifests.jobs(df, suspend=False)]


def test_every_child_validates_against_kubernetes(df):
    for child in _all_children(df):
        kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_every_child_is_owned_by_the_dataflow(df):
    for child in _all_children(df):
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


def _pod(df: dict, index: int = 0) -> dict:
    return manifests.job(df, index, suspend=False)["spec"]["template"]["spec"]


def _env(df: dict, index: int = 0) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _pod(df, index)["containers"][0]["env"]}


def test_each_process_gets_a_job_that_follows_the_contract(df):
    name = df["metadata"]["name"]
    jobs = manifests.jobs(df, suspend=False)
    assert [job["metadata"]["name"] for job in jobs] == [f"{name}-{i}" for i in range(df["spec"]["processes"])]
    for index, job in enumerate(jobs):
        spec = job["spec"]
        # One pod at a time, a replacement only once the old one has ended, restarted in place.
        assert spec["completions"] == 1 and spec["parallelism"] == 1 and spec["suspend"] is False
        assert spec["podReplacementPolicy"] == "Failed"
        assert "selector" not in spec and "completionMode" not in spec  # the Job controller's own
        template = spec["template"]
        pod = template["spec"]
        assert pod["restartPolicy"] == "OnFailure"
        # The pod is N-i.N.<namespace>.svc in the headless Service's subdomain.
        assert pod["hostname"] == f"{name}-{index}" and pod["subdomain"] == name
        assert manifests.service(df)["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        assert template["metadata"]["labels"]["millrace.dev/process"] == str(index)
        assert job["metadata"]["labels"]["millrace.dev/process"] == str(index)
        # The template hash on the Job and on its pods: a change of it restarts every process.
        digest = manifests.template_hash(parse_spec(df["spec"]))
        # And the hash of the pod template as built, which changes with the operator's code too.
        built = manifests.pod_template_hash_of(job)
        assert built and manifests.pod_template_hash_of({"metadata": template["metadata"]}) == built
        assert job["metadata"]["annotations"] == {manifests.TEMPLATE_HASH: digest, manifests.POD_TEMPLATE_HASH: built}
        assert template["metadata"]["annotations"] == {
            manifests.TEMPLATE_HASH: digest,
            manifests.POD_TEMPLATE_HASH: built,
            # Prometheus' pod discovery scrapes every worker's metrics.
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9102",
            "prometheus.io/path": "/metrics",
        }
        assert manifests.template_hash_of(job) == digest
        (container,) = pod["containers"]
        assert container["command"] == ["millrace-worker"]
        # Ready means "in a formed cluster": the worker answers GET /ready with 200 only while it is.
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
        assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
        assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in container["ports"]
        env = _env(df, index)
        assert env["MILLRACE_METRICS_PORT"] == "9102"
        assert env["MILLRACE_POD_INDEX"] == str(index)
        assert env["MILLRACE_STATE_DIR"] == manifests.STATE_DIR
        assert env["MILLRACE_HEALTH_PORT"] == "8080"
        assert env["MILLRACE_SERVICE"] == name
        assert env["MILLRACE_PROCESSES"] == str(df["spec"]["processes"])
        assert env["MILLRACE_FLOW_FILE"] == "/etc/millrace/flow/flow.py"


def test_suspend_is_the_jobs_suspend_and_not_a_restart():
    df = dataflow(EXAMPLES[0])
    running, suspended = manifests.jobs(df, suspend=False), manifests.jobs(df, suspend=True)
    assert [j["spec"]["suspend"] for j in suspended] == [True] * len(running)
    assert [j["spec"]["template"] for j in suspended] == [j["spec"]["template"] for j in running]
    df["spec"]["suspend"] = True
    assert manifests.template_hash(parse_spec(df["spec"])) == manifests.template_hash_of(running[0])


def test_pods_meet_the_restricted_pod_security_standard(df):
    pod = _pod(df)
    assert restricted_violations(pod) == []
    for container in pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_the_pod_security_check_catches_what_the_standard_forbids(df):
    pod = copy.deepcopy(_pod(df))
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    container = pod["containers"][0]
    container["securityContext"].update(allowPrivilegeEscalation=True, capabilities={"add": ["SYS_ADMIN"]})
    del pod["securityContext"]["seccompProfile"]
    found = "\n".join(restricted_violations(pod))
    for rule in (
        "host namespaces",
        "HostPath",
        "Volume types",
        "Privilege escalation",
        "SYS_ADMIN",
        "must drop ALL",
        "Seccomp",
    ):
        assert rule in found


def test_only_the_dataflows_own_pods_reach_its_worker_port(df):
    policy = manifests.network_policy(df)
    name = df["metadata"]["name"]
    pods = {"matchLabels": {"millrace.dev/dataflow": name}}
    assert policy["spec"]["podSelector"] == pods
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"podSelector": pods}],
            "ports": [{"protocol": "TCP", "port": df["spec"].get("port", 2101)}],
        },
        # Prometheus scrapes from wherever it runs, the operator asks the health port for the
        # flow's steps: those two are open to any source.
        {"ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9102}]},
    ]
    # The policy selects every process's pods.
    for job in manifests.jobs(df, suspend=False):
        assert pods["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_without_an_image_dataflows_run_the_operators_worker_image(df, monkeypatch):
    df = copy.deepcopy(df)
    df["spec"].pop("image", None)
    monkeypatch.delenv(IMAGE_ENV, raising=False)
    assert _pod(df)["containers"][0]["image"] == BUILTIN_IMAGE
    monkeypatch.setenv(IMAGE_ENV, "registry.example/millrace:9")
    assert _pod(df)["containers"][0]["image"] == "registry.example/millrace:9"
    df["spec"]["image"] = "mine:1"
    assert _pod(df)["containers"][0]["image"] == "mine:1"


def test_recovery_gets_a_claim_per_process_mounted_by_its_pod():
    df = dataflow(next(p for p in EXAMPLES if "batch" in p.name))
    name, processes = df["metadata"]["name"], df["spec"]["processes"]
    claims = manifests.claims(df)
    assert [c["metadata"]["name"] for c in claims] == [f"recovery-{name}-{i}" for i in range(processes)]
    for index, claim in enumerate(claims):
        assert claim == manifests.claim(df, index)
        assert claim["spec"]["resources"]["requests"]["storage"] == "256Mi"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert "storageClassName" not in claim["spec"]  # the cluster's default class
        assert claim["metadata"]["labels"]["millrace.dev/process"] == str(index)
        assert manifests.selector(name).items() <= claim["metadata"]["labels"].items()
        pod = _pod(df, index)
        (volume,) = [v for v in pod["volumes"] if v["name"] == "recovery"]
        assert volume == {"name": "recovery", "persistentVolumeClaim": {"claimName": f"recovery-{name}-{index}"}}
        assert {"name": "recovery", "mountPath": "/var/lib/millrace/recovery"} in pod["containers"][0]["volumeMounts"]
        assert _env(df, index)["MILLRACE_RECOVERY_DIR"] == "/var/lib/millrace/recovery"
    df["spec"]["recovery"]["storageClassName"] = "fast"
    assert {c["spec"]["storageClassName"] for c in manifests.claims(df)} == {"fast"}


def test_without_recovery_there_are_no_claims():
    df = dataflow(EXAMPLES[0])
    df["spec"]["recovery"] = {"enabled": False}
    assert manifests.claims(df) == []
    assert not [v for v in _pod(df)["volumes"] if v["name"] == "recovery"]
    assert "MILLRACE_RECOVERY_DIR" not in _env(df)


def test_a_module_flow_has_no_configmap():
    df = dataflow(EXAMPLES[0])
    df["spec"]["flow"] = {"module": "flows.count:flow"}
    assert manifests.flow_configmap(df) is None
    env = _env(df)
    assert env["MILLRACE_FLOW"] == "flows.count:flow" and "MILLRACE_FLOW_FILE" not in env
    assert not [v for v in _pod(df)["volumes"] if v["name"] == "flow"]
    assert manifests.stale_children(df) == [("ConfigMap", manifests.configmap_name(df["metadata"]["name"]))]


@pytest.mark.parametrize(
    "change",
    [
        ("processes", 5),
        ("image", "registry.example/other:1"),
        ("flow", {"code": "flow = None"}),
        ("env", [{"name": "X", "value": "1"}]),
        ("env", [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
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
        (
            {"flow": {"module": "a:b"}, "env": [{"name": "P", "value": "1", "valueFrom": {}}]},
            "spec.env[0] needs either",
        ),
        (
            {"flow": {"module": "a:b"}, "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"key": "k"}}}]},
            "spec.env[0].valueFrom.secretKeyRef needs a Secret name and key",
        ),
        ("nonsense", "spec must be an object"),
    ],
)
def test_a_malformed_spec_is_a_clear_error(spec, named):
    with pytest.raises(SpecError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(spec)


def test_an_env_value_from_a_secret_reaches_the_pods_as_a_secret_key_ref():
    df = dataflow(EXAMPLES[0])
    df["spec"]["env"] = [
        {"name": "KAFKA_BROKERS", "value": "kafka:9092"},
        {"name": "KAFKA_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "kafka-user", "key": "password"}}},
    ]
    env = _env(df)
    assert env["KAFKA_BROKERS"] == "kafka:9092"
    assert env["KAFKA_PASSWORD"] == {"secretKeyRef": {"name": "kafka-user", "key": "password", "optional": False}}


def test_the_readiness_port_steps_aside_for_a_cluster_port_of_8080(df):
    df = copy.deepcopy(df)
    df["spec"]["port"] = 8080
    (container,) = _pod(df)["containers"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("cluster", 8080),
        ("health", 8081),
        ("metrics", 9102),
    ]
    assert _env(df)["MILLRACE_HEALTH_PORT"] == "8081"
    for child in _all_children(df):
        kubernetes_validate.validate(child, KUBERNETES, strict=True)


def test_the_metrics_port_steps_aside_for_a_cluster_port_of_9102(df):
    df = copy.deepcopy(df)
    df["spec"]["port"] = 9102
    pod = _pod(df)
    (container,) = pod["containers"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("cluster", 9102),
        ("health", 8080),
        ("metrics", 9103),
    ]
    assert _env(df)["MILLRACE_METRICS_PORT"] == "9103"
    annotations = manifests.job(df, 0, suspend=False)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9103"
    ingress = manifests.network_policy(df)["spec"]["ingress"]
    assert [[port["port"] for port in rule["ports"]] for rule in ingress] == [[9102], [8080, 9103]]
    for child in _all_children(df):
        kubernetes_validate.validate(child, KUBERNETES, strict=True)
