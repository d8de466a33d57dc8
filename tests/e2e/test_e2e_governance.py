"""Evaluation -> registration -> governance on real runs: the leakage shield blocks a model trained
on its own test rows; a clean one is registered with a model card, catalogued data, a gate that
fails until the data and the version are approved, then @champion and its lineage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import job_dict, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]

POLICY = {
    "name": "e2e",
    # a 6-step tiny model scores near 0: the score floor is not what this test is about
    "metrics": [{"metric": "eval/score", "min": 0.0}],
    "max_ece": 1.0,
    "max_contamination": 0.01,
    "required_approvals": {"count": 1, "role": "approver"},
    "require_approved_data": True,
}


def _job(
    tmp: Path, data: Path, train_paths: list[str], name: str, hybrid: bool = False, workers: int = 2
) -> Path:
    spec = job_dict(tmp, data, name=name)
    spec["scaling"]["num_workers"] = workers
    spec["data"]["sources"]["it_desk"]["paths"] = train_paths
    if hybrid:  # instruction stage (urgency_detect + sentiment: cluster classification) -> SFT
        spec["stages"].insert(
            0, {"name": "instr", "mix": [{"source": "instr", "weight": 1}], "budget": {"steps": 3}}
        )
        spec["data"]["eval"]["instr"] = [
            str(data / "instruction/sentiment/test.jsonl"),
            str(data / "instruction/extract_date/test.jsonl"),  # cluster extraction: held out
        ]
    else:
        del spec["data"]["sources"]["instr"]
    spec["eval"]["calibration"] = {"it_desk": [str(data / "sft/it_desk/validation.jsonl")]}
    spec["eval"]["task_graph"] = str(data / "task_graph.yaml")
    return write_job(tmp, spec, f"{name}.yaml")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "hybridft.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    for var in ("MLFLOW_TRACKING_URI", "HYBRIDFT_USERS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HYBRIDFT_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("HYBRIDFT_USER", "bob")  # trains and registers
    monkeypatch.setenv("HYBRIDFT_ROLES", "trainer,viewer")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_shield_blocks_registration_of_a_model_trained_on_its_test_rows(
    ray_session, small_demo_data, tmp_path, store
) -> None:
    from hybridft.errors import UserError
    from hybridft.pipeline import train_and_log
    from hybridft.registry.audit import read_audit
    from hybridft.registry.registration import evaluate_run, register_version

    data = small_demo_data
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(
        (data / "sft/it_desk/train.jsonl").read_text()
        + (data / "sft/it_desk/test.jsonl").read_text()
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    # one worker: this is about the shield, not DDP (the clean run below trains on two)
    leaky_job = _job(tmp_path, data, [str(leaky)], "leaky", workers=1)
    record = train_and_log(leaky_job, tracking_uri=store)
    result = evaluate_run(record.run_dir, tracking_uri=store)

    # every eval row is a train row: all four rules' union flags all of them
    assert result.leakage["contamination"] == 1.0
    assert result.leakage["counts"]["exact"] == result.tasks["it_desk"].n
    assert result.tasks["it_desk"].leakage["n_clean"] == 0
    with pytest.raises(UserError, match="registration refused: contamination 1.0000 > policy"):
        register_version(record.run_dir, "leaky-model", policy, tracking_uri=store)
    refused = [r for r in read_audit(tmp_path / "audit.jsonl") if r.action == "register"]
    assert [(r.outcome, r.model) for r in refused] == [("refused", "leaky-model")]


def test_clean_run_eval_card_catalog_gate_approvals_champion_lineage(
    ray_session, small_demo_data, tmp_path, store
) -> None:
    from hybridft.pipeline import train_and_log
    from hybridft.registry.catalog import get_dataset
    from hybridft.registry.client import Registry
    from hybridft.registry.model_card import parse_front_matter
    from hybridft.registry.registration import evaluate_run, register_version

    data = small_demo_data
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    train_file = str(data / "sft/it_desk/train.jsonl")
    job = _job(tmp_path, data, [train_file], "clean", hybrid=True)
    record = train_and_log(job, tracking_uri=store)
    fp, fp_instr = record.fingerprints["it_desk"], record.fingerprints["instr"]

    # train catalogued its data as a draft with the generator's provenance
    registry = Registry(store)
    entry = get_dataset(registry, fp)
    assert entry is not None and entry.status == "draft"
    assert (entry.generator, entry.seed, entry.rows) == ("hybridft.data.synth", 0, 300)
    assert entry.sources == [train_file] and entry.kind == "dataset"
    assert get_dataset(registry, fp_instr).kind == "prompts"  # demonstrations

    result = evaluate_run(record.run_dir, tracking_uri=store)
    task = result.tasks["it_desk"]
    # the target task's rows are clean (the generator decontaminates SFT held-out splits); the
    # instruction suites' templated rows are not, and only count in contamination_all
    assert result.leakage["contamination"] == 0.0 and task.leakage["n_clean"] == task.n
    assert result.leakage["target_sources"] == ["it_desk"]
    dirty = sum(t.leakage["n_dirty"] for t in result.tasks.values())
    n_all = sum(t.n for t in result.tasks.values())
    assert result.leakage["contamination_all"] == pytest.approx(dirty / n_all)
    cal = task.calibration
    assert cal["calibrated"] and cal["temperature"] > 0 and cal["n_calibration"] == 16
    assert 0.0 <= cal["ece"] <= 1.0 and 0.0 <= cal["brier"] <= 2.0 and cal["nll"] > 0
    assert len(task.robustness["scores"]) == 3
    values = task.robustness["scores"].values()
    assert task.robustness["spread"] == pytest.approx(max(values) - min(values))
    png = Path(result.artifacts["reliability_it_desk"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = yaml.safe_load(Path(result.artifacts["model_index"]).read_text())["model-index"]
    results = {r["task"]["name"]: r for r in index[0]["results"]}
    assert set(results) == set(result.tasks)
    assert results["it_desk"]["task"]["type"] == "text-classification"
    metrics = {m["type"]: m["value"] for m in results["it_desk"]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(task.accuracy, abs=1e-6)
    assert metrics["ece"] == pytest.approx(cal["ece"], abs=1e-6)
    # FLAN's protocol: classification was trained (it_desk, sentiment, urgency_detect), extraction
    # was not, so extract_date is the one held-out task scored
    graph = result.graph
    assert graph["trained_tasks"] == ["it_desk", "sentiment", "urgency_detect"]
    assert graph["heldout_tasks"] == ["extract_date"]
    assert graph["heldout_score"] == result.tasks["extract_date"].score
    # forgetting: instruction tasks before (the instr stage's model) vs after the SFT stage
    per_task = graph["forgetting_per_task"]
    assert set(per_task) == {"sentiment", "extract_date"} and graph["forgetting_before"] == "instr"
    assert graph["forgetting"] == pytest.approx(-sum(per_task.values()) / 2)
    assert result.flat_metrics()["eval/forgetting"] == graph["forgetting"]
    saved = json.loads((Path(record.run_dir) / "eval.json").read_text())
    assert saved["leakage"]["contamination"] == 0.0

    version = register_version(record.run_dir, "clean-model", policy, tracking_uri=store)
    ref = f"clean-model@{version.version}"
    mv = registry.client.get_model_version("clean-model", version.version)
    card_uri = mv.tags["hybridft.model_card"]
    local = registry.client.download_artifacts(version.run_id, "model_card.md", str(tmp_path))
    card = Path(local).read_text()
    assert card_uri.endswith("model_card.md")
    front = parse_front_matter(card)
    assert front["datasets"] == [f"instr@{fp_instr}", f"it_desk@{fp}"]
    assert "## Evaluation" in card and "## Approvals" in card

    promote = ["promote", ref, "--alias", "champion", "--policy", str(policy)]
    promote += ["--tracking-uri", store]
    gate_fail = _cli(*promote, env={"HYBRIDFT_USER": "dave", "HYBRIDFT_ROLES": "releaser"})
    assert gate_fail.returncode == 1
    assert "approvals by approver" in gate_fail.stderr and "not approved" in gate_fail.stderr

    approver = {"HYBRIDFT_USER": "carol", "HYBRIDFT_ROLES": "approver"}
    reviewed = _cli(
        "catalog", "review", fp, "--status", "approved", "--tracking-uri", store, env=approver
    )
    assert reviewed.returncode == 0, reviewed.stderr
    approved = _cli("approve", ref, "--comment", "ok", "--tracking-uri", store, env=approver)
    assert approved.returncode == 0, approved.stderr
    releaser = {"HYBRIDFT_USER": "dave", "HYBRIDFT_ROLES": "releaser"}
    still = _cli(*promote, env=releaser)  # the instruction demonstrations are still a draft
    assert still.returncode == 1 and f"instr={fp_instr} (draft)" in still.stderr
    review = ["catalog", "review", fp_instr, "--status", "approved", "--tracking-uri", store]
    assert _cli(*review, env=approver).returncode == 0
    moved = _cli(*promote, env=releaser)
    assert moved.returncode == 0, moved.stderr

    shown = _cli("lineage", "clean-model@champion", "--tracking-uri", store)
    assert shown.returncode == 0, shown.stderr
    for text in (fp, record.run_name, "@champion moved unset -> v1 by dave", train_file):
        assert text in shown.stdout
    listed = _cli("catalog", "list", "--status", "approved", "--tracking-uri", store)
    assert fp in listed.stdout and "carol" in listed.stdout
