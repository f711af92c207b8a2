"""The Helm chart, rendered by the real helm: lint, schema, CRD, Kubernetes schemas, security.

The RBAC rules are checked against the operator's own requests in
tests/operator_tests/test_rbac.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from millrace_operator import manifests as operator_manifests
from tests.support.helm import CHART, helm, render
from tests.support.pod_security import restricted_violations

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = "1.37"

pytestmark = pytest.mark.timeout(120)

INSTALLS = {
    "cluster-wide": {},
    "namespaced": {"watchNamespaces": ["jobs", "etl"]},
    "everything-set": {
        "image": {"repository": "registry.example/millrace", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "pull"}],
        "workerImage": "registry.example/flows:7",
        "serviceAccount": {"create": True, "name": "op", "annotations": {"a": "b"}},
        "operator": {"verbose": True, "healthPort": 9090},
        "podAnnotations": {"example.com/note": "hello"},
        "podLabels": {"team": "data"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {},
        "tests": {"enabled": True, "timeoutSeconds": 60, "processes": 3},
    },
}


def _one(manifests: list[dict[str, Any]], kind: str, *, hook: bool = False) -> dict[str, Any]:
    found = [
        m
        for m in manifests
        if m["kind"] == kind and ("helm.sh/hook" in (m["metadata"].get("annotations") or {})) == hook
    ]
    assert len(found) == 1, [m["metadata"]["name"] for m in found]
    return found[0]


@pytest.fixture(params=list(INSTALLS), scope="module")
def install(request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = INSTALLS[request.param]
    return values, render(values)


def test_the_chart_lints():
    for values in INSTALLS.values():
        args = [
            arg
            for key, value in values.items()
            if key == "watchNamespaces"
            for arg in ("--set", f"watchNamespaces={{{','.join(value)}}}")
        ]
        done = helm("lint", "--strict", str(CHART), *args)
        assert "0 chart(s) failed" in done.stdout, done.stdout


def test_values_yaml_validates_against_its_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    for values in INSTALLS.values():
        merged = {**yaml.safe_load((CHART / "values.yaml").read_text()), **values}
        jsonschema.validate(merged, schema)


@pytest.mark.parametrize(
    "values,named",
    [
        ({"watchNamespaces": "jobs"}, "watchNamespaces"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"tests": {"timeoutSeconds": "soon"}}, "timeoutSeconds"),
        ({"replicas": 2}, "replicas"),
        ({"operator": {"replicas": 0}}, "replicas"),
        ({"operator": {"peering": {"lifetimeSeconds": 1}}}, "lifetimeSeconds"),
        ({"metrics": {"port": 80}}, "port"),
        ({"metrics": {"podMonitor": {"enabled": "yes"}}}, "enabled"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ],
)
def test_helm_refuses_bad_values_naming_the_field(values, named, tmp_path):
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    done = helm("template", "x", str(CHART), "--values", str(file), check=False)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr


def test_the_charts_crds_are_the_ones_in_crds():
    for name in ("dataflow.yaml", "kopf-peering.yaml"):
        chart_copy = (CHART / "crds" / name).read_text()
        assert chart_copy == (ROOT / "crds" / name).read_text(), (
            f"charts/millrace/crds/{name} differs from crds/{name}, the only copy that is "
            f"edited: cp crds/{name} charts/millrace/crds/{name}"
        )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["dataflow.yaml", "kopf-peering.yaml"]


def test_every_manifest_validates_against_kubernetes(install):
    _, manifests = install
    kinds = sorted(m["kind"] for m in manifests)
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_operator_runs_alone_and_is_restarted_by_recreate(install):
    _, manifests = install
    deployment = _one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["millrace-operator"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_pod_of_the_chart_meets_the_restricted_standard(install):
    _, manifests = install
    pods = [m["spec"]["template"]["spec"] for m in manifests if m["kind"] == "Deployment"]
    pods += [m["spec"] for m in manifests if m["kind"] == "Pod"]
    assert len(pods) == 2
    for pod in pods:
        assert restricted_violations(pod) == []
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_operator_watches_what_the_values_say(install):
    values, manifests = install
    (container,) = _one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    watched = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--namespace=")]
    assert watched == values.get("watchNamespaces", [])
    bindings = [
        m
        for m in manifests
        if m["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and "helm.sh/hook" not in (m["metadata"].get("annotations") or {})
    ]
    account = _one(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "millrace-system"}]
    if watched:
        assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    else:
        assert [b["kind"] for b in bindings] == ["ClusterRoleBinding"]


def test_dataflows_default_to_the_operators_image_unless_told_otherwise(install):
    values, manifests = install
    (container,) = _one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MILLRACE_WORKER_IMAGE"] == (values.get("workerImage") or container["image"])
    tag = (values.get("image") or {}).get("tag") or yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"].endswith(f":{tag}")


def test_helm_test_applies_a_dataflow_where_the_operator_looks(install):
    values, manifests = install
    pod = _one(manifests, "Pod", hook=True)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "millrace_operator.smoke"]
    namespace = pod["metadata"]["namespace"]
    assert namespace in (values.get("watchNamespaces") or ["millrace-system"])
    assert f"--namespace={namespace}" in container["args"]
    role = _one(manifests, "Role", hook=True)
    assert role["metadata"]["namespace"] == namespace
    assert role["rules"] == [
        {"apiGroups": ["millrace.dev"], "resources": ["dataflows"], "verbs": ["get", "create", "delete"]}
    ]


def test_tests_can_be_left_out():
    manifests = render({"tests": {"enabled": False}})
    assert not [m for m in manifests if "helm.sh/hook" in (m["metadata"].get("annotations") or {})]


@pytest.mark.parametrize("namespaces", [[], ["jobs", "etl"]])
def test_standby_replicas_share_a_peering_object_and_may_use_it(namespaces):
    manifests = render({"operator": {"replicas": 2, "peering": {"lifetimeSeconds": 20}}, "watchNamespaces": namespaces})
    deployment = _one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    name = deployment["metadata"]["name"]
    assert f"--peering={name}" in container["args"] and "--peering-lifetime=20" in container["args"]
    kind, rbac, plural = (
        ("KopfPeering", "Role", "kopfpeerings")
        if namespaces
        else ("ClusterKopfPeering", "ClusterRole", "clusterkopfpeerings")
    )
    peerings = [m for m in manifests if m["kind"] == kind]
    assert [p["metadata"]["name"] for p in peerings] == [name] * max(1, len(namespaces))
    assert sorted(p["metadata"].get("namespace", "") for p in peerings) == sorted(namespaces or [""])
    for role in (m for m in manifests if m["kind"] == rbac and m["metadata"]["name"] == name):
        assert {"apiGroups": ["kopf.dev"], "resources": [plural], "verbs": ["list", "watch", "patch"]} in role["rules"]
    for crd in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        assert crd in [m["metadata"]["name"] for m in manifests if m["kind"] == "CustomResourceDefinition"]


def test_one_replica_has_no_peering():
    manifests = render({})
    (container,) = _one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--peering")]
    assert not [m for m in manifests if m["kind"] in ("KopfPeering", "ClusterKopfPeering")]
    rules = [r for m in manifests if m["kind"] == "ClusterRole" for r in m["rules"]]
    assert not [r for r in rules if "kopf.dev" in r["apiGroups"]]


MONITORS = ("ServiceMonitor", "PodMonitor")
WITH_PROMETHEUS_OPERATOR = ("--api-versions", "monitoring.coreos.com/v1")


def test_the_operator_serves_metrics_with_scrape_annotations(install):
    values, manifests = install
    deployment = _one(manifests, "Deployment")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9101, "protocol": "TCP"} in container["ports"]
    assert "--metrics-port=9101" in container["args"]
    annotations = template["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9101",
        "prometheus.io/path": "/metrics",
    }
    # The user's pod annotations are kept beside them.
    assert values.get("podAnnotations", {}).items() <= annotations.items()
    # No monitors by default: they need the Prometheus Operator.
    assert not [m for m in manifests if m["kind"] in MONITORS]
    assert not [m for m in manifests if m["kind"] == "Service"]


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor"])
def test_a_monitor_without_the_prometheus_operators_crds_fails_saying_so(monitor, tmp_path):
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump({"metrics": {monitor: {"enabled": True}}}))
    done = helm("template", "x", str(CHART), "--values", str(file), check=False)
    assert done.returncode != 0
    assert "need the Prometheus Operator's CRDs (monitoring.coreos.com/v1)" in done.stderr, done.stderr
    # With them, the same values install.
    helm("template", "x", str(CHART), "--values", str(file), *WITH_PROMETHEUS_OPERATOR)


def test_with_the_prometheus_operator_the_monitors_scrape_the_operator_and_the_workers():
    values = {
        "watchNamespaces": ["jobs", "etl"],
        "metrics": {
            "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
        },
    }
    manifests = render(values, extra=WITH_PROMETHEUS_OPERATOR)
    deployment = _one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The Service finds the operator's pods and their port named metrics; the ServiceMonitor
    # finds the Service.
    service = _one(manifests, "Service")
    kubernetes_validate.validate(service, KUBERNETES, strict=True)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9101, "targetPort": "metrics", "protocol": "TCP"}]
    service_monitor = _one(manifests, "ServiceMonitor")
    assert service_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service_monitor["metadata"]["labels"]["release"] == "prom"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["namespaceSelector"] == {"matchNames": ["millrace-system"]}
    assert service_monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    # The PodMonitor finds the workers as the operator labels them, where the operator runs
    # Dataflows, and not the operator itself.
    pod_monitor = _one(manifests, "PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prom"
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= operator_manifests.labels("wc").items()
    assert not selector.items() <= pod_labels.items()
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["jobs", "etl"]}
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"dataflow", "process"}
    # Cluster-wide, the workers are found in every namespace.
    cluster_wide = render({"metrics": {"podMonitor": {"enabled": True}}}, extra=WITH_PROMETHEUS_OPERATOR)
    assert _one(cluster_wide, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}
    assert not [m for m in cluster_wide if m["kind"] in ("ServiceMonitor", "Service")]
