"""The data catalog: every dataset (or prompt / demonstration set) version, its provenance, review.

Storage: the MLflow tracking store itself, so any tracking URI works and the catalog travels with
the runs that cite it. Experiment ``hybridft-catalog`` holds one run per fingerprint (run name =
fingerprint); provenance and the current review are run tags (``hybridft.catalog.*``), searchable
in the UI and by ``search_runs``. Each review also leaves a history tag
``hybridft.catalog.review.<UTC time>`` and an audit record. Runs, not registered models: a run
takes arbitrary tags, needs no artifact and is found by an indexed tag filter. Two processes
registering the same new fingerprint at once may leave two runs; the oldest one is the entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybridft.errors import UserError
from hybridft.registry.access import User, audit_action, require
from hybridft.registry.audit import default_audit_path, utc_now
from hybridft.registry.client import Registry

CATALOG_EXPERIMENT = "hybridft-catalog"
PREFIX = "hybridft.catalog."
STATUSES = ("draft", "approved", "rejected")
Kind = Literal["dataset", "prompts"]
FINGERPRINT = re.compile(r"^[A-Za-z0-9_.:\-]{4,128}$")
MAX_TAG = 7500  # MLflow run tag values stop at 8000 characters


@dataclass
class DatasetEntry:
    """One catalogued dataset version."""

    fingerprint: str
    kind: str
    status: str
    name: str = ""
    sources: list[str] = field(default_factory=list)
    generator: str = "user"  # "user" or the generator's name
    seed: int | None = None
    rows: int | None = None
    format: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    registered_by: str = ""
    registered_at: str = ""
    reviewer: str = ""
    reviewed_at: str = ""
    comment: str = ""
    run_id: str = ""


def _check_fingerprint(fingerprint: str) -> None:
    if not FINGERPRINT.match(fingerprint):
        raise UserError(f"fingerprint {fingerprint!r}: expected 4-128 of [A-Za-z0-9_.:-]")


def _json_tag(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    if len(text) > MAX_TAG:
        raise UserError(f"catalog entry too large for an MLflow tag ({len(text)} > {MAX_TAG})")
    return text


def _entry(run: Any) -> DatasetEntry:
    tags = {k.removeprefix(PREFIX): v for k, v in run.data.tags.items() if k.startswith(PREFIX)}
    seed, rows = tags.get("seed", ""), tags.get("rows", "")
    return DatasetEntry(
        fingerprint=tags["fingerprint"],
        kind=tags.get("kind", "dataset"),
        status=tags.get("status", "draft"),
        name=tags.get("name", ""),
        sources=json.loads(tags.get("sources", "[]")),
        generator=tags.get("generator", "user"),
        seed=int(seed) if seed else None,
        rows=int(rows) if rows else None,
        format=tags.get("format", ""),
        schema=json.loads(tags.get("schema", "{}")),
        registered_by=tags.get("registered_by", ""),
        registered_at=tags.get("registered_at", ""),
        reviewer=tags.get("reviewer", ""),
        reviewed_at=tags.get("reviewed_at", ""),
        comment=tags.get("comment", ""),
        run_id=run.info.run_id,
    )


def _find_run(registry: Registry, fingerprint: str) -> Any | None:
    exp = registry.client.get_experiment_by_name(CATALOG_EXPERIMENT)
    if exp is None:
        return None
    runs = registry.client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{PREFIX}fingerprint` = '{fingerprint}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def get_dataset(registry: Registry, fingerprint: str) -> DatasetEntry | None:
    """The catalog entry of ``fingerprint``, or None when it was never registered."""
    _check_fingerprint(fingerprint)
    run = _find_run(registry, fingerprint)
    return _entry(run) if run is not None else None


def list_datasets(
    registry: Registry, *, status: str | None = None, kind: str | None = None
) -> list[DatasetEntry]:
    """Every catalog entry, oldest first, optionally only one status and/or kind."""
    exp = registry.client.get_experiment_by_name(CATALOG_EXPERIMENT)
    if exp is None:
        return []
    filters = [f"tags.`{PREFIX}{k}` = '{v}'" for k, v in (("status", status), ("kind", kind)) if v]
    runs = registry.client.search_runs(
        [exp.experiment_id],
        filter_string=" and ".join(filters),
        order_by=["attributes.start_time ASC"],
        max_results=50_000,
    )
    seen: dict[str, DatasetEntry] = {}
    for run in runs:
        entry = _entry(run)
        seen.setdefault(entry.fingerprint, entry)  # the oldest run of a fingerprint is the entry
    return list(seen.values())


def register_dataset(
    registry: Registry,
    fingerprint: str,
    *,
    kind: Kind = "dataset",
    name: str = "",
    sources: Sequence[str | Path] | None = None,
    generator: str = "user",
    seed: int | None = None,
    rows: int | None = None,
    format: str = "",
    schema: dict[str, Any] | None = None,
    user: User | None = None,
    audit_path: str | Path | None = None,
) -> DatasetEntry:
    """Catalogue a dataset version as ``draft`` (idempotent: an existing entry is returned as is).

    Args:
        registry: The MLflow store.
        fingerprint: The content fingerprint (``hybridft.fingerprint.*`` on runs and versions).
        kind: ``dataset`` or ``prompts`` (prompt / demonstration sets).
        name: A human name (the data source's name).
        sources: The files it was read from.
        generator: ``user`` for user-supplied data, else the generator that made it.
        seed: The generator's seed.
        rows: Row count.
        format: Record format (``chat``, ``instruction``, ``task`` ...).
        schema: Field names and types, or any small description of the schema.
        user: The acting user (needs role trainer; default ``current_user()``).
        audit_path: The audit log (default: beside the store).

    Returns:
        The entry.
    """
    _check_fingerprint(fingerprint)
    audit_path = audit_path or default_audit_path(registry.tracking_uri)
    who = require(
        "trainer",
        "register_dataset",
        user=user,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
        model=name,
    )
    existing = get_dataset(registry, fingerprint)
    if existing is not None:
        return existing
    now = utc_now()
    tags = {
        "fingerprint": fingerprint,
        "kind": kind,
        "status": "draft",
        "name": name,
        "sources": _json_tag([str(s) for s in sources or []]),
        "generator": generator,
        "seed": "" if seed is None else str(seed),
        "rows": "" if rows is None else str(rows),
        "format": format,
        "schema": _json_tag(schema or {}),
        "registered_by": who.name,
        "registered_at": now,
    }
    run = registry.client.create_run(
        registry.experiment_id(CATALOG_EXPERIMENT),
        run_name=fingerprint,
        tags={PREFIX + k: v for k, v in tags.items()},
    )
    registry.end_run(run.info.run_id)
    audit_action(
        who,
        "register_dataset",
        audit_path,
        model=name,
        extra={"fingerprint": fingerprint, "kind": kind},
    )
    found = get_dataset(registry, fingerprint)
    assert found is not None
    return found


def review_dataset(
    registry: Registry,
    fingerprint: str,
    status: str,
    *,
    reviewer: User | None = None,
    comment: str = "",
    audit_path: str | Path | None = None,
) -> DatasetEntry:
    """Approve, reject or re-open (``draft``) a catalogued dataset.

    Args:
        registry: The MLflow store.
        fingerprint: The dataset version.
        status: ``approved``, ``rejected`` or ``draft``.
        reviewer: The acting user (needs role approver; default ``current_user()``).
        comment: Why.
        audit_path: The audit log (default: beside the store).

    Returns:
        The updated entry.

    Raises:
        UserError: Unknown status or fingerprint, or the reviewer is not an approver.
    """
    if status not in STATUSES:
        raise UserError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
    _check_fingerprint(fingerprint)
    audit_path = audit_path or default_audit_path(registry.tracking_uri)
    who = require(
        "approver",
        "review_dataset",
        user=reviewer,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
    )
    run = _find_run(registry, fingerprint)
    if run is None:
        raise UserError(f"fingerprint {fingerprint}: not in the data catalog (register it first)")
    before = run.data.tags.get(PREFIX + "status", "draft")
    now = utc_now()
    review = {"status": status, "reviewer": who.name, "when": now, "comment": comment}
    registry.set_tags(
        run.info.run_id,
        {
            PREFIX + "status": status,
            PREFIX + "reviewer": who.name,
            PREFIX + "reviewed_at": now,
            PREFIX + "comment": comment[:MAX_TAG],
            PREFIX + "review." + now.replace(":", "").replace("+", "_"): _json_tag(review),
        },
    )
    audit_action(
        who,
        "review_dataset",
        audit_path,
        reason=comment,
        extra={"fingerprint": fingerprint, "from_status": before, "to_status": status},
    )
    entry = get_dataset(registry, fingerprint)
    assert entry is not None
    return entry
