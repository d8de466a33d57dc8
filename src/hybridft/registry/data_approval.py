"""The data a run trains on, in the data catalog: catalogued as drafts, and approved or refused.

``train.run(..., data_gate=...)`` calls ``require_approved`` with the fingerprints of the exact
rows about to be trained on (``hybridft train --require-approved-data``, and always in
``hybridft retrain``); ``catalog_run_data`` records what a finished run read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridft.data.sources import read_source
from hybridft.errors import UserError
from hybridft.registry.access import User, current_user
from hybridft.registry.catalog import get_dataset, register_dataset
from hybridft.registry.client import Registry
from hybridft.specs import JobSpec


def catalog_run_data(
    registry: Registry, spec: JobSpec, fingerprints: dict[str, str], user: User | None = None
) -> list[Any]:
    """Record every dataset version a run trained on in the data catalog (as ``draft``).

    Provenance: the source files, rows, format and schema; for generated data, the generator and
    seed from the ``manifest.json`` beside the files. Instruction sources are catalogued as
    ``prompts`` (demonstration sets), task sources as ``dataset``. Entries that exist (the same
    fingerprint) are left as they are, review status included. Training is not role-gated, so the
    entry is registered under the training user's name with the trainer role for this one action.
    """
    who = user or current_user(tracking_uri=registry.tracking_uri)
    entries = []
    for name, fp in sorted(fingerprints.items()):
        source = spec.data.sources.get(name)
        if source is None:
            continue
        manifest = _manifest_for(source.paths)
        rows = sum(1 for _ in read_source(spec.data, name, source.paths))
        entries.append(
            register_dataset(
                registry,
                fp,
                kind="prompts" if source.kind == "instruction" else "dataset",
                name=name,
                sources=source.paths,
                generator=str(manifest.get("generator", "user")),
                seed=manifest.get("seed"),
                rows=rows,
                format=source.format or "auto",
                schema={"kind": source.kind, "format": source.format or "auto",
                        "labels": source.labels or [],
                        "manifest": manifest.get("path", "")},
                user=User(who.name, (*who.roles, "trainer")),
            )
        )  # fmt: skip
    return entries


class UnapprovedData(UserError):
    """Training refused: ``blocked`` lists ``{source, fingerprint, status}`` not approved."""

    def __init__(self, blocked: list[dict[str, str]]) -> None:
        self.blocked = blocked
        listed = "; ".join(f"{b['source']} {b['fingerprint']} is {b['status']}" for b in blocked)
        super().__init__(
            f"training refused: unapproved data: {listed}. An approver runs `hybridft catalog "
            "review FINGERPRINT --status approved` (see `hybridft catalog list`)"
        )


def require_approved(
    registry: Registry, spec: JobSpec, fingerprints: dict[str, str], user: User | None = None
) -> None:
    """Catalogue ``fingerprints`` (drafts when new); raise UnapprovedData unless all approved."""
    catalog_run_data(registry, spec, fingerprints, user)
    blocked = []
    for name, fp in sorted(fingerprints.items()):
        entry = get_dataset(registry, fp)
        status = entry.status if entry is not None else "not catalogued"
        if status != "approved":
            blocked.append({"source": name, "fingerprint": fp, "status": status})
    if blocked:
        raise UnapprovedData(blocked)


def _manifest_for(paths: list[str]) -> dict[str, Any]:
    """The generator manifest that lists the first of ``paths`` (searched upwards), or {}."""
    first = Path(paths[0]).resolve()
    for parent in list(first.parents)[:4]:
        manifest = parent / "manifest.json"
        if manifest.is_file():
            try:
                doc = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            rel = first.relative_to(parent).as_posix()
            if rel in doc.get("files", {}):
                return {**doc, "path": str(manifest)}
    return {}
