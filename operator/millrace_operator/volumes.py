"""Recovery volumes that keep their state when their size changes.

Each process has its own PersistentVolumeClaim (``recovery-N-i``), made by the operator. A
larger ``recovery.volumeSize`` grows each claim in place (volume expansion: the storage class
must allow it). A claim cannot shrink: a smaller size is refused, and the volumes keep theirs.
Another storage class replaces the claims (a claim's class cannot change), and with them the
state; so does turning recovery off.

Pure functions over manifests; :mod:`.reconcile` makes the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

Manifest = dict[str, Any]


def _storage(claim: Manifest) -> str | None:
    return (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")


def _quantity(text: str | None) -> Decimal | None:
    return None if text is None else parse_quantity(text)


def _name(claim: Manifest) -> str:
    return str(claim["metadata"]["name"])


def _other_kind(existing: Manifest, desired: Manifest) -> bool:
    """Whether ``existing`` differs from ``desired`` in what no claim can change. A claim that
    names no class gets the cluster's default from the API server: any class is then fine."""
    old, new = existing.get("spec") or {}, desired.get("spec") or {}
    wanted_class = new.get("storageClassName")
    return (wanted_class is not None and old.get("storageClassName") != wanted_class) or sorted(
        old.get("accessModes") or []
    ) != sorted(new.get("accessModes") or [])


@dataclass
class ClaimPlan:
    """What to do with a Dataflow's claims so that they match the desired ones."""

    size: str
    create: list[Manifest] = field(default_factory=list)
    grow: list[Manifest] = field(default_factory=list)
    #: Claims of another storage class or access mode: deleted, then made anew.
    replace: list[str] = field(default_factory=list)
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


def claim_plan(existing: list[Manifest], desired: list[Manifest], size: str) -> ClaimPlan:
    """How ``existing`` claims (the Dataflow's, found in the cluster) become ``desired`` ones
    (each of ``size``)."""
    plan = ClaimPlan(size)
    found = {_name(claim): claim for claim in existing}
    wanted = parse_quantity(size)
    for claim in sorted(desired, key=_name):
        have = found.get(_name(claim))
        if have is None:
            plan.create.append(claim)
        elif _other_kind(have, claim):
            plan.replace.append(_name(claim))
        elif (current := _quantity(_storage(have))) is None or current < wanted:
            plan.grow.append(claim)
        elif current > wanted:
            plan.too_large.append((_name(claim), str(_storage(have))))
    return plan
