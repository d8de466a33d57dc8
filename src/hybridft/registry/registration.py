"""A run directory's way into the registry: its evaluation logged to its MLflow run, then a
model version with its lineage and model card (refused when the leakage shield measured more
contamination than the policy allows).

``hybridft eval`` and ``hybridft register`` call these; so do the report (its registered run)
and retraining.
"""

from __future__ import annotations

from pathlib import Path

from hybridft.errors import UserError
from hybridft.evaluate.job import evaluate_spec
from hybridft.evaluate.run import EvalResult
from hybridft.registry.access import current_user
from hybridft.registry.audit import AuditRecord, append_audit, default_audit_path
from hybridft.registry.client import ModelRef, Registry
from hybridft.registry.gates import CONTAMINATION
from hybridft.registry.model_card import log_card
from hybridft.registry.policy import load_policy
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
) -> ModelRef:
    """Register a run's model as a new version, with its lineage, eval and model card.

    With a policy whose ``max_contamination`` is set, a run whose measured contamination (the
    leakage shield of ``hybridft eval``) exceeds it is refused, and the refusal is audited.
    """
    record = RunRecord.load(run_dir)
    registry = Registry(tracking_uri or record.tracking_uri)
    policy = load_policy(policy_path) if policy_path else None
    if policy is not None and policy.max_contamination is not None:
        value = registry.client.get_run(record.mlflow_run_id).data.metrics.get(CONTAMINATION)
        if value is not None and value > policy.max_contamination:
            reason = (
                f"contamination {value:.4f} > policy {policy.name} max_contamination "
                f"{policy.max_contamination} (leakage shield, {run_dir}/eval.json)"
            )
            who = current_user()
            append_audit(
                AuditRecord(who=who.name, roles=list(who.roles), action="register",
                            outcome="refused", reason=reason, model=name,
                            extra={"run": record.run_name}),
                default_audit_path(registry.tracking_uri),
            )  # fmt: skip
            raise UserError(f"registration refused: {reason}")
    ref = register_run(registry, record, name)
    log_card(registry, ref, policy=policy)
    return ref
