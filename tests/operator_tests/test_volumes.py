"""Recovery volumes keep their state when their size changes: the pure decisions."""

from __future__ import annotations

from millrace_operator.volumes import claim_plan


def claim(name, size="1Gi", storage_class=None, **server_fields):
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    spec.update(server_fields)
    return {"metadata": {"name": name}, "spec": spec}


def names(claims):
    return [c["metadata"]["name"] for c in claims]


def test_missing_claims_are_made_and_another_notation_of_the_same_size_is_no_change():
    stored = claim("r-0", "1Gi", storage_class="standard", volumeMode="Filesystem")  # as the server keeps it
    plan = claim_plan([stored], [claim("r-0", "1024Mi"), claim("r-1", "1024Mi")], "1024Mi")
    assert names(plan.create) == ["r-1"]
    assert plan.grow == [] and plan.replace == [] and plan.too_large == [] and plan.refusal() is None


def test_claims_smaller_than_the_size_grow_and_larger_ones_are_refused():
    existing = [claim("r-2", "3Gi"), claim("r-0", "1Gi"), claim("r-1", "2048Mi")]
    plan = claim_plan(existing, [claim(f"r-{i}", "2Gi") for i in range(3)], "2Gi")
    assert names(plan.grow) == ["r-0"]
    assert plan.too_large == [("r-2", "3Gi")]
    refusal = plan.refusal()
    assert refusal is not None and refusal.startswith(
        "recovery.volumeSize 2Gi is smaller than the claims r-2 (3Gi): a volume cannot shrink"
    )


def test_another_storage_class_replaces_the_claims_but_the_clusters_default_does_not():
    existing = [claim("r-0", storage_class="standard")]
    assert claim_plan(existing, [claim("r-0", storage_class="fast")], "1Gi").replace == ["r-0"]
    assert claim_plan(existing, [claim("r-0")], "1Gi").replace == []
