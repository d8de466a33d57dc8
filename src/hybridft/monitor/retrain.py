"""``hybridft retrain``: from alerts (or a schedule) to a new canary, on reviewed data only.

1. Trigger: the policy's alert rules over the monitor's alerts, or the champion's age.
2. Dataset: the review queue's resolved items become a new dataset version (rows named by the
   live request they came from), registered in the data catalog as a *draft*.
3. Approval: nothing trains until every dataset the job would read is approved; a blocked retrain
   says which fingerprints wait and how to approve them, and is audited. Training itself checks
   again (``train.run``'s data gate), so data un-approved in between is still refused.
4. Train the policy's job with the reviewed rows added to its last stage (from the champion's
   weights by default), evaluate, register (parent = the champion), gate, and point ``@canary``
   at the new version: the canary controller takes it from there.

Every step lands in ``<serve_dir>/retrain/history.jsonl`` and the audit log, and the new version
carries ``hybridft.retrain.*`` tags (trigger, reviewed rows, parent).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybridft.errors import UserError
from hybridft.monitor.policy import MonitorPolicy, RetrainPolicy
from hybridft.monitor.records import Alert
from hybridft.registry.client import Registry
from hybridft.serve.canary import ServePaths
from hybridft.serve.review import ReviewQueue

GENERATOR = "review-queue"


@dataclass
class TriggerVerdict:
    fire: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetrainOutcome:
    """Where a retrain stopped: ``not_triggered``, ``too_few_rows``, ``awaiting_approval``,
    ``refused`` (a gate) or ``canary`` (done: the new version holds @canary)."""

    status: str
    reasons: list[str] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    blocked: list[dict[str, str]] = field(default_factory=list)
    run_dir: str = ""
    version: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_trigger(
    rules: RetrainPolicy,
    alerts: list[Alert],
    champion_created_s: float | None = None,
    now: float | None = None,
) -> TriggerVerdict:
    """Fire when an alert matches ``rules.on_alerts`` (prefix) or the champion is too old."""
    now = time.time() if now is None else now
    reasons = [
        f"{a.monitor} on version {a.version}: {a.message}"
        for a in alerts
        if any(a.monitor == rule or a.monitor.startswith(rule) for rule in rules.on_alerts)
    ]
    if rules.schedule_days is not None and champion_created_s is not None:
        age_days = (now - champion_created_s) / 86400
        if age_days >= rules.schedule_days:
            reasons.append(
                f"schedule: the champion is {age_days:.1f} days old "
                f"(retrain every {rules.schedule_days:g} days)"
            )
    return TriggerVerdict(bool(reasons), reasons)


def build_reviewed_dataset(queue: ReviewQueue, out_root: str | Path) -> dict[str, Any]:
    """Export resolved review items to ``out_root/<digest>/train.jsonl`` with a manifest.

    The folder is named by the rows' content, so the same reviews give the same dataset (and
    the same catalog entry) however often a blocked retrain is re-run.
    """
    out_root = Path(out_root)
    staging = out_root / ".staging.jsonl"
    rows = queue.export_labelled(staging)
    text = staging.read_text(encoding="utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    folder = out_root / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    staging.replace(path)
    request_ids = [json.loads(line)["meta"]["request_id"] for line in text.splitlines()]
    labels = sorted({json.loads(line)["label"] for line in text.splitlines()})
    manifest = {
        "generator": GENERATOR,
        "seed": None,
        "files": {"train.jsonl": {"rows": rows, "request_ids": request_ids}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return {"path": str(path), "rows": rows, "labels": labels, "request_ids": request_ids}


def retrain_job(rules: RetrainPolicy, dataset: dict[str, Any], out_dir: Path, base: str) -> Path:
    """The policy's job with the reviewed rows as one more source of its last stage."""
    job = yaml.safe_load(Path(rules.job).read_text(encoding="utf-8"))
    sources = job["data"]["sources"]
    if rules.reviewed_source in sources:
        raise UserError(
            f"{rules.job}: data.sources.{rules.reviewed_source}: retraining adds this source; "
            "rename it or set retrain.reviewed_source"
        )
    sources[rules.reviewed_source] = {"paths": [dataset["path"]], "format": "task", "kind": "task"}
    job["stages"][-1]["mix"].append(
        {"source": rules.reviewed_source, "weight": rules.reviewed_weight}
    )
    job["name"] = f"{job.get('name', 'job')}-retrain"
    if base:
        job["model"]["base"] = base
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


def retrain(
    policy: MonitorPolicy,
    registry: Registry,
    *,
    alerts: list[Alert] | None = None,
    force: bool = False,
    on_event: Callable[[str], None] = lambda _m: None,
) -> RetrainOutcome:
    """Run the loop's retraining steps as far as the evidence and the approvals allow."""
    from hybridft.pipeline import UnapprovedData, evaluate_run, register_version, train_and_log
    from hybridft.registry.gates import promote
    from hybridft.registry.policy import load_policy

    rules = policy.retrain
    if rules is None:
        raise UserError(f"{policy.source_file or 'monitor policy'}: retrain: section missing")
    paths = ServePaths(policy.serve_dir)
    history = paths.root / "retrain" / "history.jsonl"
    champion = _champion(registry, policy.model)
    created = champion.creation_timestamp / 1000 if champion is not None else None
    verdict = evaluate_trigger(rules, alerts or [], created)
    if force:
        verdict = TriggerVerdict(True, ["forced by the operator", *verdict.reasons])
    out = RetrainOutcome("not_triggered", reasons=verdict.reasons)
    if not verdict.fire:
        return _done(out, history, on_event, "no alert rule fired; nothing to retrain")
    _step(out, on_event, "trigger", "; ".join(verdict.reasons))

    dataset = build_reviewed_dataset(ReviewQueue(paths.review), paths.root / "retrain" / "data")
    out.dataset = dataset
    _step(out, on_event, "dataset", f"{dataset['rows']} reviewed rows -> {dataset['path']}")
    if dataset["rows"] < rules.min_reviewed_rows:
        out.status = "too_few_rows"
        return _done(out, history, on_event, f"needs {rules.min_reviewed_rows} reviewed rows")

    base = ""
    if rules.from_champion and champion is not None:
        ref = registry.resolve(f"{policy.model}@champion")
        base = str(registry.download(ref, paths.root / "retrain" / "base" / ref.version))
    job = retrain_job(rules, dataset, Path(dataset["path"]).parent, base)
    _step(out, on_event, "job", f"{job} (from {rules.job}, base {base or 'as in the job'})")
    try:
        record = train_and_log(job, require_approved_data=True)
    except UnapprovedData as exc:
        out.status = "awaiting_approval"
        out.blocked = exc.blocked
        _audit(registry, policy.model, "retrain", "blocked", str(exc))
        return _done(out, history, on_event, str(exc))
    out.run_dir = record.run_dir
    _step(out, on_event, "train", f"run {record.run_name}")

    evaluate_run(record.run_dir)
    version = register_version(record.run_dir, policy.model, rules.gate_policy)
    out.version = version.version
    tags = {
        "hybridft.retrain.trigger": "; ".join(verdict.reasons)[:5000],
        "hybridft.retrain.reviewed_rows": str(dataset["rows"]),
        "hybridft.parent_model": f"{policy.model}@{champion.version}" if champion else "",
    }
    for key, value in tags.items():
        registry.client.set_model_version_tag(policy.model, version.version, key, value)
    _step(out, on_event, "register", f"{policy.model} version {version.version}")

    gates = load_policy(rules.gate_policy)
    aliases = ["candidate", "canary"] if rules.start_canary else ["candidate"]
    for alias in aliases:
        move = promote(
            registry,
            gates,
            policy.model,
            version.version,
            alias,
            reason="retrain: " + out.reasons[0],
        )
        if not move.moved:
            out.status = "refused"
            return _done(out, history, on_event, f"@{alias} refused: {move.reason}")
        _step(out, on_event, "promote", f"@{alias} -> version {version.version}")
    out.status = "canary" if rules.start_canary else "candidate"
    return _done(out, history, on_event, f"version {version.version} holds @{aliases[-1]}")


def _champion(registry: Registry, model: str) -> Any | None:
    try:
        return registry.client.get_model_version_by_alias(model, "champion")
    except Exception:  # no model or no champion yet: nothing to age or start from
        return None


def _audit(registry: Registry, model: str, action: str, outcome: str, reason: str) -> None:
    from hybridft.registry.access import current_user
    from hybridft.registry.audit import AuditRecord, append_audit, default_audit_path

    who = current_user()
    append_audit(
        AuditRecord(who=who.name, roles=list(who.roles), action=action, outcome=outcome,
                    reason=reason[:2000], model=model),
        default_audit_path(registry.tracking_uri),
    )  # fmt: skip


def _step(out: RetrainOutcome, on_event: Callable[[str], None], name: str, detail: str) -> None:
    out.steps.append({"step": name, "at": time.time(), "detail": detail})
    on_event(f"{name}: {detail}")


def _done(
    out: RetrainOutcome, history: Path, on_event: Callable[[str], None], detail: str
) -> RetrainOutcome:
    _step(out, on_event, out.status, detail)
    history.parent.mkdir(parents=True, exist_ok=True)
    with open(history, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(out.to_dict()) + "\n")
    return out
