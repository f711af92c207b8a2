"""Recovery claims keep their state when their size changes: the pure decisions."""

from __future__ import annotations

import pytest

from millrace_operator.volumes import claim_plan


def claim(name="r-0", size="1Gi", storage_class=None, access=("ReadWriteOnce",), **server_fields):
    spec = {"accessModes": list(access), "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    spec.update(server_fields)
    return {"metadata": {"name": name}, "spec": spec}


def names(claims):
    return [c["metadata"]["name"] for c in claims]


def test_missing_claims_are_created():
    desired = [claim("r-1"), claim("r-0")]
    plan = claim_plan([claim("r-0")], desired, "1Gi")
    assert names(plan.create) == ["r-1"]
    assert plan.grow == [] and plan.replace == [] and plan.refusal() is None
    assert names(claim_plan([], desired, "1Gi").create) == ["r-0", "r-1"]


def test_server_defaults_and_another_notation_of_the_same_size_are_no_change():
    stored = claim("r-0", "1Gi", storage_class="standard", volumeMode="Filesystem", volumeName="pv-7")
    stored.update(apiVersion="v1", kind="PersistentVolumeClaim", status={"phase": "Bound"})
    plan = claim_plan([stored], [claim("r-0", "1024Mi")], "1024Mi")
    assert (plan.create, plan.grow, plan.replace, plan.too_large) == ([], [], [], [])


def test_claims_smaller_than_the_size_grow_and_larger_ones_are_refused():
    existing = [claim("r-2", "3Gi"), claim("r-0", "1Gi"), claim("r-1", "2048Mi")]
    desired = [claim(f"r-{i}", "2Gi") for i in range(3)]
    plan = claim_plan(existing, desired, "2Gi")
    assert names(plan.grow) == ["r-0"]
    assert plan.grow[0]["spec"]["resources"]["requests"]["storage"] == "2Gi"  # what to apply
    assert plan.too_large == [("r-2", "3Gi")]
    refusal = plan.refusal()
    assert refusal is not None and refusal.startswith(
        "recovery.volumeSize 2Gi is smaller than the claims r-2 (3Gi): a volume cannot shrink"
    )


@pytest.mark.parametrize(
    "existing",
    [
        claim("r-0", storage_class="slow"),
        claim("r-0", storage_class="slow", size="5Gi"),
        claim("r-0", storage_class="fast", access=("ReadWriteMany",)),
    ],
    ids=["another-class", "another-class-larger", "another-access-mode"],
)
def test_claims_of_another_kind_are_replaced(existing):
    plan = claim_plan([existing], [claim("r-0", storage_class="fast")], "1Gi")
    assert plan.replace == ["r-0"]
    assert plan.create == [] and plan.grow == [] and plan.too_large == []


def test_a_claim_that_names_no_class_takes_any_class():
    plan = claim_plan([claim("r-0", storage_class="standard")], [claim("r-0")], "1Gi")
    assert plan.replace == []


def test_claims_that_are_not_desired_are_left_alone():
    plan = claim_plan([claim("r-0"), claim("r-5")], [claim("r-0")], "1Gi")
    assert (plan.create, plan.grow, plan.replace, plan.too_large) == ([], [], [], [])
