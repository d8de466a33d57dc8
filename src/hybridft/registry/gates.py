"""Governance gates on MLflow aliases: approvals, policy checks, and a compare-and-set promote.

MLflow moves an alias unconditionally and keeps no history. Here an alias moves only through
``promote``: it needs role releaser and the policy bound to the model when one is
(``registry.bindings``), runs the policy gate, and holds an exclusive lock (a file
beside the audit log) around read-alias -> gate -> set-alias -> audit. The caller states which
version it believes holds the alias (``expected_current``); if another promotion moved it in
between, this one is refused. Every attempt, passed or refused, is one audit record.
The lock serialises processes sharing a filesystem (the sqlite default); with a remote tracking
server every releaser must use the same lock file for the compare-and-set to hold.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

from hybridft.errors import UserError
from hybridft.registry.access import User, audit_action, audit_dev_mode, refuse, require
from hybridft.registry.approvals import approvals, counted_approvals
from hybridft.registry.audit import (
    default_audit_path,
    exclusive_lock,
    utc_now,
)
from hybridft.registry.bindings import check_bound, policy_sha256
from hybridft.registry.catalog import get_dataset
from hybridft.registry.client import Registry
from hybridft.registry.policy import Policy

FINGERPRINT_TAG = "hybridft.fingerprint."
CONTAMINATION = "eval/contamination"
ECE = "eval/ece"


@dataclass
class Check:
    check: str
    passed: bool
    detail: str


@dataclass
class GateVerdict:
    """All checks of one policy on one version; ``passed`` only if every check passed."""

    policy: str
    model: str
    version: str
    champion: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Promotion:
    """What ``promote`` did: ``moved`` is True only when the alias now points at ``to_version``."""

    moved: bool
    model: str
    alias: str
    from_version: str | None
    to_version: str
    reason: str
    verdict: GateVerdict | None


def alias_version(registry: Registry, name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at, or None when the alias is unset."""
    from mlflow.exceptions import MlflowException

    try:
        model = registry.client.get_registered_model(name)
    except MlflowException:
        raise UserError(f"model {name}: not registered in {registry.tracking_uri}") from None
    version = model.aliases.get(alias)
    return str(version) if version is not None else None


def _metric_checks(
    policy: Policy, metrics: dict[str, float], champ: dict[str, float] | None, champion: str | None
) -> list[Check]:
    checks = []
    for t in policy.metrics:
        value = metrics.get(t.metric)
        if value is None:
            checks.append(Check(t.metric, False, f"metric {t.metric} not logged on the run"))
            continue
        if t.min is not None:
            ok = value >= t.min
            checks.append(Check(f"{t.metric} >= {t.min}", ok, f"{value:.4f}"))
        for bound, label in ((t.max_drop_vs_champion, "drop"), (t.min_gain_vs_champion, "gain")):
            if bound is None:
                continue
            name = f"{t.metric} {label} vs champion"
            if champ is None:
                checks.append(Check(name, True, "no champion"))
                continue
            base = champ.get(t.metric)
            if base is None:  # fail closed: nothing to compare against is not a pass
                checks.append(Check(name, False, f"champion v{champion} has no {t.metric}"))
                continue
            if label == "drop":
                ok, op = base - value <= bound, "<="
                what = f"drop {base - value:+.4f} {op} {bound}"
            else:
                ok, op = value - base >= bound, ">="
                what = f"gain {value - base:+.4f} {op} {bound}"
            checks.append(Check(name, ok, f"{what} (v{champion}: {base:.4f}, this: {value:.4f})"))
    return checks


def evaluate_gate(
    registry: Registry, policy: Policy, name: str, version: str, releaser: User | None = None
) -> GateVerdict:
    """Check one model version against a policy; reads MLflow, changes nothing.

    Args:
        registry: The MLflow store.
        policy: The policy.
        name: Registered model name.
        version: The version to check.
        releaser: Who would release it: with ``separate_approver_and_releaser``, not an
            approver; approvals given in dev mode count when the releaser acts in dev mode.

    Returns:
        Every check with its outcome and a one-line detail.
    """
    mv = registry.model_version(name, version)
    run = registry.client.get_run(mv.run_id)
    metrics = dict(run.data.metrics)
    champion = alias_version(registry, name, policy.champion_alias)
    champ = None
    if champion is not None:
        champ = dict(
            registry.client.get_run(registry.model_version(name, champion).run_id).data.metrics
        )
    verdict = GateVerdict(policy.name, name, str(version), champion)
    verdict.checks += _metric_checks(policy, metrics, champ, champion)
    if policy.max_ece is not None:
        ece = metrics.get(ECE)
        verdict.checks.append(
            Check(f"{ECE} <= {policy.max_ece}", False, f"metric {ECE} not logged on the run")
            if ece is None
            else Check(f"{ECE} <= {policy.max_ece}", ece <= policy.max_ece, f"{ece:.4f}")
        )
    if policy.max_contamination is not None:
        verdict.checks.append(_contamination_check(policy.max_contamination, metrics, mv, run))
    need = policy.required_approvals
    if need.count:
        got, skipped = counted_approvals(mv, need.role, audit_dev_mode(releaser))
        detail = f"{len(got)} of {need.count} ({', '.join(got) or 'none'})"
        if skipped:
            detail += f"; not counted: {', '.join(skipped)}"
        verdict.checks.append(Check(f"approvals by {need.role}", len(got) >= need.count, detail))
    if releaser is not None and policy.separate_approver_and_releaser:
        approved = releaser.name in approvals(mv)
        who = releaser.name
        detail = f"{who} approved this version" if approved else f"{who} did not approve"
        verdict.checks.append(Check("releaser is not an approver", not approved, detail))
    if policy.require_approved_data:
        verdict.checks.append(_data_check(registry, mv))
    return verdict


def _contamination_check(limit: float, metrics: dict[str, float], mv: Any, run: Any) -> Check:
    name = f"contamination <= {limit}"
    value: float | None = metrics.get(CONTAMINATION)
    if value is None:
        tag = mv.tags.get(CONTAMINATION) or run.data.tags.get(CONTAMINATION)
        try:
            value = float(tag) if tag is not None else None
        except ValueError:
            return Check(name, False, f"tag {CONTAMINATION}={tag!r} is not a number")
    if value is None:
        return Check(name, False, f"no {CONTAMINATION} metric or tag: contamination not measured")
    return Check(name, value <= limit, f"{value:.4f}")


def _data_check(registry: Registry, mv: Any) -> Check:
    fps = {
        k.removeprefix(FINGERPRINT_TAG): v
        for k, v in mv.tags.items()
        if k.startswith(FINGERPRINT_TAG)
    }
    if not fps:
        return Check(
            "training data approved", False, "no hybridft.fingerprint.* tags: unknown data"
        )
    bad = []
    for source, fp in sorted(fps.items()):
        entry = get_dataset(registry, fp)
        if entry is None or entry.status != "approved":
            bad.append(f"{source}={fp} ({entry.status if entry else 'not in catalog'})")
    detail = "not approved: " + "; ".join(bad) if bad else f"{len(fps)} dataset(s) approved"
    return Check("training data approved", not bad, detail)


def promote(
    registry: Registry,
    policy: Policy,
    name: str,
    version: str,
    alias: str,
    user: User | None = None,
    reason: str = "",
    *,
    expected_current: str | None | EllipsisType = ...,
    audit_path: str | Path | None = None,
) -> Promotion:
    """Move ``name@alias`` to ``version`` if the policy gate passes and nobody moved it meanwhile.

    Args:
        registry: The MLflow store.
        policy: The policy guarding ``alias``.
        name: Registered model name.
        version: The version to promote.
        alias: One of ``policy.aliases``.
        user: The releaser (default ``current_user()``); with the policy's
            ``separate_approver_and_releaser``, not one of the version's approvers.
        reason: Why, for the audit log.
        expected_current: The version the caller believes holds the alias (None: unset);
            default: read when the call starts.
        audit_path: The audit log; the lock file ``<audit>.lock`` sits beside it.

    Returns:
        The outcome; ``moved`` is False when ``policy`` is not the one bound to the model, the
        gate or the compare-and-set refused, or the version does not exist (``reason`` says
        which).

    Raises:
        UserError: The user is not a releaser, or the policy does not guard ``alias``.
    """
    audit_path = Path(audit_path or default_audit_path(registry.tracking_uri))
    version = str(version)
    where: dict[str, Any] = {"model": name, "version": version, "alias": alias}
    who = require(
        "releaser",
        "promote",
        user=user,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
        **where,
    )
    not_bound = check_bound(registry, name, policy)  # the model's own policy, or refused
    if not_bound is None and alias not in policy.aliases:
        why = f"policy {policy.name} guards {', '.join(policy.aliases)}; not alias {alias!r}"
        raise refuse(who, "promote", why, audit_path, **where)
    if expected_current is ...:
        expected_current = alias_version(registry, name, alias)
    with exclusive_lock(audit_path.with_name(audit_path.name + ".lock")):
        current = alias_version(registry, name, alias)
        verdict: GateVerdict | None = None
        if not_bound is not None:
            moved, why = False, not_bound
        elif current != expected_current:
            moved = False
            why = (
                f"{alias} moved from {expected_current or '(none)'} to {current or '(none)'} "
                "since this promotion was requested"
            )
        else:
            try:
                verdict = evaluate_gate(registry, policy, name, version, releaser=who)
            except UserError as exc:  # e.g. no such version: still an audited attempt
                moved, why = False, str(exc)
            else:
                moved = verdict.passed
                failures = "; ".join(f"{c.check}: {c.detail}" for c in verdict.failures())
                why = reason if moved else f"gate failed: {failures}"
        if moved:
            registry.set_alias(name, alias, version)
            # Mirror into MLflow: the version itself shows who put it at this alias, and when.
            mirror = {
                "who": who.name,
                "when": utc_now(),
                "from": current,
                "reason": reason,
                "policy": policy.name,
            }
            registry.client.set_model_version_tag(
                name, version, f"hybridft.promoted.{alias}", json.dumps(mirror)
            )
        audit_action(
            who,
            "promote",
            audit_path,
            outcome="ok" if moved else "refused",
            reason=why,
            model=name,
            alias=alias,
            from_version=current,
            to_version=version,
            verdict=verdict.to_dict() if verdict else None,
            extra={
                "policy": policy.name,
                "policy_sha256": policy_sha256(policy),
                "expected_current": expected_current,
                "requested_reason": reason,
            },
        )
    return Promotion(moved, name, alias, current, version, why, verdict)
