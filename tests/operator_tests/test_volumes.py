"""Recovery volumes keep their state when their size changes: the pure decisions."""

from __future__ import annotations

import pytest

from millrace_operator.volumes import resize_plan, template_change


def template(size="1Gi", storage_class=None, name="recovery", **server_fields):
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    spec.update(server_fields)
    return {"metadata": {"name": name}, "spec": spec}


def claim(name, size):
    return {"metadata": {"name": name}, "spec": {"resources": {"requests": {"storage": size}}}}


def test_server_defaults_and_another_notation_of_the_same_size_are_no_change():
    stored = template("1Gi", volumeMode="Filesystem")
    stored.update(apiVersion="v1", kind="PersistentVolumeClaim", status={"phase": "Pending"})
    assert template_change([stored], [template("1024Mi")]) == "none"
    assert template_change([], []) == "none"


@pytest.mark.parametrize(
    "desired, change",
    [
        ([template("2Gi")], "size"),
        ([template("512Mi")], "size"),
        ([template("1Gi", storage_class="fast")], "other"),
        ([template("1Gi", name="other")], "other"),
        ([], "other"),  # recovery turned off
    ],
)
def test_what_changed_in_the_claim_templates(desired, change):
    assert template_change([template("1Gi")], desired) == change
    if change == "other":
        assert template_change(desired, [template("1Gi")]) == "other"


def test_claims_smaller_than_the_size_grow_and_larger_ones_are_refused():
    plan = resize_plan([claim("r-2", "3Gi"), claim("r-0", "1Gi"), claim("r-1", "2048Mi")], "2Gi")
    assert plan.grow == ["r-0"]
    assert plan.too_large == [("r-2", "3Gi")]
    refusal = plan.refusal()
    assert refusal is not None and refusal.startswith(
        "recovery.volumeSize 2Gi is smaller than the claims r-2 (3Gi): a volume cannot shrink")
    assert resize_plan([claim("r-0", "1Gi")], "1Gi").refusal() is None
    assert resize_plan([], "1Gi").grow == []
