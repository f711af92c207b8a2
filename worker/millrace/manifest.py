"""A Dataflow manifest for Kubernetes, carrying a flow's code inline: what ``millrace manifest``
prints for ``kubectl apply -f -`` (as Bytewax's waxctl offers).

The limits below are the CRD's (crds/dataflow.yaml; tests/test_manifest.py holds them equal),
checked here so a mistake is named on the laptop rather than by the API server. This module
cannot read the CRD: it is not part of the installed package.

>>> manifest = dataflow_manifest("words", "flow = ...\\n", processes=2, recovery_size="1Gi")
>>> print(to_yaml(manifest), end="")
apiVersion: millrace.dev/v1alpha1
kind: Dataflow
metadata:
  name: words
spec:
  processes: 2
  workersPerProcess: 1
  recovery:
    enabled: true
    volumeSize: 1Gi
  flow:
    code: |
      flow = ...
>>> dataflow_manifest("Words", "flow = ...")
Traceback (most recent call last):
...
millrace.manifest.ManifestError: 'Words' is not a valid name: ... lowercase letters, digits and '-', ...
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = [
    "ManifestError",
    "dataflow_manifest",
    "to_yaml",
    "check_name",
    "check_volume_size",
    "MAX_PROCESSES",
    "MAX_WORKERS_PER_PROCESS",
]

API_VERSION = "millrace.dev/v1alpha1"
KIND = "Dataflow"
#: The most worker pods a Dataflow runs (``spec.processes``).
MAX_PROCESSES = 1000
#: The most worker threads per pod (``spec.workersPerProcess``).
MAX_WORKERS_PER_PROCESS = 256
#: The most characters of inline code (``spec.flow.code``); a bigger flow goes in the image.
MAX_CODE_CHARACTERS = 262144
#: A Kubernetes quantity without a sign or exponent, as spec.recovery.volumeSize takes it.
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
#: The name is the Service's (a DNS-1035 label: it starts with a letter) and, with ``-INDEX``,
#: each worker pod's hostname (a DNS label: at most 63 characters).
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_LENGTH = 63


class ManifestError(ValueError):
    """An argument the Dataflow resource would refuse; the message says what is allowed."""


def check_name(name: str, processes: int = 1) -> None:
    """Refuse a name the operator cannot give the Service ``NAME`` and the pods ``NAME-INDEX``.

    >>> check_name("word-count", processes=3)
    >>> check_name("a" * 62, processes=11)
    Traceback (most recent call last):
    ...
    millrace.manifest.ManifestError: 'aaa...a' is too long: with 11 processes, at most 60 characters (pod names ...)
    """
    longest = LABEL_LENGTH - len(f"-{processes - 1}")
    if not NAME.match(name):
        raise ManifestError(
            f"{name!r} is not a valid name: it needs lowercase letters, digits and '-', starting with a "
            "letter and ending with a letter or digit (a DNS label, as the flow's Service is named)"
        )
    if len(name) > longest:
        shown = name if len(name) <= 12 else f"{name[:3]}...{name[-1]}"
        raise ManifestError(
            f"{shown!r} is too long: with {processes} processes, at most {longest} characters "
            f"(pod names NAME-INDEX are at most {LABEL_LENGTH})"
        )


def check_volume_size(size: str) -> None:
    """Refuse what is not a Kubernetes quantity of bytes (the CRD's pattern).

    >>> check_volume_size("1.5Gi")
    """
    if not QUANTITY.match(size):
        raise ManifestError(
            f"{size!r} is not a volume size: a number with an optional suffix Ki, Mi, Gi, Ti, "
            "Pi, Ei, k, M, G, T, P or E (256Mi, 1Gi, 1.5G)"
        )


def _check_count(what: str, value: int, maximum: int) -> None:
    if not 1 <= value <= maximum:
        raise ManifestError(f"{what} must be from 1 to {maximum}, got {value}")


def dataflow_manifest(
    name: str,
    code: str,
    *,
    processes: int = 1,
    workers_per_process: int = 1,
    recovery_size: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """A Dataflow ``name`` running ``code`` (Python defining ``flow``) on ``processes`` pods of
    ``workers_per_process`` workers; with ``recovery_size``, a recovery volume of that size per
    pod; without ``image``, the operator's worker image.

    >>> dataflow_manifest("w", "flow = ...", recovery_size="1 GB")
    Traceback (most recent call last):
    ...
    millrace.manifest.ManifestError: '1 GB' is not a volume size: a number with an optional suffix Ki, Mi, ...
    """
    check_name(name, processes)
    _check_count("processes", processes, MAX_PROCESSES)
    _check_count("workers per process", workers_per_process, MAX_WORKERS_PER_PROCESS)
    if not code.strip():
        raise ManifestError("the flow's code is empty")
    if len(code) > MAX_CODE_CHARACTERS:
        raise ManifestError(
            f"the flow's code has {len(code)} characters, more than the {MAX_CODE_CHARACTERS} a Dataflow "
            "holds inline: put it in the image and name it with spec.flow.module"
        )
    spec: dict[str, Any] = {}
    if image is not None:
        if not image.strip():
            raise ManifestError("the image name is empty")
        spec["image"] = image
    spec["processes"] = processes
    spec["workersPerProcess"] = workers_per_process
    if recovery_size is not None:
        check_volume_size(recovery_size)
        spec["recovery"] = {"enabled": True, "volumeSize": recovery_size}
    spec["flow"] = {"code": code}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the code) as literal blocks, readable as the file they came from."""


#: Line breaks of YAML other than ``\n``: PyYAML writes them unescaped, and a reader turns
#: them into ``\n`` or a space. A double-quoted string escapes them.
_OTHER_BREAKS = frozenset("\r\x85\u2028\u2029")


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML falls back to a quoted string itself where a block cannot hold the text exactly
    # (trailing spaces on a line, tabs, some control characters): the value is kept either way.
    style = None
    if not _OTHER_BREAKS.isdisjoint(value):
        style = '"'
    elif "\n" in value:
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def to_yaml(manifest: dict[str, Any]) -> str:
    """``manifest`` as a YAML document, keys in the order given."""
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
