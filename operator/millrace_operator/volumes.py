"""Recovery volumes that keep their state when their size changes.

A StatefulSet's claim templates cannot change. Replacing the StatefulSet would delete its
claims with it (``whenDeleted: Delete``) and the recovery state in them, so a change of
``recovery.volumeSize`` alone keeps the StatefulSet and its templates as they are, and the
operator grows each existing claim in place instead (volume expansion: the storage class must
allow it). Claims made later from the old template are grown by the next reconcile. A claim
cannot shrink: a smaller size is refused, and the volumes keep theirs.

Pure functions over manifests; :mod:`.reconcile` makes the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from kubernetes.utils import parse_quantity

Manifest = dict[str, Any]
Change = Literal["none", "size", "other"]


def _storage(claim: Manifest) -> str | None:
    return (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")


def _quantity(text: str | None) -> Decimal | None:
    return None if text is None else parse_quantity(text)


def _shape(template: Manifest) -> tuple[Any, ...]:
    """What the operator sets in a claim template, but its size. The API server adds defaults
    (``volumeMode``, ``status``, ``apiVersion``...) to what it stores; they are not compared."""
    spec = template.get("spec") or {}
    return (
        (template.get("metadata") or {}).get("name"),
        tuple(sorted(spec.get("accessModes") or [])),
        spec.get("storageClassName"),
    )


def template_change(existing: list[Manifest], desired: list[Manifest]) -> Change:
    """How the claim templates of ``desired`` differ from those of the running StatefulSet:
    not at all, only in size, or otherwise (recovery turned on or off, another storage class:
    only a new StatefulSet can have that)."""
    if [_shape(t) for t in existing] != [_shape(t) for t in desired]:
        return "other"
    sizes = [(_quantity(_storage(e)), _quantity(_storage(d))) for e, d in zip(existing, desired)]
    return "none" if all(old == new for old, new in sizes) else "size"


@dataclass
class ResizePlan:
    """What to do with the existing claims for the size ``size``."""

    size: str
    grow: list[str] = field(default_factory=list)
    #: Claims larger than ``size``, with their size: they stay as they are.
    too_large: list[tuple[str, str]] = field(default_factory=list)

    def refusal(self) -> str | None:
        """Why the size cannot be had, if it cannot."""
        if not self.too_large:
            return None
        claims = ", ".join(f"{name} ({size})" for name, size in self.too_large)
        return (
            f"recovery.volumeSize {self.size} is smaller than the claims {claims}: a volume "
            "cannot shrink, so they keep their size (to start over with smaller volumes, "
            "delete the Dataflow and create it again: its recovery state goes with it)"
        )


def resize_plan(claims: list[Manifest], size: str) -> ResizePlan:
    """Which of ``claims`` (the Dataflow's PersistentVolumeClaims) must grow to ``size``."""
    plan = ResizePlan(size)
    wanted = parse_quantity(size)
    for claim in sorted(claims, key=lambda c: c["metadata"]["name"]):
        name, current = claim["metadata"]["name"], _storage(claim)
        have = _quantity(current)
        if have is None or have < wanted:
            plan.grow.append(name)
        elif have > wanted:
            plan.too_large.append((name, str(current)))
    return plan
