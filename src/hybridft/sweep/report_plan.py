"""The decision report's runs: the three arms, then the runs each published direction needs.

Every run is a concrete job derived from the sweep's best hybrid configuration, so runs differ only
in what a direction varies:

* arms (the decision): SFT only (share 0, no replay: labelled target rows alone), instruction only
  (share 1), the best hybrid, each with every report seed at the space's token budget;
* ``label_efficiency`` (Gupta et al. 2023): SFT on 50 / 200 / 1000 target labels from two starts,
  the base and the instruction-only arm's model of the same seed (the instruction-tuned start),
  both at the same SFT budget (``subset_tokens``: proportional to the subset, at least a third of
  the arms' budget); with ``convergence`` also planned, all labels from both starts (SFT only at
  all labels from the base is the arm itself);
* ``convergence`` (Longpre et al. 2023): the same two starts with all labels at 1/4, 1/2 and the
  whole budget;
* ``replay_forgetting`` (Dong et al. 2023, Scialom et al. 2022): the best hybrid with 0, 1, 5 and
  20% replay;
* ``lora_vs_full`` (Biderman et al. 2024): the best hybrid with the other method;
* ``heldout_clusters`` (Wei et al. 2021) needs no run: the instruction-only arm against the base,
  both scored on the clusters no run trains.

Runs that start from another run's model (``start_from``) train in a second wave, once their start
exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridft.specs import JobSpec, edit_job
from hybridft.sweep.params import apply_params

ARMS = ("sft_only", "instruction_only", "best_hybrid")
SHARE = "instruction_share"
REPLAY = "replay_ratio"
LABEL_SIZES = (50, 200, 1000)
REPLAYS = (0.0, 0.01, 0.05, 0.2)
DIRECTIONS = (
    "label_efficiency",
    "convergence",
    "replay_forgetting",
    "heldout_clusters",
    "lora_vs_full",
)
MIN_SUBSET_SHARE = 1 / 3
# What ``make demo`` measures within its time; ``hybridft study`` measures every direction.
DEMO_DIRECTIONS = ("label_efficiency", "heldout_clusters")


@dataclass(frozen=True)
class PlannedRun:
    """One report run: its group (an arm or a direction's variant), seed and concrete job."""

    group: str
    seed: int
    job: JobSpec
    labels: int | None = None  # target rows trained on (None: all of them)
    tokens: int | None = None  # the run's token budget
    variant: str = ""  # what the direction varies: "replay 0.05", "lora", "1/4 budget", ...
    start_from: str | None = None  # the run whose final model this run starts from

    @property
    def name(self) -> str:
        return self.job.name


def arm_params(best: dict[str, Any], arm: str) -> dict[str, Any]:
    """The arm's parameters: the best hybrid's, with the schedule of the arm."""
    params = dict(best)
    if arm == "sft_only":
        params[SHARE] = 0.0
        if REPLAY in params:
            params[REPLAY] = 0.0  # labelled target rows only: SFT as the literature means it
    elif arm == "instruction_only":
        params[SHARE] = 1.0
    return params


@dataclass(frozen=True)
class PlanInputs:
    """What the plan is drawn from: the space's base job and budget, the sweep's best point."""

    base_job: JobSpec
    best_params: dict[str, Any]
    tokens: int
    sweep_name: str
    seeds: int
    eval_examples: int
    target: str
    n_target: int
    label_sizes: Sequence[int] = LABEL_SIZES
    directions: Sequence[str] = DEMO_DIRECTIONS
    evidence_seeds: int | None = None  # seeds of the evidence runs (default: ``seeds``)
    label_probs: bool = False  # scored by the gold label's probability: the runs need them

    @property
    def n_evidence(self) -> int:
        return min(self.seeds, self.evidence_seeds or self.seeds)


def concrete_job(
    inputs: PlanInputs, params: dict[str, Any], seed: int, name: str, tokens: int | None = None
) -> JobSpec:
    job = apply_params(inputs.base_job, params, total_tokens=tokens or inputs.tokens)

    def edit(d: dict[str, Any]) -> None:
        d.update(seed=seed, name=name)
        d["eval"].update(max_examples=inputs.eval_examples, label_probs=inputs.label_probs)

    return edit_job(job, edit)


def with_target_rows(job: JobSpec, target: str, path: Path) -> JobSpec:
    """``job`` training on the target rows of ``path`` (a labelled subset)."""
    return edit_job(job, lambda d: d["data"]["sources"][target].update(paths=[str(path)]))


def plan_runs(inputs: PlanInputs, subset: Any) -> list[PlannedRun]:
    """Every run of the report, arms first. ``subset(job, n)`` gives the file of n target rows."""
    i, best = inputs, inputs.best_params
    runs: list[PlannedRun] = []
    for arm in ARMS:
        for seed in range(i.seeds):
            name = f"{i.sweep_name}-{arm}-s{seed}"
            job = concrete_job(i, arm_params(best, arm), seed, name)
            runs.append(PlannedRun(arm, seed, job, tokens=i.tokens))
    sizes = [n for n in i.label_sizes if n < i.n_target]
    sft = arm_params(best, "sft_only")
    if "label_efficiency" in i.directions:
        for seed in range(i.n_evidence):
            start = f"{i.sweep_name}-instruction_only-s{seed}"
            for n in sizes:
                tokens = subset_tokens(i, n)
                for group in ("base_start", "it_start"):
                    name = f"{i.sweep_name}-{group}-n{n}-s{seed}"
                    job = concrete_job(i, sft, seed, name, tokens)
                    job = with_target_rows(job, i.target, subset(job, n))
                    runs.append(
                        PlannedRun(group, seed, job, n, tokens, f"{n} labels",
                                   start if group == "it_start" else None)
                    )  # fmt: skip
    if "convergence" in i.directions:
        for seed in range(i.n_evidence):
            start = f"{i.sweep_name}-instruction_only-s{seed}"
            # the whole budget with all labels: also label efficiency's "all" point
            name = f"{i.sweep_name}-it_start-all-s{seed}"
            job = concrete_job(i, sft, seed, name)
            runs.append(PlannedRun("it_start", seed, job, None, i.tokens, "all labels", start))
            for frac in (4, 2):
                tokens = i.tokens // frac
                for group in ("base_start", "it_start"):
                    name = f"{i.sweep_name}-{group}-t{tokens}-s{seed}"
                    job = concrete_job(i, sft, seed, name, tokens)
                    runs.append(
                        PlannedRun(group, seed, job, None, tokens, f"1/{frac} budget",
                                   start if group == "it_start" else None)
                    )  # fmt: skip
    if "replay_forgetting" in i.directions and REPLAY in best:
        for ratio in REPLAYS:
            for seed in range(i.n_evidence):
                name = f"{i.sweep_name}-replay{ratio:g}-s{seed}"
                job = concrete_job(i, {**best, REPLAY: ratio}, seed, name)
                runs.append(PlannedRun("replay", seed, job, None, i.tokens, f"replay {ratio:g}"))
    if "lora_vs_full" in i.directions:
        other = "full" if best.get("method", i.base_job.method.type) == "lora" else "lora"
        params = {**best, "method": other}
        if other == "full":
            params.pop("lora_rank", None)
        for seed in range(i.n_evidence):
            name = f"{i.sweep_name}-{other}-s{seed}"
            job = concrete_job(i, params, seed, name)
            runs.append(PlannedRun("other_method", seed, job, None, i.tokens, other))
    return runs


def subset_tokens(inputs: PlanInputs, n: int) -> int:
    """The budget of an SFT run on ``n`` of the target's labels (the same from both starts):
    proportional to the subset's size, at least a third of the arms' budget (tens of epochs of
    a small subset), never more than the whole budget."""
    share = min(1.0, max(n / max(inputs.n_target, 1), MIN_SUBSET_SHARE))
    return int(inputs.tokens * share)


def started_from(run: PlannedRun, model_dir: str) -> JobSpec:
    """The run's job starting from ``model_dir`` (another run's final model)."""
    return edit_job(run.job, lambda d: d["model"].update(base=model_dir))
