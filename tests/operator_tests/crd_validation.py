"""Validate objects against a CRD's own schema, as the API server would with strict field
validation: the OpenAPI v3 schema (JSON Schema draft 4 semantics), unknown fields refused, and
the x-kubernetes-validations CEL rules evaluated with cel-python."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "dataflow.yaml"


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def version_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def _strict(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Unknown fields are errors (kubectl's default strict field validation), except under
    metadata, which the API server validates itself."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {
            name: (sub if name == "metadata" and not path else _strict(sub, f"{path}.{name}"))
            for name, sub in schema["properties"].items()
        }
        schema.setdefault("additionalProperties", False)
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"], f"{path}.*")
    return schema


def _cel_errors(schema: dict[str, Any], value: Any, path: str, env: celpy.Environment) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: the server checks it on updates only
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _cel_errors(sub, value[name], f"{path}.{name}" if path else name, env)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{index}]", env)
    return errors


def errors(obj: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Every reason the API server would refuse ``obj``, each naming the field."""
    schema = version_schema(crd or load_crd())
    validator = jsonschema.Draft4Validator(_strict(copy.deepcopy(schema)))
    found = []
    for error in validator.iter_errors(obj):
        where = ".".join(str(part) for part in error.absolute_path) or "<root>"
        found.append(f"{where}: {error.message}")
    if found:
        return found  # CEL runs only on objects that pass the schema, as on the server
    return _cel_errors(schema, obj, "", celpy.Environment())
