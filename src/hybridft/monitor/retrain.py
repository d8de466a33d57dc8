"""``hybridft retrain``: from alerts (or a schedule) to a new canary, on reviewed data only.

1. Trigger (``monitor.trigger``): the policy's alert rules over the monitor's alerts, or the
   champion's age.
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

from hybridft import atomic
from hybridft.data.reader import read_examples
from hybridft.errors import UserError
from hybridft.evaluate.leakage import check_leakage, example_text
from hybridft.monitor.policy import MonitorPolicy, RetrainPolicy
from hybridft.monitor.records import Alert
from hybridft.monitor.trigger import TriggerVerdict, champion_version, evaluate_trigger
from hybridft.pipeline import train_and_log
from hybridft.registry.access import User, audit_action, require
from hybridft.registry.audit import default_audit_path
from hybridft.registry.client import Registry
from hybridft.registry.data_approval import UnapprovedData
from hybridft.registry.gates import promote
from hybridft.registry.policy import load_policy
from hybridft.registry.registration import evaluate_run, register_version
from hybridft.serve.canary import ServePaths
from hybridft.serve.review import ReviewQueue
from hybridft.specs import JobSpec, edit_job, load_job
from hybridft.sweep.record import best_sweep_job

GENERATOR = "review-queue"


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


def build_reviewed_dataset(
    queue: ReviewQueue, out_root: str | Path, eval_texts: list[str] | None = None
) -> dict[str, Any]:
    """Export resolved review items to ``out_root/<digest>/train.jsonl`` with a manifest.

    Rows the leakage shield finds in ``eval_texts`` (the job's evaluation rows: live traffic can
    repeat a test question) are held out, listed in the manifest with their rule: training on
    them would contaminate the evaluation the gates read. The folder is named by the rows'
    content, so the same reviews give the same dataset (and catalog entry) on every re-run.
    """
    out_root = Path(out_root)
    staging = out_root / ".staging.jsonl"
    queue.export_labelled(staging)
    lines = [x for x in staging.read_text(encoding="utf-8").splitlines() if x.strip()]
    staging.unlink()
    docs = [json.loads(x) for x in lines]
    held: dict[int, str] = {}
    if eval_texts and docs:
        texts = [f"{d['prompt']}\n{d['completion']}" for d in docs]
        report = check_leakage(eval_texts, texts)
        for rule, indices in report.by_rule.items():
            for i in indices:
                held.setdefault(i, rule)
    kept = [x for i, x in enumerate(lines) if i not in held]
    text = "".join(x + "\n" for x in kept)
    folder = out_root / hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    tmp = folder / ".train.jsonl.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    request_ids = [d["meta"]["request_id"] for i, d in enumerate(docs) if i not in held]
    held_out = [{"request_id": docs[i]["meta"]["request_id"], "rule": r} for i, r in held.items()]
    manifest = {
        "generator": GENERATOR,
        "seed": None,
        "files": {"train.jsonl": {"rows": len(kept), "request_ids": request_ids}},
        "held_out_eval_overlap": held_out,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    labels = sorted({d["label"] for i, d in enumerate(docs) if i not in held})
    return {"path": str(path), "rows": len(kept), "labels": labels, "request_ids": request_ids,
            "held_out": held_out}  # fmt: skip


def eval_texts(job: JobSpec) -> list[str]:
    """Prompt + completion of every evaluation row the job names (``data.eval``)."""
    paths = [p for ps in job.data.eval.values() for p in ps]
    return [example_text(e) for e in read_examples(paths)] if paths else []


def base_job(rules: RetrainPolicy) -> JobSpec:
    """The job retraining starts from: the policy's job file or the sweep's best trial."""
    if rules.job is not None:
        return load_job(rules.job)
    return best_sweep_job(str(rules.sweep))


def retrain_job(
    rules: RetrainPolicy,
    dataset: dict[str, Any],
    out_dir: Path,
    base: str,
    job: JobSpec | None = None,
) -> Path:
    """The policy's job (or sweep's best) with the reviewed rows as one more last-stage source,
    written as ``out_dir/job.yaml`` (made with ``specs.edit_job``: validated again)."""
    job = job if job is not None else base_job(rules)
    if rules.reviewed_source in job.data.sources:
        raise UserError(
            f"{rules.job or rules.sweep}: data.sources.{rules.reviewed_source}: retraining adds "
            "this source; rename it or set retrain.reviewed_source"
        )

    def edit(d: dict[str, Any]) -> None:
        d["data"]["sources"][rules.reviewed_source] = {
            "paths": [dataset["path"]],
            "format": "task",
            "kind": "task",
        }
        d["stages"][-1]["mix"].append(
            {"source": rules.reviewed_source, "weight": rules.reviewed_weight}
        )
        d["name"] = f"{d['name']}-retrain"
        if base:
            d["model"]["base"] = base

    retrained = edit_job(job, edit)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "job.yaml"
    doc = retrained.model_dump(mode="json")
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def retrain(
    policy: MonitorPolicy,
    registry: Registry,
    *,
    alerts: list[Alert] | None = None,
    force: bool = False,
    on_event: Callable[[str], None] = lambda _m: None,
    user: User | None = None,
) -> RetrainOutcome:
    """Run the loop's retraining steps as far as the evidence and the approvals allow.

    Needs roles trainer and releaser (it trains, registers and promotes), checked before
    anything runs; every call leaves one audit line: ``ok``, ``blocked`` (data awaiting
    approval) or ``refused`` (a gate), with where it stopped.
    """
    if policy.retrain is None:
        raise UserError(f"{policy.source_file or 'monitor policy'}: retrain: section missing")
    audit_path = default_audit_path(registry.tracking_uri)
    who = require(
        "trainer",
        "retrain",
        user=user,
        audit_path=audit_path,
        tracking_uri=registry.tracking_uri,
        model=policy.model,
    )
    require("releaser", "retrain", user=who, audit_path=audit_path, model=policy.model)
    out = _retrain(policy, policy.retrain, registry, who, alerts or [], force, on_event)
    outcome = {"awaiting_approval": "blocked", "refused": "refused"}.get(out.status, "ok")
    audit_action(
        who,
        "retrain",
        audit_path,
        outcome=outcome,
        reason=f"{out.status}: {out.steps[-1]['detail']}"[:2000],
        model=policy.model,
        to_version=out.version or None,
        extra={"run_dir": out.run_dir},
    )
    return out


def _retrain(
    policy: MonitorPolicy,
    rules: RetrainPolicy,
    registry: Registry,
    who: User,
    alerts: list[Alert],
    force: bool,
    on_event: Callable[[str], None],
) -> RetrainOutcome:
    paths = ServePaths(policy.serve_dir)
    history = paths.root / "retrain" / "history.jsonl"
    champion = champion_version(registry, policy.model)
    created = champion.creation_timestamp / 1000 if champion is not None else None
    verdict = evaluate_trigger(rules, alerts, created)
    if force:
        verdict = TriggerVerdict(True, ["forced by the operator", *verdict.reasons])
    out = RetrainOutcome("not_triggered", reasons=verdict.reasons)
    if not verdict.fire:
        return _done(out, history, on_event, "no alert rule fired; nothing to retrain")
    _step(out, on_event, "trigger", "; ".join(verdict.reasons))

    job_doc = base_job(rules)
    dataset = build_reviewed_dataset(
        ReviewQueue(paths.review), paths.root / "retrain" / "data", eval_texts(job_doc)
    )
    out.dataset = dataset
    held = f"; {len(dataset['held_out'])} held out (they repeat evaluation rows)"
    _step(out, on_event, "dataset", f"{dataset['rows']} reviewed rows -> {dataset['path']}"
          + (held if dataset["held_out"] else ""))  # fmt: skip
    if dataset["rows"] < rules.min_reviewed_rows:
        out.status = "too_few_rows"
        return _done(out, history, on_event, f"needs {rules.min_reviewed_rows} reviewed rows")

    base = ""
    if rules.from_champion and champion is not None:
        ref = registry.resolve(f"{policy.model}@champion")
        base = str(registry.download(ref, paths.root / "retrain" / "base" / ref.version))
    job = retrain_job(rules, dataset, Path(dataset["path"]).parent, base, job_doc)
    origin = rules.job or f"the best trial of {rules.sweep}"
    _step(out, on_event, "job", f"{job} (from {origin}, base {base or 'as in the job'})")
    try:
        record = train_and_log(job, require_approved_data=True)
    except UnapprovedData as exc:
        out.status = "awaiting_approval"
        out.blocked = exc.blocked
        return _done(out, history, on_event, str(exc))
    out.run_dir = record.run_dir
    _step(out, on_event, "train", f"run {record.run_name}")

    evaluate_run(record.run_dir)
    try:
        version = register_version(record.run_dir, policy.model, rules.gate_policy, user=who)
    except UserError as exc:  # e.g. the leakage shield: audited by register_version
        out.status = "refused"
        return _done(out, history, on_event, str(exc))
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
            user=who,
            reason="retrain: " + out.reasons[0],
        )
        if not move.moved:
            out.status = "refused"
            return _done(out, history, on_event, f"@{alias} refused: {move.reason}")
        _step(out, on_event, "promote", f"@{alias} -> version {version.version}")
    out.status = "canary" if rules.start_canary else "candidate"
    return _done(out, history, on_event, f"version {version.version} holds @{aliases[-1]}")


def _step(out: RetrainOutcome, on_event: Callable[[str], None], name: str, detail: str) -> None:
    out.steps.append({"step": name, "at": time.time(), "detail": detail})
    on_event(f"{name}: {detail}")


def _done(
    out: RetrainOutcome, history: Path, on_event: Callable[[str], None], detail: str
) -> RetrainOutcome:
    _step(out, on_event, out.status, detail)
    atomic.append_line(history, json.dumps(out.to_dict()))  # locked: concurrent retrains
    return out
