"""What a client asked of the API server, counted from the API server's audit log.

k8slocal (``../shared/k8slocal``) writes one JSON event per request and stage to
``$K8SLOCAL/logs/audit.log``; a request is counted once (by its ``auditID``). Used by the e2e
suite's request budget and by ``benchmarks/operator_scale.py``.

>>> lines = [
...     '{"auditID": "a", "stage": "ResponseComplete", "verb": "list", "user": {"username": "op"},'
...     ' "objectRef": {"resource": "pods"}, "requestReceivedTimestamp": "2026-01-01T00:00:01.000000Z"}',
...     '{"auditID": "b", "stage": "ResponseComplete", "verb": "patch", "user": {"username": "op"},'
...     ' "objectRef": {"resource": "jobs"}, "requestReceivedTimestamp": "2026-01-01T00:00:02.000000Z"}',
... ]
>>> counts = count(parse(lines), user="op")
>>> counts.reads, counts.writes, dict(counts.by_request)
(1, 1, {('list', 'pods'): 1, ('patch', 'jobs'): 1})
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READ_VERBS = {"get", "list", "watch"}


def audit_log() -> Path:
    return Path(os.environ.get("K8SLOCAL", "/var/tmp/k8slocal")) / "logs" / "audit.log"


def timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            yield json.loads(line)
        except ValueError:
            continue  # a line being written as we read


@dataclass
class Counts:
    by_request: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def reads(self) -> int:
        return sum(n for (verb, _), n in self.by_request.items() if verb in READ_VERBS)

    @property
    def writes(self) -> int:
        return sum(n for (verb, _), n in self.by_request.items() if verb not in READ_VERBS)

    def table(self) -> str:
        return "\n".join(f"{n:6d} {verb} {resource}" for (verb, resource), n in sorted(self.by_request.items()))


def count(
    events: Iterable[dict[str, Any]],
    *,
    user: str,
    since: float = 0.0,
    until: float = float("inf"),
    exclude: tuple[str, ...] = (),
) -> Counts:
    """The requests of ``user`` received in [since, until), each once, by (verb, resource);
    resources in ``exclude`` left out."""
    counts, counted = Counts(), set()
    for event in events:
        if (event.get("user") or {}).get("username") != user or event.get("auditID") in counted:
            continue
        received = timestamp(event.get("requestReceivedTimestamp") or "1970-01-01T00:00:00Z")
        if not since <= received < until:
            continue
        resource = (event.get("objectRef") or {}).get("resource") or event.get("requestURI", "?")
        if resource in exclude:
            continue
        counted.add(event.get("auditID"))
        counts.by_request[str(event.get("verb")), str(resource)] += 1
    return counts


def log_size() -> int:
    """Where the log ends now: pass it to :func:`requests_since` to read only what follows."""
    return audit_log().stat().st_size


def requests_since(
    offset: int, user: str, since: float, until: float = float("inf"), exclude: tuple[str, ...] = ()
) -> Counts:
    """What ``user`` asked between ``since`` and ``until``, from the log past ``offset``
    (taken with :func:`log_size` before ``since``)."""
    with audit_log().open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return count(parse(text.splitlines()), user=user, since=since, until=until, exclude=exclude)


def operator_user(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"
