"""The decision report: a real sweep -> arms trained per seed -> verdict -> HTML, looked at in
headless Chromium; its numbers recomputed from the MLflow runs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser import has_data as _has_data
from browser import inline_pngs, screenshot
from helpers import write_job
from own_task import SOURCE, labels_of, own_task_job, prompt_words, write_own_task
from sweep_helpers import BUDGET, space_dict, write_space

from hybridft.sweep.report_html import ReportData, render


def _synthetic() -> ReportData:
    rng = np.random.default_rng(0)
    arms, eff = [], []
    for arm, p in (("sft_only", 0.6), ("instruction_only", 0.3), ("best_hybrid", 0.7)):
        for seed in range(3):
            per = (rng.random(100) < p).astype(float).tolist()
            arms.append({"arm": arm, "seed": seed, "labels": None, "per_example": per,
                         "target_score": float(np.mean(per)), "heldout_score": 0.2,
                         "forgetting": 0.05, "ece": 0.1, "trained_tokens": 1000, "wall_s": 10.0,
                         "mlflow_run_id": f"run-{arm}-{seed}"})  # fmt: skip
    for arm in ("sft_only", "best_hybrid"):
        for n, s in ((50, 0.3), (200, 0.5), (1000, 0.6)):
            eff.append({"arm": arm, "seed": 0, "labels": n, "target_score": s})
    from hybridft.sweep.stats import decide

    scores = {
        a: [r["per_example"] for r in arms if r["arm"] == a]
        for a in ("sft_only", "instruction_only", "best_hybrid")
    }
    verdict = decide(scores, {"sft_only": 1000, "instruction_only": 1000, "best_hybrid": 1000})
    trials = [
        {"trial_id": f"t{i}", "status": "completed", "params": {"instruction_share": i / 4},
         "metrics": {"target_score": 0.5 + i / 10}, "objectives": {"target_score": 0.5 + i / 10}}
        for i in range(4)
    ]  # fmt: skip
    return ReportData(
        sweep="s", space_file="search_spaces/demo.yaml", objective="target_score", arms=arms,
        efficiency=eff, verdict=verdict.to_json(), trials=trials,
        importances={"instruction_share": 0.7, "lr.sft": 0.3},
        best_params={"instruction_share": 0.5}, objectives=["target_score"],
        directions=["maximize"],
    )  # fmt: skip


def test_report_page_renders_with_plots_that_have_data(tmp_path) -> None:
    data = _synthetic()
    page = render(data, tmp_path / "report.html")
    html = page.read_text()
    assert "Recommendation:" in html and data.verdict["text"][:40] in html.replace("&#x27;", "'")
    plots = inline_pngs(html)
    assert len(plots) == 5 and all(_has_data(p) for p in plots)
    shot = screenshot(page, tmp_path / "report.png")  # kept in the test's output directory
    assert shot.shape[0] >= 2000 and _has_data(shot)
    # an empty report still renders, and its empty plots are detectably empty
    empty = render(
        ReportData(sweep="e", space_file="x", objective="target_score", arms=[], efficiency=[],
                   verdict={"intervals": {}, "differences": {}, "best": "-", "recommended": "-",
                            "significant": False, "text": "no data"}, trials=[]),
        tmp_path / "empty.html",
    )  # fmt: skip
    assert not all(_has_data(p) for p in inline_pngs(empty.read_text()))


@pytest.mark.ray
@pytest.mark.slow
def test_report_from_a_real_sweep_recomputed_from_mlflow(
    ray_session, small_demo_data, tmp_path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from hybridft.sweep.report import build_report
    from hybridft.sweep.stats import decide
    from hybridft.sweep.tune import run_sweep

    monkeypatch.setenv("HYBRIDFT_USER", "bob")
    monkeypatch.setenv("HYBRIDFT_ROLES", "trainer,viewer")
    monkeypatch.setenv("HYBRIDFT_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    # the target is a user's own task (own_task.py: not hybridft's generator, its own labels,
    # shorter texts, another vocabulary) beside the demo's instruction suite; no code changes
    data = small_demo_data
    task = write_own_task(tmp_path / "own_task")
    own, demo = prompt_words(task["train"]), prompt_words(data / "sft/it_desk/train.jsonl")
    assert np.mean([len(w) for w in own]) < 0.5 * np.mean([len(w) for w in demo])
    own_vocab = {w for row in own for w in row}
    assert len(own_vocab & {w for row in demo for w in row}) < 0.1 * len(own_vocab)
    spec = own_task_job(tmp_path, data, task)
    spec["eval"]["task_graph"] = str(data / "task_graph.yaml")  # knows only the demo's tasks
    job = write_job(tmp_path, spec)
    space = space_dict(job)
    space["parameters"] = {"instruction_share": {"type": "float", "low": 0.2, "high": 0.8},
                           "lr.sft": {"type": "float", "low": 5e-3, "high": 1e-2, "log": True}}  # fmt: skip
    space["budget"] = {"trials": 1, "tokens": BUDGET, "seeds": [0]}
    space.pop("asha")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = run_sweep(
        write_space(tmp_path, space), storage_dir=tmp_path / "sweeps", tracking_uri=tracking,
        verbose=0,
    )  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump({"name": "p", "metrics": [{"metric": "eval/score", "min": 0}]})
    )
    eval_examples = 16

    def report(events: list[str]) -> tuple[Path, dict]:
        page = build_report(
            sweep.sweep_dir, seeds=2, label_sizes=(50,), eval_examples=eval_examples,
            register_as="rec", policy_path=policy, tracking_uri=tracking, on_event=events.append,
            evidence_seeds=1,
        )  # fmt: skip
        return page, json.loads((page.parent / "report.json").read_text())

    page, doc = report([])

    # the report is about the user's task: its target, and the majority-class baseline of its
    # own test rows (the most frequent training label, always answered)
    assert doc["target"] == SOURCE
    train_labels = labels_of(task["train"])
    top, n_train = Counter(train_labels).most_common(1)[0][0], len(train_labels)
    test_labels = labels_of(task["test"])[:eval_examples]
    majority = sum(y == top for y in test_labels) / eval_examples
    assert 0 < majority < 1 and doc["majority_baseline"] == pytest.approx(majority)

    # every arm trained the same budget (matched compute) with 2 seeds
    arms = doc["arms"]
    assert sorted((r["arm"], r["seed"]) for r in arms) == sorted(
        (a, s) for a in ("sft_only", "instruction_only", "best_hybrid") for s in (0, 1)
    )
    tokens = {r["trained_tokens"] for r in arms}
    assert min(tokens) >= BUDGET and max(tokens) - min(tokens) <= 2 * 128 * 2
    # label efficiency at 50 labels, one evidence seed: SFT from the base and SFT from the
    # instruction-tuned start (seed 0's instruction-only model); at all labels the curve's point
    # from the base is the SFT-only arm itself (200 and 1000 labels are the same code path)
    assert sorted((r["arm"], r["labels"], r["seed"]) for r in doc["efficiency"]) == sorted(
        [("base_start", 50, 0), ("it_start", 50, 0), ("base_start", n_train, 0),
         ("base_start", n_train, 1)]
    )  # fmt: skip
    it_runs = [r for r in doc["runs"] if r["arm"] == "it_start"]
    inst = {r["seed"]: r for r in arms if r["arm"] == "instruction_only"}
    assert len(it_runs) == 1
    assert all(r["base_dir"] == inst[r["seed"]]["model_dir"] for r in it_runs)

    # recompute from MLflow: each run's eval.json -> per-row target scores -> the same verdict
    client = MlflowClient(tracking_uri=tracking)
    runs = client.search_runs(
        [client.get_experiment_by_name("hybridft").experiment_id],
        filter_string="tags.`hybridft.kind` = 'report-run'",
    )
    subsets = [r for r in runs if r.data.tags["hybridft.labels"] == "50"]
    runs = [r for r in runs if r.data.tags["hybridft.labels"] == "all"]
    scores: dict[str, list[list[float]]] = {}
    cost: dict[str, list[float]] = {}
    for run in sorted(runs, key=lambda r: r.data.tags["hybridft.seed"]):
        arm = run.data.tags["hybridft.arm"]
        local = client.download_artifacts(
            run.info.run_id, "eval.json", str(tmp_path / run.info.run_id)
        )
        per = json.loads(Path(local).read_text())["tasks"][SOURCE]["per_example"]
        assert run.data.metrics[f"eval/{SOURCE}/accuracy"] == pytest.approx(np.mean(per))
        scores.setdefault(arm, []).append(per)
        cost.setdefault(arm, []).append(run.data.metrics["trained_tokens"])
    assert len(runs) == 6
    assert {a: len(s) for a, s in scores.items()} == {a: 2 for a in scores}
    assert {len(p) for s in scores.values() for p in s} == {eval_examples}  # test rows
    # the report's stored rows are these runs' rows, arm by arm
    by_run = {r["mlflow_run_id"]: r for r in arms}
    for run in runs:
        row = by_run[run.info.run_id]
        assert (row["arm"], str(row["seed"])) == (
            run.data.tags["hybridft.arm"],
            run.data.tags["hybridft.seed"],
        )
    again = decide(scores, {a: float(np.mean(c)) for a, c in cost.items()}, seed=0)
    for key in ("intervals", "differences", "best", "significant"):
        assert again.to_json()[key] == doc["verdict"][key]
    for arm, iv in doc["verdict"]["intervals"].items():
        assert iv["mean"] == pytest.approx(float(np.mean(scores[arm])))
        assert doc["arm_scores"][arm] == {"mean": iv["mean"], "ci95": [iv["low"], iv["high"]]}
    # the Evidence row, recomputed from the same runs: instruction-tuned start vs the base
    from hybridft.sweep.evidence import label_efficiency

    at_50 = {}
    for run in subsets:
        local = client.download_artifacts(run.info.run_id, "eval.json", str(tmp_path / "n50"))
        at_50[run.data.tags["hybridft.arm"]] = [
            json.loads(Path(local).read_text())["tasks"][SOURCE]["per_example"]
        ]
    assert sorted(at_50) == ["base_start", "it_start"]
    again_ev = label_efficiency({50: (at_50["it_start"], at_50["base_start"])}, doc["margin"])
    evidence = {e["id"]: e for e in doc["evidence"]}
    assert evidence["label_efficiency"] == json.loads(json.dumps(again_ev.to_json()))
    assert set(evidence["label_efficiency"]) >= {"id", "claim", "source", "measured", "ci95",
                                                  "verdict"}  # fmt: skip
    assert evidence["heldout_clusters"]["verdict"] == "inconclusive"  # every cluster trained

    # ~13 steps per arm: the guard holds the verdict, says why, and registers nothing
    assert doc["verdict"]["inconclusive"] and doc["verdict"]["recommended"] is None
    assert doc["guard"]["reasons"] and doc["verdict"]["text"].startswith("Inconclusive")
    assert doc["registration"]["version"] is None
    assert not client.search_registered_models(filter_string="name = 'rec'")

    # the page as a user sees it: rendered headless, every plot with data
    html = page.read_text()
    assert "Recommendation: none (inconclusive)" in html and "Evidence" in html
    plots = inline_pngs(html)
    # scores, secondary, efficiency, trials, importances: the score bars have height only where
    # a mean is above 0; importances need >= 2 completed trials (this sweep has one)
    assert len(plots) == 5
    assert _has_data(plots[0]) == any(iv["mean"] > 0 for iv in doc["verdict"]["intervals"].values())
    # held-out / forgetting / ECE: each only where measured (arms scored by accuracy skip label
    # probabilities, so no ECE; this job evaluates no instruction task)
    measured = any(
        r.get(k) is not None for r in arms for k in ("heldout_score", "forgetting", "ece")
    )
    assert _has_data(plots[1]) == measured
    assert all(_has_data(p) for p in plots[2:4]) and not _has_data(plots[4])
    assert _has_data(screenshot(page, tmp_path / "report.png"))

    # an interrupted report, built again: a run whose result file is cut short (killed mid-write
    # by a writer that is not atomic, a full disk) is done again and resumes from its
    # checkpoints, to the same model and scores; the others are reused
    victim = Path(arms[0]["run_dir"]) / "report_run.json"
    text = victim.read_text()
    victim.write_text(text[: len(text) // 2])
    events: list[str] = []
    _, again_doc = report(events)
    assert any("its result is unreadable (JSONDecodeError): redone" in e for e in events)
    # two phases (the label-efficiency runs that start from an arm's model come second)
    phases = [re.match(r"report: (\d+) runs \((\d+) reused\)", e) for e in events]
    counts = [(int(m[1]), int(m[2])) for m in phases if m]
    assert [sum(c) for c in zip(*counts, strict=True)] == [len(doc["runs"]), len(doc["runs"]) - 1]
    assert again_doc["verdict"] == doc["verdict"] and again_doc["evidence"] == doc["evidence"]
    (redone,) = [r for r in again_doc["arms"] if r["run_name"] == arms[0]["run_name"]]
    assert redone["trained_tokens"] == arms[0]["trained_tokens"]
    assert redone["target_score"] == arms[0]["target_score"]


def test_labelled_subsets_are_the_first_rows_of_the_target_files(small_demo_data, tmp_path):
    from helpers import job_dict, write_job

    from hybridft.errors import UserError
    from hybridft.specs import load_job
    from hybridft.sweep.report import subset_file

    job = load_job(write_job(tmp_path, job_dict(tmp_path, small_demo_data)))
    out = subset_file(job, "it_desk", 20, tmp_path / "subsets")
    train = (small_demo_data / "sft/it_desk/train.jsonl").read_text().splitlines()
    assert out.read_text().splitlines() == train[:20]
    with pytest.raises(UserError, match="has 300 rows, fewer than 301"):
        subset_file(job, "it_desk", 301, tmp_path / "subsets")
