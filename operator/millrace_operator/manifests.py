"""The children of a Dataflow, built by pure functions: a Dataflow body in, manifests out.

For a Dataflow ``N`` (docs/pod-contract.md): a headless Service ``N``, one Job ``N-i`` per
process ``i`` (its pod has the hostname ``N-i`` in the Service's subdomain), a
PersistentVolumeClaim ``recovery-N-i`` per process when recovery is on, a ConfigMap ``N-flow``
when the code is inline, a Secret ``N-cluster-key`` and a NetworkPolicy ``N`` that lets only
``N``'s own pods reach its worker port. Every child has a controller ownerReference to the
Dataflow, so deleting it deletes them.

Why Jobs, and one per process: a finished flow's pods must stay, Completed, with their logs
and no CPU or memory held; only a Job's pods may end (a StatefulSet restarts whatever exits).
Each process needs its own recovery volume, which an Indexed Job cannot give its pods (one
template for every index), so each process gets a Job of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, replace
from typing import Any

from .spec import DataflowSpec, SecretRef, parse_spec

Manifest = dict[str, Any]

API_VERSION = "millrace.dev/v1alpha1"
TEMPLATE_HASH = "millrace.dev/template-hash"
#: A hash of the pod template as this operator builds it: it changes with the operator's code
#: too (an upgrade that adds a port, a variable...), which Kubernetes cannot apply to a Job
#: (its pod template is immutable), so the operator restarts the flow's pods instead.
POD_TEMPLATE_HASH = "millrace.dev/pod-template-hash"
DATAFLOW_LABEL = "millrace.dev/dataflow"
PROCESS_LABEL = "millrace.dev/process"
HEALTH_PORT = 8080  # the readiness endpoint, unless the flow took it for its cluster port
READY_PATH = "/ready"
METRICS_PORT = 9102  # Prometheus' /metrics of every worker, unless the flow took it for its cluster port
METRICS_PATH = "/metrics"
#: The scrape annotations Prometheus' Kubernetes service discovery reads (by convention).
SCRAPE_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
STEPS_PATH = "/steps"  # the flow's steps, a JSON list, on the health port (status.steps)
FLOW_DIR = "/etc/millrace/flow"
SECRET_DIR = "/etc/millrace/secret"
STATE_DIR = "/var/run/millrace"
RECOVERY_DIR = "/var/lib/millrace/recovery"
RUN_AS = 10001


def _meta(df: Manifest) -> tuple[str, str]:
    meta = df.get("metadata") or {}
    return meta["name"], meta.get("namespace", "default")


def labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "millrace",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "millrace-operator",
        DATAFLOW_LABEL: name,
    }


def selector(name: str) -> dict[str, str]:
    return {DATAFLOW_LABEL: name}


def owner_reference(df: Manifest) -> dict[str, Any]:
    meta = df["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "Dataflow",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _child_meta(df: Manifest, name: str) -> dict[str, Any]:
    owner, namespace = _meta(df)
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(df)],
    }


def job_name(name: str, index: int) -> str:
    return f"{name}-{index}"


def claim_name(name: str, index: int) -> str:
    return f"recovery-{name}-{index}"


def configmap_name(name: str) -> str:
    return f"{name}-flow"


def secret_name(name: str) -> str:
    return f"{name}-cluster-key"


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def template_hash(spec: DataflowSpec) -> str:
    """What must restart every pod together when it changes: anything in the pod template, the
    process count (it is in every pod's address list) and the restart nonce. Not ``suspend``."""
    restart_relevant = asdict(spec)
    restart_relevant.pop("suspend")
    restart_relevant.pop("image_named")  # the image itself is in it
    return _digest(restart_relevant)


def made_for(spec: DataflowSpec, obj: Manifest) -> bool:
    """Whether ``obj``, a Job or a pod, was made for ``spec``: its template hash is the spec's;
    or the spec names no image, and it is the spec's with the image ``obj`` runs (the operator's
    default image has moved since, by an upgrade: a finished flow stays as it ended)."""
    made = template_hash_of(obj)
    if made == template_hash(spec):
        return True
    image = _worker_image(obj)
    return not spec.image_named and image is not None and made == template_hash(replace(spec, image=image))


def _worker_image(obj: Manifest) -> str | None:
    """The image of the worker container of a Job or a pod."""
    spec = obj.get("spec") or {}
    if "template" in spec:
        spec = spec["template"].get("spec") or {}
    for container in spec.get("containers") or []:
        if container.get("name") == "worker":
            return str(container.get("image"))
    return None


def service(df: Manifest) -> Manifest:
    name, _ = _meta(df)
    spec = parse_spec(df.get("spec"))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _child_meta(df, name),
        "spec": {
            "clusterIP": "None",
            # Peers must find each other before any pod is Ready: readiness means "in a cluster".
            "publishNotReadyAddresses": True,
            "selector": selector(name),
            "ports": [{"name": "cluster", "port": spec.port, "targetPort": spec.port, "protocol": "TCP"}],
        },
    }


def flow_configmap(df: Manifest) -> Manifest | None:
    name, _ = _meta(df)
    spec = parse_spec(df.get("spec"))
    if spec.code is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _child_meta(df, configmap_name(name)),
        "data": {"flow.py": spec.code},
    }


def cluster_secret(df: Manifest, key: str) -> Manifest:
    """The Secret holding the cluster key; the caller makes the key once and never rotates it
    while pods run (a new key would split the cluster)."""
    name, _ = _meta(df)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _child_meta(df, secret_name(name)),
        "type": "Opaque",
        "data": {"key": base64.b64encode(key.encode()).decode()},
    }


def network_policy(df: Manifest) -> Manifest:
    """Ingress to the Dataflow's pods: its worker port from its own pods; from anywhere, the
    metrics port (Prometheus runs wherever its owner put it) and the health port (the kubelet's
    probe, and the operator asking for the flow's steps); nothing else.

    Egress is left alone (flows read and write wherever their code says)."""
    name, _ = _meta(df)
    spec = parse_spec(df.get("spec"))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _child_meta(df, name),
        "spec": {
            "podSelector": {"matchLabels": selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector(name)}}],
                    "ports": [{"protocol": "TCP", "port": spec.port}],
                },
                {
                    "ports": [
                        {"protocol": "TCP", "port": health_port(spec)},
                        {"protocol": "TCP", "port": metrics_port(spec)},
                    ]
                },
            ],
        },
    }


def health_port(spec: DataflowSpec) -> int:
    """Where the worker answers the readiness probe: :data:`HEALTH_PORT`, or the next port
    when the Dataflow chose that one for its cluster traffic."""
    return HEALTH_PORT if spec.port != HEALTH_PORT else HEALTH_PORT + 1


def metrics_port(spec: DataflowSpec) -> int:
    """Where the worker serves Prometheus metrics: :data:`METRICS_PORT`, or the next port when
    the Dataflow chose that one for its cluster traffic (as :func:`health_port` steps aside)."""
    return METRICS_PORT if spec.port != METRICS_PORT else METRICS_PORT + 1


def scrape_annotations(spec: DataflowSpec) -> dict[str, str]:
    """What tells a Prometheus with Kubernetes pod discovery to scrape the worker pods."""
    return dict(zip(SCRAPE_ANNOTATIONS, ("true", str(metrics_port(spec)), METRICS_PATH), strict=True))


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def _env(df: Manifest, spec: DataflowSpec, index: int) -> list[dict[str, Any]]:
    name, _ = _meta(df)
    env: list[dict[str, Any]] = [
        {"name": "MILLRACE_POD_INDEX", "value": str(index)},
        {"name": "MILLRACE_POD_NAME", **_field("metadata.name")},
        {"name": "MILLRACE_NAMESPACE", **_field("metadata.namespace")},
        {"name": "MILLRACE_SERVICE", "value": name},
        {"name": "MILLRACE_CLUSTER_DOMAIN", "value": "cluster.local"},
        {"name": "MILLRACE_PROCESSES", "value": str(spec.processes)},
        {"name": "MILLRACE_PORT", "value": str(spec.port)},
        {"name": "MILLRACE_WORKERS_PER_PROCESS", "value": str(spec.workers_per_process)},
        {"name": "MILLRACE_EPOCH_SECONDS", "value": f"{spec.epoch_seconds:g}"},
        {"name": "MILLRACE_CLUSTER_SECRET_FILE", "value": f"{SECRET_DIR}/key"},
        {"name": "MILLRACE_STATE_DIR", "value": STATE_DIR},
        {"name": "MILLRACE_HEALTH_PORT", "value": str(health_port(spec))},
        {"name": "MILLRACE_METRICS_PORT", "value": str(metrics_port(spec))},
        {"name": "MILLRACE_CLUSTER_ID", "value": f"{name}-{template_hash(spec)}"},
    ]
    if spec.code is not None:
        env.append({"name": "MILLRACE_FLOW_FILE", "value": f"{FLOW_DIR}/flow.py"})
    else:
        env.append({"name": "MILLRACE_FLOW", "value": spec.module})
    if spec.recovery.enabled:
        env.append({"name": "MILLRACE_RECOVERY_DIR", "value": RECOVERY_DIR})
    for key, value in spec.env:
        if isinstance(value, SecretRef):
            ref = {"name": value.name, "key": value.key, "optional": value.optional}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": key, "value": value})
    return env


def claim(df: Manifest, index: int) -> Manifest:
    """Process ``index``'s recovery volume: it outlives the process's pods (suspend, a finished
    run, a restart) and goes with the Dataflow."""
    name, _ = _meta(df)
    spec = parse_spec(df.get("spec"))
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.recovery.volume_size}},
    }
    if spec.recovery.storage_class:
        claim_spec["storageClassName"] = spec.recovery.storage_class
    meta = _child_meta(df, claim_name(name, index))
    meta["labels"][PROCESS_LABEL] = str(index)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": claim_spec}


def job(df: Manifest, index: int, *, suspend: bool) -> Manifest:
    """The Job of process ``index``: one pod at a time (a replacement only once the last one
    has ended), restarted in place when it fails, left Completed when the flow ends."""
    name, _ = _meta(df)
    spec = parse_spec(df.get("spec"))
    volumes: list[dict[str, Any]] = [
        {"name": "state", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cluster-key", "secret": {"secretName": secret_name(name), "defaultMode": 0o440}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "state", "mountPath": STATE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cluster-key", "mountPath": SECRET_DIR, "readOnly": True},
    ]
    if spec.code is not None:
        volumes.append({"name": "flow", "configMap": {"name": configmap_name(name)}})
        mounts.append({"name": "flow", "mountPath": FLOW_DIR, "readOnly": True})
    if spec.recovery.enabled:
        volumes.append({"name": "recovery", "persistentVolumeClaim": {"claimName": claim_name(name, index)}})
        mounts.append({"name": "recovery", "mountPath": RECOVERY_DIR})
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["millrace-worker"],
        "env": _env(df, spec, index),
        "ports": [
            {"name": "cluster", "containerPort": spec.port, "protocol": "TCP"},
            {"name": "health", "containerPort": health_port(spec), "protocol": "TCP"},
            {"name": "metrics", "containerPort": metrics_port(spec), "protocol": "TCP"},
        ],
        "volumeMounts": mounts,
        # Ready means "in a formed cluster": the worker answers GET /ready with 200 only while it
        # is. An HTTP probe, not an exec one: an exec per pod every period loads a busy node.
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "health"},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.resources:
        container["resources"] = spec.resources
    pod_labels = {**labels(name), PROCESS_LABEL: str(index)}
    annotations = {TEMPLATE_HASH: template_hash(spec)}
    pod_annotations = {**annotations, **scrape_annotations(spec)}
    template: Manifest = {
        "metadata": {"labels": pod_labels, "annotations": pod_annotations},
        "spec": {
            "restartPolicy": "OnFailure",
            "hostname": job_name(name, index),
            "subdomain": name,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
        },
    }
    built = _digest(template)
    pod_annotations[POD_TEMPLATE_HASH] = built
    meta = _child_meta(df, job_name(name, index))
    meta["labels"] = dict(pod_labels)
    meta["annotations"] = {**annotations, POD_TEMPLATE_HASH: built}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "suspend": suspend,
            # The operator judges failures (a flow that cannot load, a crash loop), not the
            # Job controller: a pod deletion or a crash never uses up a retry budget.
            "backoffLimit": 2147483647,
            # A replacement pod only once the old one has ended: never two processes with one
            # process id, and the name N-i points at one pod.
            "podReplacementPolicy": "Failed",
            "template": template,
        },
    }


def stale_children(df: Manifest) -> list[tuple[str, str]]:
    """``(kind, name)`` of children an earlier spec of ``df`` may have had and this one has
    not: the flow's ConfigMap once the flow comes from a module instead of code."""
    name, _ = _meta(df)
    if parse_spec(df.get("spec")).code is None:
        return [("ConfigMap", configmap_name(name))]
    return []


def children(df: Manifest, key: str) -> list[Manifest]:
    """The children of ``df`` that do not depend on its pods: what comes before the Jobs."""
    built = [cluster_secret(df, key), flow_configmap(df), service(df), network_policy(df)]
    return [child for child in built if child is not None]


def claims(df: Manifest) -> list[Manifest]:
    spec = parse_spec(df.get("spec"))
    return [claim(df, i) for i in range(spec.processes)] if spec.recovery.enabled else []


def jobs(df: Manifest, *, suspend: bool) -> list[Manifest]:
    return [job(df, i, suspend=suspend) for i in range(parse_spec(df.get("spec")).processes)]


def template_hash_of(obj: Manifest) -> str | None:
    """The template hash a Job or pod was made for."""
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(TEMPLATE_HASH)


def pod_template_hash_of(obj: Manifest) -> str | None:
    """The :data:`POD_TEMPLATE_HASH` of a Job or pod (``None``: made by an operator before it)."""
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(POD_TEMPLATE_HASH)
