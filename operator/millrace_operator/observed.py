"""The cluster as the operator's watches last saw it: reads from memory, writes only what changed.

:class:`Observed` is the :class:`.reconcile.Api` a reconcile runs against. Its reads come from
the children kopf's watches keep in indexes (no request to the API server), and its writes go
to the API server only when they would change something:

- every manifest it applies carries the hash of itself in the ``millrace.dev/applied-hash``
  annotation; a manifest whose hash the watched child already carries, or which this operator
  applied last (and which the watch has not brought back yet), is not sent again;
- a child it deleted is not deleted again while the watch still shows it.

``memory`` (one per Dataflow, kept across reconciles) holds what this operator wrote last; the
handlers drop a child's entry when the watch reports the child deleted, so that a child deleted
by hand is made again. A Secret neither watched nor written is read from the API server, so
that a cluster key is never made anew while one exists.

>>> class Cluster:
...     def __init__(self): self.writes = 0
...     def get(self, kind, namespace, name): return None
...     def list(self, kind, namespace, selector): return []
...     def apply(self, manifest): self.writes += 1; return manifest
...     def delete(self, kind, namespace, name): self.writes += 1
>>> cluster, memory = Cluster(), {}
>>> service = {"kind": "Service", "metadata": {"name": "wc", "namespace": "ns"}, "spec": {}}
>>> _ = Observed(cluster, {}, memory).apply(service)
>>> _ = Observed(cluster, {}, memory).apply(service)  # the same again: no request
>>> cluster.writes
1
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from .reconcile import Api

Manifest = dict[str, Any]
APPLIED_HASH = "millrace.dev/applied-hash"
#: What this operator last did to a child, by (kind, name): the manifest it applied, or
#: ``None`` for a deletion.
Memory = MutableMapping[tuple[str, str], Manifest | None]


def applied_hash(manifest: Manifest) -> str:
    """A hash of what ``manifest`` says (its own ``applied-hash`` annotation left out)."""
    plain = copy.deepcopy(manifest)
    meta = plain.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    annotations.pop(APPLIED_HASH, None)
    if "annotations" in meta and not annotations:
        del meta["annotations"]
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stamped(manifest: Manifest) -> Manifest:
    """``manifest`` with its hash in its annotations."""
    out = copy.deepcopy(manifest)
    meta = out.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: applied_hash(manifest)}
    return out


def hash_of(obj: Manifest | None) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH)


def _named(objects: Iterable[Manifest], name: str) -> Manifest | None:
    return next((o for o in objects if (o.get("metadata") or {}).get("name") == name), None)


class Observed:
    """Reads from ``seen`` (the watched children by kind), writes through ``cluster``."""

    def __init__(self, cluster: Api, seen: Mapping[str, list[Manifest]], memory: Memory) -> None:
        self.cluster, self.seen, self.memory = cluster, seen, memory
        self.writes = 0

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        found = _named(self.seen.get(kind, []), name)
        if found is not None:
            return found
        key = (kind, name)
        if key in self.memory:
            return self.memory[key]
        if kind == "Secret":
            # The cluster key must survive anything: rather one read than a second key.
            return self.cluster.get(kind, namespace, name)
        return None

    def list(self, kind: str, namespace: str, selector: dict[str, str]) -> list[Manifest]:
        def selected(obj: Manifest) -> bool:
            labels = (obj.get("metadata") or {}).get("labels") or {}
            return all(labels.get(k) == v for k, v in selector.items())

        return [obj for obj in self.seen.get(kind, []) if selected(obj)]

    def apply(self, manifest: Manifest) -> Manifest:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        wanted = stamped(manifest)
        digest = hash_of(wanted)
        found = _named(self.seen.get(kind, []), name)
        last = self.memory.get((kind, name))
        if hash_of(found) == digest and not (found or {}).get("metadata", {}).get("deletionTimestamp"):
            return found or wanted
        if last is not None and hash_of(last) == digest:
            return last  # applied already; the watch has not brought it back yet
        applied = self.cluster.apply(wanted)
        self.writes += 1
        self.memory[kind, name] = wanted
        return applied

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if (kind, name) in self.memory and self.memory[kind, name] is None:
            return  # deleted already; the watch has not seen it go yet
        self.cluster.delete(kind, namespace, name)
        self.writes += 1
        self.memory[kind, name] = None
