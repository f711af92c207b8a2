"""The flow's steps for a Dataflow's ``status.steps``, asked of the pod of its process 0.

The operator does not run flows: a worker loads the flow and names its steps (as its metrics'
``step_id`` label does) at ``GET /steps`` on its health port, beside the readiness probe's
``/ready``. Workers have no Kubernetes API access, so the operator asks: once process 0's pod of
the current pod template is Ready (its flow loaded, its cluster formed), at its pod IP. An image
of an older millrace answers 404 and the status simply has no steps; so does a pod the operator
cannot reach (it runs outside the cluster, or a policy of the cluster's blocks it) after
:data:`TRIES` tries.

>>> df = {"metadata": {"name": "wc"}, "spec": {"flow": {"module": "a:b"}}}
>>> pod = {"metadata": {"uid": "u0", "labels": {"millrace.dev/process": "0"},
...                     "annotations": {"millrace.dev/template-hash": template_hash(parse_spec(df["spec"]))}},
...        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}}
>>> source(df, [pod])
Source(template='...', pod_uid='u0', url='http://10.1.2.3:8080/steps')
>>> parse(b'["lines", "map#1", "count"]')
['lines', 'map#1', 'count']
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .manifests import PROCESS_LABEL, STEPS_PATH, TEMPLATE_HASH, health_port, template_hash
from .spec import parse_spec

Manifest = dict[str, Any]

#: How often the operator asks one pod before it does without its steps.
TRIES = 3
#: How long one request may take (it runs off the event loop, before the reconcile it informs).
TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Source:
    """Where to ask: the pod template the answer is for, the pod, its URL."""

    template: str
    pod_uid: str
    url: str


def _ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def source(df: Manifest, pods: list[Manifest]) -> Source | None:
    """Process 0's Ready pod of ``df``'s current pod template, if there is one to ask."""
    spec = parse_spec(df.get("spec"))
    current = template_hash(spec)
    for pod in pods:
        meta = pod.get("metadata") or {}
        ip = (pod.get("status") or {}).get("podIP")
        if (
            (meta.get("labels") or {}).get(PROCESS_LABEL) == "0"
            and (meta.get("annotations") or {}).get(TEMPLATE_HASH) == current
            and not meta.get("deletionTimestamp")
            and ip
            and _ready(pod)
        ):
            host = f"[{ip}]" if ":" in ip else ip  # an IPv6 pod address
            return Source(current, str(meta.get("uid", "")), f"http://{host}:{health_port(spec)}{STEPS_PATH}")
    return None


def parse(body: bytes) -> list[str] | None:
    """The steps in a ``/steps`` answer, or ``None`` if it is not a JSON list of strings."""
    try:
        steps = json.loads(body)
    except ValueError:
        return None
    if isinstance(steps, list) and all(isinstance(step, str) for step in steps):
        return steps
    return None


def fetch(url: str, timeout: float = TIMEOUT_SECONDS) -> list[str] | None:
    """The steps the pod at ``url`` names; ``None`` when it has none to give (an older worker
    image: 404). Raises :class:`OSError` when it could not be asked (worth another try)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return parse(answer.read())
    except urllib.error.HTTPError as refused:
        if refused.code == 404:
            return None
        raise  # 503: not loaded yet
