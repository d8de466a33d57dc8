"""Approvals of model versions, and who may give them (separation of duties).

An approval is the version tag ``hybridft.approval.<user>``, so one user is one approval however
often they approve: N required approvals are N distinct users, and users are who the store
says (``registry.access``: the MLflow server's authenticated user, or the login account). The
version's authors, who trained it (``hybridft.trained_by``, from its run) or registered it
(``hybridft.registered_by``), cannot approve it: ``approve`` refuses them and the gate does not
count an approval of theirs found on the version. Approvals given in dev mode (declared
identities) count only for gates that run in dev mode too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridft.registry.access import User, record_allowed, refuse, require
from hybridft.registry.audit import default_audit_path, utc_now
from hybridft.registry.client import Registry

APPROVAL_TAG = "hybridft.approval."
TRAINED_BY = "hybridft.trained_by"  # run and version tag: who ran the training
REGISTERED_BY = "hybridft.registered_by"  # version tag: who registered it


def approvals(mv: Any) -> dict[str, dict[str, Any]]:
    """``{user: {role, when, comment}}`` from the version's ``hybridft.approval.<user>`` tags."""
    out = {}
    for key, value in mv.tags.items():
        if key.startswith(APPROVAL_TAG):
            try:
                out[key.removeprefix(APPROVAL_TAG)] = json.loads(value)
            except ValueError:
                continue  # a hand-edited tag that is not ours does not count as an approval
    return out


def authors(mv: Any) -> set[str]:
    """Who trained or registered the version (as recorded on it)."""
    return {mv.tags[k] for k in (TRAINED_BY, REGISTERED_BY) if mv.tags.get(k)}


def counted_approvals(mv: Any, role: str, dev_mode: bool) -> tuple[list[str], list[str]]:
    """The users whose approval in ``role`` counts, and the others with why they do not
    (``dev_mode``: whether approvals given in dev mode count, i.e. the gate runs in it)."""
    counted, skipped = [], []
    own = authors(mv)
    for user, approval in sorted(approvals(mv).items()):
        if approval.get("role") != role:
            continue
        if user in own:
            skipped.append(f"{user} (trained or registered it)")
        elif approval.get("dev_mode") and not dev_mode:
            skipped.append(f"{user} (given in dev mode)")
        else:
            counted.append(user)
    return counted, skipped


def approve(
    registry: Registry,
    name: str,
    version: str,
    user: User | None = None,
    role: str = "approver",
    comment: str = "",
    audit_path: str | Path | None = None,
) -> dict[str, Any]:
    """Record ``user``'s approval of a model version as the tag ``hybridft.approval.<user>``.

    Args:
        registry: The MLflow store.
        name: Registered model name.
        version: The version approved.
        user: The approver (default ``current_user()``); must hold ``role``.
        role: The role the approval is given in (what ``required_approvals.role`` counts).
        comment: Why.
        audit_path: The audit log (default: beside the store).

    Returns:
        The approval ``{role, when, comment}`` (and ``dev_mode`` when given in dev mode).

    Raises:
        UserError: The user lacks ``role``, or trained or registered this version.
    """
    audit_path = audit_path or default_audit_path(registry.tracking_uri)
    version = str(version)
    who = require(
        role,
        "approve",
        user=user,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
        model=name,
        version=version,
    )
    mv = registry.model_version(name, version)
    if who.name in authors(mv):
        raise refuse(
            who,
            "approve",
            f"{who.name} may not approve {name}@{version}: they trained or registered it "
            "(an approval must come from someone else)",
            audit_path,
            model=name,
            version=version,
        )
    approval: dict[str, Any] = {"role": role, "when": utc_now(), "comment": comment}
    if who.dev_mode:
        approval["dev_mode"] = True
    registry.client.set_model_version_tag(
        name, version, APPROVAL_TAG + who.name, json.dumps(approval)
    )
    record_allowed(who, "approve", audit_path, reason=comment, model=name, version=version)
    return approval
