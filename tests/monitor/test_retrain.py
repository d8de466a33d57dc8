"""Retraining: the trigger, the reviewed dataset, and never training on unapproved data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import job_dict, write_job

from hybridft.errors import UserError
from hybridft.monitor.policy import MonitorPolicy, RetrainPolicy
from hybridft.monitor.records import Alert
from hybridft.monitor.retrain import build_reviewed_dataset, retrain
from hybridft.monitor.trigger import evaluate_trigger
from hybridft.registry.access import User
from hybridft.registry.audit import default_audit_path, read_audit
from hybridft.registry.catalog import get_dataset, list_datasets, review_dataset
from hybridft.registry.data_approval import UnapprovedData
from hybridft.serve.canary import ServePaths
from hybridft.serve.review import ReviewQueue

APPROVER = User("carol", ("approver",))


def _alert(monitor: str) -> Alert:
    return Alert(monitor=monitor, severity="critical", version="3", message="m")


def test_trigger_fires_on_matching_alerts_and_on_schedule():
    rules = RetrainPolicy(job="j.yaml", on_alerts=["drift.", "threshold.task_success"])
    assert not evaluate_trigger(rules, [_alert("kpi.latency_p95_s")]).fire
    fired = evaluate_trigger(rules, [_alert("drift.intent"), _alert("kpi.error_rate")])
    assert fired.fire and len(fired.reasons) == 1 and "drift.intent" in fired.reasons[0]
    aged = RetrainPolicy(job="j.yaml", on_alerts=[], schedule_days=7)
    now = 1_780_000_000.0
    assert not evaluate_trigger(aged, [], champion_created_s=now - 6 * 86400, now=now).fire
    late = evaluate_trigger(aged, [], champion_created_s=now - 8 * 86400, now=now)
    assert late.fire and "8.0 days" in late.reasons[0]


def _reviews(serve_dir: Path, n: int) -> ReviewQueue:
    queue = ReviewQueue(ServePaths(serve_dir).review)
    for i in range(n):
        queue.enqueue(f"req-{i}", "1", "desk", f"Ticket {i}: the VPN drops", "hardware", 0.3, 0.5)
        if i % 3 != 2:  # one in three stays open: only resolved items become rows
            queue.resolve(f"req-{i}", "network", "carol")
    return queue


def test_reviewed_dataset_is_the_resolved_items_named_by_content(tmp_path):
    queue = _reviews(tmp_path / "serve", 9)
    first = build_reviewed_dataset(queue, tmp_path / "out")
    again = build_reviewed_dataset(queue, tmp_path / "out")
    assert first == again and first["rows"] == 6
    rows = [json.loads(x) for x in Path(first["path"]).read_text().splitlines()]
    resolved = {i.request_id for i in queue.list("resolved")}
    assert {r["meta"]["request_id"] for r in rows} == resolved == set(first["request_ids"])
    assert all(r["completion"] == "network" for r in rows)
    manifest = json.loads((Path(first["path"]).parent / "manifest.json").read_text())
    assert manifest["generator"] == "review-queue"
    assert manifest["files"]["train.jsonl"]["request_ids"] == first["request_ids"]
    queue.resolve("req-2", "identity", "carol")
    assert build_reviewed_dataset(queue, tmp_path / "out")["path"] != first["path"]


def test_reviewed_rows_that_repeat_evaluation_rows_are_held_out(tmp_path):
    """Live traffic can repeat a test question: training on it would contaminate the eval."""
    queue = _reviews(tmp_path / "serve", 6)
    evals = ["Ticket 1: the VPN drops\nnetwork", "Printer jam on floor 3\nfacilities"]
    built = build_reviewed_dataset(queue, tmp_path / "out", eval_texts=evals)
    assert [h["request_id"] for h in built["held_out"]] == ["req-1"]
    assert built["rows"] == 3 and "req-1" not in built["request_ids"]
    rows = Path(built["path"]).read_text().splitlines()
    assert len(rows) == 3 and not any('"req-1"' in r for r in rows)
    manifest = json.loads((Path(built["path"]).parent / "manifest.json").read_text())
    assert manifest["held_out_eval_overlap"] == built["held_out"]


@pytest.fixture
def loop(tmp_path, small_demo_data, registry, monkeypatch):
    """A monitor policy whose retrain job is a tiny SFT job on the demo data."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("HYBRIDFT_USER", "dave")
    monkeypatch.setenv("HYBRIDFT_ROLES", "trainer,releaser")
    job = write_job(tmp_path, job_dict(tmp_path, small_demo_data))
    policy = MonitorPolicy(
        model="desk",
        serve_dir=str(tmp_path / "serve"),
        retrain=RetrainPolicy(job=str(job), min_reviewed_rows=3, on_alerts=["drift.intent"]),
    )
    _reviews(tmp_path / "serve", 9)
    return policy


def _no_training_started(tmp_path: Path) -> bool:
    return not list((tmp_path / "runs").glob("*/final")) and not (tmp_path / "runs/ray").exists()


def test_retraining_never_trains_on_unapproved_data(loop, registry, tmp_path):
    quiet = retrain(loop, registry, alerts=[_alert("kpi.latency_p95_s")])
    assert quiet.status == "not_triggered"

    out = retrain(loop, registry, alerts=[_alert("drift.intent")])
    assert out.status == "awaiting_approval" and _no_training_started(tmp_path)
    blocked = {b["source"]: b for b in out.blocked}
    assert set(blocked) == {"it_desk", "reviewed"}  # the job's own data is not approved either
    reviewed = get_dataset(registry, blocked["reviewed"]["fingerprint"])
    assert reviewed.status == "draft" and reviewed.generator == "review-queue"
    assert reviewed.rows == 6 and reviewed.sources == [out.dataset["path"]]
    audit = read_audit(default_audit_path(registry.tracking_uri), action="retrain")
    assert [r.outcome for r in audit] == ["ok", "blocked"]  # not triggered, then blocked

    # approving only the reviewed rows is not enough
    review_dataset(registry, blocked["reviewed"]["fingerprint"], "approved", reviewer=APPROVER)
    out = retrain(loop, registry, alerts=[_alert("drift.intent")])
    assert [b["source"] for b in out.blocked] == ["it_desk"] and _no_training_started(tmp_path)

    # a review resolved after the approval makes a new dataset version: a new draft
    review_dataset(registry, blocked["it_desk"]["fingerprint"], "approved", reviewer=APPROVER)
    ReviewQueue(ServePaths(loop.serve_dir).review).resolve("req-2", "identity", "carol")
    out = retrain(loop, registry, alerts=[_alert("drift.intent")])
    assert out.status == "awaiting_approval" and [b["source"] for b in out.blocked] == ["reviewed"]
    assert out.dataset["rows"] == 7 and _no_training_started(tmp_path)
    assert sum(1 for e in list_datasets(registry) if e.status == "draft") == 1
    history = (Path(loop.serve_dir) / "retrain/history.jsonl").read_text().splitlines()
    assert [json.loads(x)["status"] for x in history] == ["not_triggered"] + [
        "awaiting_approval"
    ] * 3


def test_train_refuses_data_changed_after_approval(loop, registry, tmp_path, small_demo_data):
    """The data gate in train.run sees the rows about to be trained on, not a stale check."""
    from hybridft.pipeline import train_and_log

    job = Path(loop.retrain.job)
    with pytest.raises(UnapprovedData) as first:
        train_and_log(job, require_approved_data=True, tracking_uri=registry.tracking_uri)
    (fp,) = [b["fingerprint"] for b in first.value.blocked]
    review_dataset(registry, fp, "approved", reviewer=APPROVER)
    doc = yaml.safe_load(job.read_text())
    rows = Path(doc["data"]["sources"]["it_desk"]["paths"][0]).read_text().splitlines()
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(rows[:-1]) + "\n")  # one row fewer than what was approved
    doc["data"]["sources"]["it_desk"]["paths"] = [str(changed)]
    job.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="unapproved data: it_desk sha256:.* is draft"):
        train_and_log(job, require_approved_data=True, tracking_uri=registry.tracking_uri)
    assert _no_training_started(tmp_path)


def test_retraining_from_a_sweep_takes_its_best_completed_trial(tmp_path, small_demo_data):
    """`retrain.sweep`: the best completed trial's job, plus the reviewed rows in its last stage."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "sweep"))
    from sweep_helpers import space_dict, write_hybrid, write_space

    from hybridft.monitor.retrain import retrain_job
    from hybridft.specs import load_job

    space = write_space(tmp_path, space_dict(write_hybrid(tmp_path, small_demo_data)))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"space_file": str(space)}))
    params = [(0.7, 2e-3, 0.5), (0.2, 1e-3, 0.3), (0.4, 4e-3, 0.9)]  # share, lr, val_loss
    trials = [{"trial_id": f"t{i}", "status": "completed" if i < 2 else "stopped",
               "params": {"instruction_share": share, "replay_ratio": 0.1, "lr.sft": lr,
                          "method": "full"},
               "objectives": {"val_loss": loss}} for i, (share, lr, loss) in enumerate(params)]  # fmt: skip
    (sweep / "trials.json").write_text(json.dumps(trials))
    rules = RetrainPolicy(sweep=str(sweep))
    dataset = {"path": str(tmp_path / "reviewed.jsonl")}
    Path(dataset["path"]).write_text('{"prompt": "Ticket", "completion": "network"}\n')
    job = load_job(retrain_job(rules, dataset, tmp_path / "out", base=""))
    # the stopped trial had the lowest loss; the best *completed* one is t1 (0.3)
    assert job.stages[-1].lr == pytest.approx(1e-3)
    assert job.stages[-1].mix[-1].source == "reviewed"
    assert job.data.sources["reviewed"].paths == [dataset["path"]]
    with pytest.raises(ValueError, match="exactly one of job"):
        RetrainPolicy(job="j.yaml", sweep=str(sweep))
