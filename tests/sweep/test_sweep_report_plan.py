"""The report's run plan: arms, then the runs each published direction needs (no training)."""

from __future__ import annotations

from pathlib import Path

from helpers import write_job
from sweep_helpers import hybrid_job

from hybridft.specs import load_job
from hybridft.sweep.report_plan import (
    DEMO_DIRECTIONS,
    DIRECTIONS,
    PlanInputs,
    plan_runs,
    started_from,
)

BEST = {"instruction_share": 0.5, "replay_ratio": 0.2, "lr.sft": 1e-3, "method": "full"}


def _inputs(tmp: Path, data: Path, directions=DEMO_DIRECTIONS, seeds: int = 2) -> PlanInputs:
    job = load_job(write_job(tmp, hybrid_job(tmp, data)))
    return PlanInputs(
        base_job=job, best_params=BEST, tokens=8000, sweep_name="sw", seeds=seeds,
        eval_examples=16, target="it_desk", n_target=300, label_sizes=(50, 200, 1000),
        directions=directions,
    )  # fmt: skip


def _subset(tmp: Path):
    def make(job, n):
        path = tmp / f"subset-{n}.jsonl"
        path.write_text("")
        return path

    return make


def _replay(job) -> float:
    sft = job.stages[-1]
    kinds = {n: s.kind for n, s in job.data.sources.items()}
    return sum(m.weight for m in sft.mix if kinds[m.source] == "instruction") / sum(
        m.weight for m in sft.mix
    )


def test_arms_differ_only_in_the_schedule_and_sft_only_is_labelled_rows_alone(
    small_demo_data, tmp_path
) -> None:
    plan = plan_runs(_inputs(tmp_path, small_demo_data), _subset(tmp_path))
    arms = {(r.group, r.seed): r for r in plan if r.group in ("sft_only", "instruction_only",
                                                              "best_hybrid")}  # fmt: skip
    assert sorted(arms) == sorted(
        (a, s) for a in ("sft_only", "instruction_only", "best_hybrid") for s in (0, 1)
    )
    sft, inst, hybrid = (arms[(a, 0)].job for a in ("sft_only", "instruction_only", "best_hybrid"))
    assert [s.name for s in sft.stages] == ["sft"] and _replay(sft) == 0.0
    assert [s.name for s in inst.stages] == ["instruction"]
    assert [s.name for s in hybrid.stages] == ["instruction", "sft"]
    assert abs(_replay(hybrid) - BEST["replay_ratio"]) < 1e-9
    budgets = {sum(s.budget.tokens for s in r.job.stages) for r in arms.values()}
    assert budgets == {8000}  # matched compute


def test_label_efficiency_compares_two_starts_at_every_label_count(small_demo_data, tmp_path):
    plan = plan_runs(_inputs(tmp_path, small_demo_data), _subset(tmp_path))
    names = {r.name for r in plan}
    assert len(names) == len(plan)  # unique run names: a resumed report finds each run
    for seed in (0, 1):
        starts = {
            (r.group, r.labels) for r in plan if r.seed == seed and r.group.endswith("_start")
        }
        # 1000 > the 300 target rows: left out; "all labels" comes with convergence
        assert starts == {("base_start", 50), ("base_start", 200), ("it_start", 50),
                          ("it_start", 200)}  # fmt: skip
        for r in plan:
            if r.seed == seed and r.group == "it_start":
                assert r.start_from == f"sw-instruction_only-s{seed}" and r.start_from in names
            if r.group == "base_start":
                assert r.start_from is None
    for n in (50, 200):  # both starts train the same budget at a label count
        budgets = {sum(s.budget.tokens for s in r.job.stages) for r in plan if r.labels == n}
        assert budgets == {max(8000 // 3, 8000 * n // 300)}
    it = next(r for r in plan if r.group == "it_start" and r.labels == 50)
    assert it.job.data.sources["it_desk"].paths == [str(tmp_path / "subset-50.jsonl")]
    moved = started_from(it, "/models/inst")
    assert moved.model.base == "/models/inst" and moved.stages == it.job.stages


def test_every_direction_plans_its_variants(small_demo_data, tmp_path) -> None:
    plan = plan_runs(_inputs(tmp_path, small_demo_data, DIRECTIONS, seeds=1), _subset(tmp_path))
    replays = sorted(_replay(r.job) for r in plan if r.group == "replay")
    assert [round(x, 6) for x in replays] == [0.0, 0.01, 0.05, 0.2]
    curve = sorted(r.tokens for r in plan if r.group == "base_start" and r.labels is None)
    assert curve == [2000, 4000]  # the whole budget from the base: the SFT-only arm itself
    it_curve = sorted(r.tokens for r in plan if r.group == "it_start" and r.labels is None)
    assert it_curve == [2000, 4000, 8000]
    other = [r for r in plan if r.group == "other_method"]
    assert [r.job.method.type for r in other] == ["lora"]
    demo = plan_runs(_inputs(tmp_path, small_demo_data, DEMO_DIRECTIONS, seeds=1),
                     _subset(tmp_path))  # fmt: skip
    assert not {r.group for r in demo} & {"replay", "other_method"}
    assert len(demo) < len(plan)


def test_no_direction_means_only_the_arms(small_demo_data, tmp_path) -> None:
    plan = plan_runs(_inputs(tmp_path, small_demo_data, (), seeds=1), _subset(tmp_path))
    assert {r.group for r in plan} == {"sft_only", "instruction_only", "best_hybrid"}
