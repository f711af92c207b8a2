"""A Dataflow's spec as a typed value, with the CRD's defaults applied in one place.

The API server applies the same defaults (crds/dataflow.yaml); applying them here too keeps
the operator correct for objects that were stored before a default existed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

BUILTIN_IMAGE = "ghcr.io/millrace/millrace:0.1.0"
IMAGE_ENV = "MILLRACE_WORKER_IMAGE"


def default_image() -> str:
    """The image of Dataflows that name none: the operator's deployment sets it (the Helm chart
    passes its own image), so a cluster runs the worker that matches its operator."""
    return os.environ.get(IMAGE_ENV) or BUILTIN_IMAGE


class SpecError(ValueError):
    """A Dataflow spec the operator cannot act on; the message names the field."""


@dataclass(frozen=True)
class Recovery:
    enabled: bool = False
    volume_size: str = "1Gi"
    storage_class: str | None = None


@dataclass(frozen=True)
class SecretRef:
    """An env value taken from key ``key`` of Secret ``name`` (``valueFrom.secretKeyRef``)."""

    name: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class DataflowSpec:
    image: str = BUILTIN_IMAGE
    #: Whether the spec names its image (else :func:`default_image`, which an upgrade of the
    #: operator may move).
    image_named: bool = False
    image_pull_policy: str = "IfNotPresent"
    processes: int = 1
    workers_per_process: int = 1
    port: int = 2101
    code: str | None = None
    module: str | None = None
    epoch_seconds: float = 10.0
    recovery: Recovery = field(default_factory=Recovery)
    #: Per variable, a literal value or a Secret's key.
    env: tuple[tuple[str, str | SecretRef], ...] = ()
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    suspend: bool = False
    restart_nonce: str = ""


def _get(spec: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = spec.get(name, default)
    if value is None:
        return default
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        raise SpecError(f"spec.{name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _env_item(index: int, item: Any) -> tuple[str, str | SecretRef]:
    """One ``spec.env`` entry: ``{name, value}`` or ``{name, valueFrom: {secretKeyRef: {name,
    key, optional}}}`` (credentials stay in a Secret, out of the Dataflow)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise SpecError(f"spec.env[{index}] needs a name")
    value_from = item.get("valueFrom")
    if value_from is None:
        return item["name"], str(item.get("value", ""))
    ref = value_from.get("secretKeyRef") if isinstance(value_from, dict) else None
    if "value" in item or not isinstance(ref, dict) or set(value_from) != {"secretKeyRef"}:
        raise SpecError(f"spec.env[{index}] needs either value or valueFrom.secretKeyRef, not both or neither")
    if not isinstance(ref.get("name"), str) or not isinstance(ref.get("key"), str):
        raise SpecError(f"spec.env[{index}].valueFrom.secretKeyRef needs a Secret name and key")
    return item["name"], SecretRef(ref["name"], ref["key"], bool(ref.get("optional", False)))


def parse_spec(spec: Any) -> DataflowSpec:
    """The typed spec, or :class:`SpecError` naming the first bad field."""
    if not isinstance(spec, dict):
        raise SpecError(f"spec must be an object, got {type(spec).__name__}")
    flow = spec.get("flow")
    if not isinstance(flow, dict):
        raise SpecError("spec.flow must be an object with code or module")
    code, module = flow.get("code"), flow.get("module")
    if (code is None) == (module is None):
        raise SpecError("spec.flow needs exactly one of code and module")
    if code is not None and not isinstance(code, str):
        raise SpecError("spec.flow.code must be a string")
    if module is not None and (not isinstance(module, str) or ":" not in module):
        raise SpecError(f"spec.flow.module must be module:attribute, got {module!r}")
    processes = _get(spec, "processes", int, 1)
    if processes < 1:
        raise SpecError(f"spec.processes must be at least 1, got {processes}")
    workers = _get(spec, "workersPerProcess", int, 1)
    if workers < 1:
        raise SpecError(f"spec.workersPerProcess must be at least 1, got {workers}")
    recovery = _get(spec, "recovery", dict, {})
    env_items = _get(spec, "env", list, [])
    env = [_env_item(index, item) for index, item in enumerate(env_items)]
    epoch = _get(spec, "epochSeconds", (int, float), 10)
    if epoch <= 0:
        raise SpecError(f"spec.epochSeconds must be positive, got {epoch}")
    image = _get(spec, "image", str, None)
    return DataflowSpec(
        image=image or default_image(),
        image_named=bool(image),
        image_pull_policy=_get(spec, "imagePullPolicy", str, "IfNotPresent"),
        processes=processes,
        workers_per_process=workers,
        port=_get(spec, "port", int, 2101),
        code=code,
        module=module,
        epoch_seconds=float(epoch),
        recovery=Recovery(
            enabled=bool(recovery.get("enabled", False)),
            volume_size=str(recovery.get("volumeSize") or "1Gi"),
            storage_class=recovery.get("storageClassName"),
        ),
        env=tuple(env),
        resources=_get(spec, "resources", dict, {}),
        suspend=bool(spec.get("suspend", False)),
        restart_nonce=str(spec.get("restartNonce") or ""),
    )
