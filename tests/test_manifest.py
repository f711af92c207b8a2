"""millrace.manifest, the pure builder behind `millrace manifest`: what it prints is a Dataflow
the API server accepts (the CRD's schema, strict, and its CEL rules), carrying the code exactly,
and what the CRD would refuse is refused here first, saying what is allowed."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from millrace.manifest import (
    API_VERSION,
    KIND,
    MAX_CODE_CHARACTERS,
    MAX_PROCESSES,
    MAX_WORKERS_PER_PROCESS,
    QUANTITY,
    ManifestError,
    dataflow_manifest,
    to_yaml,
)

from .operator_tests.crd_validation import errors, load_crd, version_schema

CODE = "from millrace.dataflow import Dataflow\n\nflow = Dataflow()\n"


def _printed(**kwargs: Any) -> dict[str, Any]:
    """The manifest as `kubectl apply` reads it: the YAML text, parsed."""
    document = yaml.safe_load(to_yaml(dataflow_manifest(**kwargs)))
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"processes": 3, "workers_per_process": 2},
        {"recovery_size": "256Mi"},
        {"recovery_size": "1.5G", "image": "registry.example/flows:1", "processes": MAX_PROCESSES},
        {"workers_per_process": MAX_WORKERS_PER_PROCESS},
    ],
)
def test_the_printed_manifest_is_a_valid_dataflow(kwargs: dict[str, Any]) -> None:
    document = _printed(name="word-count", code=CODE, **kwargs)
    assert errors(document) == []
    assert document["apiVersion"] == API_VERSION and document["kind"] == KIND
    assert document["metadata"] == {"name": "word-count"}
    spec = document["spec"]
    assert spec["flow"] == {"code": CODE}
    assert spec["processes"] == kwargs.get("processes", 1)
    assert spec["workersPerProcess"] == kwargs.get("workers_per_process", 1)
    if "recovery_size" in kwargs:
        assert spec["recovery"] == {"enabled": True, "volumeSize": kwargs["recovery_size"]}
    else:
        assert "recovery" not in spec
    assert spec.get("image") == kwargs.get("image")


def test_the_code_reads_as_a_literal_block() -> None:
    text = to_yaml(dataflow_manifest("w", CODE))
    assert "  flow:\n    code: |\n      from millrace.dataflow import Dataflow\n\n      flow = Dataflow()\n" in text


@example("flow = 1\x85\n")  # NEL: a line break to YAML, which PyYAML writes unescaped
@example("a = '\u2028'\r\nflow = 1\n")
@given(st.text(min_size=1, max_size=300).filter(str.strip))
def test_any_code_comes_back_exactly(code: str) -> None:
    """Tabs, trailing spaces, quotes, no final newline, unicode: what YAML cannot hold in a
    block is quoted, and the text survives either way."""
    document = _printed(name="w", code=code)
    assert document["spec"]["flow"]["code"] == code


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Words"}, "'Words' is not a valid name: it needs lowercase letters, digits and '-'"),
        ({"name": "1st"}, "starting with a letter"),
        ({"name": "w-"}, "ending with a letter or digit"),
        ({"name": "w.x"}, "is not a valid name"),
        ({"name": ""}, "is not a valid name"),
        ({"name": "a" * 62}, "at most 61 characters"),
        ({"name": "a" * 61, "processes": 11}, "with 11 processes, at most 60 characters"),
        ({"processes": 0}, "processes must be from 1 to 1000, got 0"),
        ({"processes": MAX_PROCESSES + 1}, "processes must be from 1 to 1000"),
        ({"workers_per_process": MAX_WORKERS_PER_PROCESS + 1}, "workers per process must be from 1 to 256"),
        ({"recovery_size": "1GB"}, "'1GB' is not a volume size"),
        ({"recovery_size": "-1Gi"}, "is not a volume size"),
        ({"recovery_size": ""}, "is not a volume size"),
        ({"image": " "}, "the image name is empty"),
        ({"code": " \n"}, "the flow's code is empty"),
        ({"code": "#" * (MAX_CODE_CHARACTERS + 1)}, "more than the 262144 a Dataflow holds inline"),
    ],
)
def test_what_the_crd_refuses_is_refused_first(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"name": "w", "code": CODE, **kwargs}
    with pytest.raises(ManifestError) as raised:
        dataflow_manifest(**arguments)
    assert message in str(raised.value)


def test_the_longest_name_allowed_fits_every_pod_name() -> None:
    name = "a" * 60
    document = _printed(name=name, code=CODE, processes=11)
    assert errors(document) == []
    assert max(len(f"{name}-{index}") for index in range(11)) == 63


def test_the_limits_are_the_crds() -> None:
    """The builder cannot read the CRD (it is not installed with millrace): its copies of the
    limits are held equal to it here."""
    spec = version_schema(load_crd())["properties"]["spec"]["properties"]
    assert spec["processes"]["maximum"] == MAX_PROCESSES and spec["processes"]["minimum"] == 1
    assert spec["workersPerProcess"]["maximum"] == MAX_WORKERS_PER_PROCESS
    assert spec["flow"]["properties"]["code"]["maxLength"] == MAX_CODE_CHARACTERS
    assert spec["recovery"]["properties"]["volumeSize"]["pattern"] == QUANTITY.pattern
    assert load_crd()["spec"]["group"] + "/" + load_crd()["spec"]["versions"][0]["name"] == API_VERSION
    assert load_crd()["spec"]["names"]["kind"] == KIND
