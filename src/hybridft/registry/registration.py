"""A run directory's way into the registry: its evaluation logged to its MLflow run, then a
model version with its lineage, authors and model card (by a trainer; refused when the leakage
shield measured more contamination than the policy allows, or did not measure it).

``hybridft eval`` and ``hybridft register`` call these; so do the report (its registered run)
and retraining.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridft.errors import UserError
from hybridft.evaluate.job import evaluate_spec
from hybridft.evaluate.run import EvalResult
from hybridft.registry.access import User, record_allowed, refuse, require
from hybridft.registry.audit import default_audit_path
from hybridft.registry.bindings import policy_for, policy_sha256
from hybridft.registry.client import ModelRef, Registry
from hybridft.registry.gates import CONTAMINATION
from hybridft.registry.model_card import log_card
from hybridft.registry.tracking import RunRecord, log_eval, register_run
from hybridft.specs import JobSpec


def evaluate_run(
    run_dir: str | Path, tracking_uri: str | None = None, full: bool = False
) -> EvalResult:
    """Score a run's final model on its spec's eval splits; write eval/ + eval.json, log to MLflow.

    The leakage shield runs first (train vs eval overlap, clean and dirty scores); classification
    tasks get calibrated label probabilities and robustness across phrasings; with a task graph,
    held-out-cluster scores and forgetting (instruction tasks before vs after the last stage).
    """
    record = RunRecord.load(run_dir)
    spec = JobSpec.model_validate_json((Path(run_dir) / "spec.json").read_text())
    if full:  # whatever the run's spec skipped (label probabilities)
        spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"label_probs": True})})
    result = evaluate_spec(spec, run_dir, record.model_dir, record.stage_dirs, record.fingerprints)
    log_eval(
        Registry(tracking_uri or record.tracking_uri), record, result, Path(run_dir) / "eval.json"
    )
    return result


def register_version(
    run_dir: str | Path,
    name: str,
    policy_path: str | Path | None = None,
    tracking_uri: str | None = None,
    *,
    user: User | None = None,
    on_event: Callable[[str], None] = lambda _m: None,
) -> ModelRef:
    """Register a run's model as a new version, with its lineage, eval, authors and model card.

    Needs role trainer. The policy is the one bound to ``name``, else ``policy_path``, else
    ``policies/default.yaml`` (``registry.bindings``; ``on_event`` gets a line saying which).
    When it sets ``max_contamination``, the run must have the leakage shield's measurement
    (``hybridft eval``) and stay within it. Every refusal, a missing policy or measurement
    included, is audited and raised; a registration is audited too.
    """
    record = RunRecord.load(run_dir)
    registry = Registry(tracking_uri or record.tracking_uri)
    audit_path = default_audit_path(registry.tracking_uri)
    who = require(
        "trainer",
        "register",
        user=user,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
        model=name,
    )
    where: dict[str, Any] = {"model": name, "extra": {"run": record.run_name}}
    try:
        policy, note = policy_for(registry, name, policy_path)
    except UserError as exc:
        raise refuse(who, "register", f"registration refused: {exc}", audit_path, **where) from None
    on_event(note)
    if policy.max_contamination is not None:
        value = registry.client.get_run(record.mlflow_run_id).data.metrics.get(CONTAMINATION)
        reason = None
        if value is None:
            reason = (
                f"run {record.run_name} has no {CONTAMINATION} metric: expected `hybridft eval "
                f"{run_dir}` first (policy {policy.name} max_contamination "
                f"{policy.max_contamination})"
            )
        elif value > policy.max_contamination:
            reason = (
                f"contamination {value:.4f} > policy {policy.name} max_contamination "
                f"{policy.max_contamination} (leakage shield, {run_dir}/eval.json)"
            )
        if reason is not None:
            raise refuse(who, "register", f"registration refused: {reason}", audit_path, **where)
    ref = register_run(registry, record, name, registered_by=who.name)
    log_card(registry, ref, policy=policy)
    record_allowed(
        who,
        "register",
        audit_path,
        model=name,
        version=ref.version,
        reason=note,
        extra={
            "run": record.run_name,
            "policy": policy.name,
            "policy_sha256": policy_sha256(policy),
        },
    )
    return ref
