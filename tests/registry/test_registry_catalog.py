"""The data catalog lives in the MLflow store: register, review, list, and role checks."""

from __future__ import annotations

import pytest

from hybridft.errors import UserError
from hybridft.registry.access import User
from hybridft.registry.audit import default_audit_path, read_audit
from hybridft.registry.catalog import get_dataset, list_datasets, register_dataset, review_dataset
from hybridft.registry.client import Registry

TRAINER = User("tina", ("trainer",))
APPROVER = User("carol", ("approver",))


def test_register_review_and_read_back_from_a_fresh_client(registry):
    entry = register_dataset(
        registry,
        "abc123def456",
        name="tickets",
        sources=["data/demo/tickets/train.jsonl"],
        generator="synth.tickets",
        seed=7,
        rows=500,
        format="task",
        schema={"prompt": "str", "completion": "str"},
        user=TRAINER,
    )
    assert entry.status == "draft" and entry.registered_by == "tina" and entry.seed == 7
    again = register_dataset(registry, "abc123def456", name="other", user=TRAINER)
    assert again.run_id == entry.run_id and again.name == "tickets"  # idempotent

    review_dataset(registry, "abc123def456", "approved", reviewer=APPROVER, comment="sampled 50")
    fresh = get_dataset(Registry(registry.tracking_uri), "abc123def456")
    assert fresh is not None
    assert (fresh.status, fresh.reviewer, fresh.comment) == ("approved", "carol", "sampled 50")
    assert fresh.sources == ["data/demo/tickets/train.jsonl"] and fresh.rows == 500
    assert fresh.schema == {"prompt": "str", "completion": "str"} and fresh.reviewed_at

    run = registry.client.get_run(fresh.run_id)
    history = [k for k in run.data.tags if k.startswith("hybridft.catalog.review.")]
    assert len(history) == 1
    reviews = read_audit(default_audit_path(registry.tracking_uri), action="review_dataset")
    assert reviews[0].extra == {
        "fingerprint": "abc123def456",
        "from_status": "draft",
        "to_status": "approved",
    }


def test_list_filters_by_status_and_kind(registry):
    register_dataset(registry, "fp-data-1", user=TRAINER)
    register_dataset(registry, "fp-prompts-1", kind="prompts", name="demos", user=TRAINER)
    register_dataset(registry, "fp-data-2", user=TRAINER)
    review_dataset(registry, "fp-data-2", "rejected", reviewer=APPROVER, comment="PII")
    assert [e.fingerprint for e in list_datasets(registry)] == [
        "fp-data-1",
        "fp-prompts-1",
        "fp-data-2",
    ]
    assert [e.fingerprint for e in list_datasets(registry, kind="prompts")] == ["fp-prompts-1"]
    assert [e.fingerprint for e in list_datasets(registry, status="rejected")] == ["fp-data-2"]
    assert get_dataset(registry, "fp-never-seen") is None


def test_review_needs_an_approver_and_a_known_dataset(registry):
    register_dataset(registry, "fp-data-1", user=TRAINER)
    with pytest.raises(UserError, match=r"^tina \(trainer\) may not review_dataset"):
        review_dataset(registry, "fp-data-1", "approved", reviewer=TRAINER)
    assert get_dataset(registry, "fp-data-1").status == "draft"
    with pytest.raises(UserError, match="not in the data catalog"):
        review_dataset(registry, "fp-unknown", "approved", reviewer=APPROVER)
    with pytest.raises(UserError, match="expected one of draft, approved, rejected"):
        review_dataset(registry, "fp-data-1", "ok", reviewer=APPROVER)
    with pytest.raises(UserError, match="expected 4-128"):
        get_dataset(registry, "x' or '1'='1")
    with pytest.raises(UserError, match="may not register_dataset"):
        register_dataset(registry, "fp-data-9", user=APPROVER)
