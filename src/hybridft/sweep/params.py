"""From a sampled point to a concrete job: ``apply_params``; and the define-by-run sampler.

The names a space may use are fixed by the base job (``known_parameters``):

- ``instruction_share``: the instruction stage's share of the trial's token budget (0 = SFT only,
  1 = instruction only); a stage whose share rounds to 0 tokens is dropped.
- ``replay_ratio``: share of the SFT stage's mixture drawn from the instruction sources (in the
  instruction stage's proportions); the target sources keep their relative weights.
- ``mix.<source>``: weight of an instruction source, in the instruction stage and in the replay.
- ``lr.<stage>``: a stage's peak learning rate.
- ``method``: ``full`` or ``lora``; ``lora_rank``: LoRA's r (alpha keeps the base job's alpha/r).

Pure functions: the same job and point always give the same JobSpec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hybridft.specs import JobSpec, edit_job

if TYPE_CHECKING:
    import optuna

    from hybridft.sweep.space import SearchSpace

INSTRUCTION_SHARE = "instruction_share"
REPLAY_RATIO = "replay_ratio"
METHOD = "method"
LORA_RANK = "lora_rank"
LR_PREFIX = "lr."
MIX_PREFIX = "mix."


@dataclass(frozen=True)
class Domain:
    """The values a known parameter may take, for validation messages."""

    kinds: tuple[str, ...]  # parameter types allowed: float / int / categorical
    low: float | None = None  # inclusive
    high: float | None = None
    high_open: bool = False  # high itself excluded
    choices: tuple[Any, ...] | None = None
    what: str = ""

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.low is not None and value < self.low:
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return not ("int" in self.kinds and "float" not in self.kinds and value != int(value))

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        low = "" if self.low is None else f">= {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"a value {' and '.join(x for x in (low, high) if x)} ({self.what})"


def stage_roles(job: JobSpec) -> tuple[int, int] | None:
    """(instruction stage, SFT stage) when the job is exactly that pair, in that order, else None.

    An instruction stage trains instruction sources only; an SFT stage has a ``kind: task`` source.
    """
    if len(job.stages) != 2:
        return None
    kinds = {name: source.kind for name, source in job.data.sources.items()}
    first, second = ([kinds[m.source] for m in stage.mix] for stage in job.stages)
    if all(k == "instruction" for k in first) and "task" in second:
        return 0, 1
    return None


def known_parameters(job: JobSpec) -> dict[str, Domain]:
    """Every parameter name the mapping to ``job`` understands, with its domain."""
    known: dict[str, Domain] = {
        METHOD: Domain(("categorical",), choices=("full", "lora"), what="training method"),
        LORA_RANK: Domain(("int", "categorical"), low=1, what="LoRA rank"),
    }
    for stage in job.stages:
        known[LR_PREFIX + stage.name] = Domain(
            ("float", "categorical"), low=0, what=f"peak learning rate of stage {stage.name}"
        )
    roles = stage_roles(job)
    if roles is not None:
        known[INSTRUCTION_SHARE] = Domain(
            ("float", "categorical"), low=0, high=1, what="share of the token budget"
        )
        known[REPLAY_RATIO] = Domain(
            ("float", "categorical"), low=0, high=1, high_open=True, what="share of the SFT mix"
        )
        for item in job.stages[roles[0]].mix:
            known[MIX_PREFIX + item.source] = Domain(
                ("float", "categorical"), low=0, what=f"mixture weight of {item.source}"
            )
    return known


def _share_of(job: JobSpec, roles: tuple[int, int]) -> float:
    """The base job's instruction share (of its token budgets, else of its step budgets)."""
    a, b = (job.stages[i].budget for i in roles)
    if a.tokens and b.tokens:
        return a.tokens / (a.tokens + b.tokens)
    if a.steps and b.steps:
        return a.steps / (a.steps + b.steps)
    return 0.5


def _replay_of(stage: dict[str, Any], kinds: Mapping[str, str]) -> float:
    total = sum(m["weight"] for m in stage["mix"]) or 1.0
    return sum(m["weight"] for m in stage["mix"] if kinds[m["source"]] == "instruction") / total


def _set_replay(
    sft: dict[str, Any], instruction_mix: list[dict[str, Any]], kinds: Mapping[str, str], r: float
) -> None:
    """Target sources share ``1 - r`` (relative weights kept); instruction sources share ``r``."""
    targets = [m for m in sft["mix"] if kinds[m["source"]] != "instruction"]
    replay = [m for m in instruction_mix if m["weight"] > 0]
    t_total = sum(m["weight"] for m in targets) or 1.0
    r_total = sum(m["weight"] for m in replay)
    mix = [{"source": m["source"], "weight": (1 - r) * m["weight"] / t_total} for m in targets]
    if r > 0 and r_total > 0:
        mix += [{"source": m["source"], "weight": r * m["weight"] / r_total} for m in replay]
    sft["mix"] = mix


def apply_params(
    job: JobSpec, params: Mapping[str, Any], total_tokens: int | None = None
) -> JobSpec:
    """The concrete job of one sampled point.

    Args:
        job: the base job (one stage, or an instruction stage then an SFT stage).
        params: parameter name -> value (names from ``known_parameters``).
        total_tokens: the trial's token budget (matched compute), split over the stages by
            ``instruction_share`` (the base job's own share when not sampled). None keeps the
            base job's budgets.

    Returns:
        A validated JobSpec; a stage given 0 tokens is dropped.
    """
    known = known_parameters(job)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"parameters unknown to this job: {', '.join(unknown)}")
    kinds = {name: source.kind for name, source in job.data.sources.items()}
    roles = stage_roles(job)

    def edit(d: dict[str, Any]) -> None:
        _apply(d, params, total_tokens, roles, kinds, _share_of(job, roles) if roles else 0.0)

    return edit_job(job, edit)


def _apply(
    d: dict[str, Any],
    params: Mapping[str, Any],
    total_tokens: int | None,
    roles: tuple[int, int] | None,
    kinds: Mapping[str, str],
    base_share: float,
) -> None:
    """``apply_params``' edit of the job's plain form."""
    stages: list[dict[str, Any]] = d["stages"]
    # 1) learning rates, per stage
    for stage in stages:
        if LR_PREFIX + stage["name"] in params:
            stage["lr"] = float(params[LR_PREFIX + stage["name"]])
    # 2) instruction mixture, then the SFT stage's replay of it
    if roles is not None:
        instruction, sft = (stages[i] for i in roles)
        for item in instruction["mix"]:
            if MIX_PREFIX + item["source"] in params:
                item["weight"] = float(params[MIX_PREFIX + item["source"]])
        if REPLAY_RATIO in params or any(k.startswith(MIX_PREFIX) for k in params):
            r = float(params.get(REPLAY_RATIO, _replay_of(sft, kinds)))
            _set_replay(sft, instruction["mix"], kinds, r)
    # 3) budgets: the trial's tokens split by the instruction share; an empty stage is dropped
    if total_tokens is not None:
        if roles is None:
            if len(stages) != 1:
                raise ValueError("a token budget needs one stage or an instruction + SFT pair")
            stages[0]["budget"] = {"steps": None, "tokens": total_tokens}
        else:
            share = float(params.get(INSTRUCTION_SHARE, base_share))
            first = round(share * total_tokens)
            for i, tokens in zip(roles, (first, total_tokens - first), strict=True):
                stages[i]["budget"] = {"steps": None, "tokens": tokens}
            d["stages"] = [s for s in stages if s["budget"]["tokens"] > 0]
    # 4) method and LoRA rank
    if METHOD in params:
        d["method"]["type"] = params[METHOD]
        if params[METHOD] == "full":  # adapter policies exist only under LoRA
            for stage in d["stages"]:
                if stage["adapter"] in ("continue", "merge_and_new"):
                    stage["adapter"] = None
    if LORA_RANK in params:
        lora = d["method"]["lora"]
        rank = int(params[LORA_RANK])
        lora["alpha"] = lora["alpha"] * rank / lora["r"]
        lora["r"] = rank


def suggest_params(space: SearchSpace, trial: optuna.Trial) -> dict[str, Any]:
    """Define-by-run: sample ``space`` from an Optuna trial, parents before children.

    A parameter with ``when: {parent: value}`` is sampled only when every parent took that value;
    otherwise it does not exist in the point (Optuna sees a conditional space).
    """
    params: dict[str, Any] = {}
    for name in space.sampling_order():
        p = space.parameters[name]
        if any(parent not in params or params[parent] != v for parent, v in p.when.items()):
            continue
        if p.type == "categorical":
            params[name] = trial.suggest_categorical(name, p.choices or [])
        elif p.type == "int":
            params[name] = trial.suggest_int(name, int(p.low or 0), int(p.high or 0), log=p.log)
        else:
            params[name] = trial.suggest_float(name, p.low or 0.0, p.high or 0.0, log=p.log)
    return params


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Seeded TPE, multivariate with groups as Optuna recommends for conditional spaces; or a
    seeded grid over the categorical choices (``sampler.type: grid``)."""
    import warnings

    import optuna

    if space.sampler.type == "grid":
        grid = {name: list(p.choices or []) for name, p in space.parameters.items()}
        return optuna.samplers.GridSampler(grid, seed=space.seed)

    with warnings.catch_warnings():  # ``group`` is marked experimental; it is what we want
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=space.seed,
            n_startup_trials=space.sampler.startup_trials,
            multivariate=True,
            group=True,
        )


# A point drawn again (every parameter equal to an earlier trial's: categorical or integer
# spaces) would train the same job on the same seeds, for the same result. It is not trained:
# the drawn Optuna trial is told the earlier one's values (as Optuna's FAQ advises), or PRUNED
# while that one is still running, marked with this attribute, and Optuna draws again.
DUPLICATE_OF = "hybridft.duplicate_of"
MAX_REDRAWS = 8  # then the point is trained anyway (a small space, nearly exhausted)


def twin_of(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """An earlier trial of ``study`` at the same point as ``trial``, if any: completed, running or
    pruned (ASHA-stopped), never one that is itself a duplicate."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
    for other in study.get_trials(deepcopy=False, states=states):
        if (
            other.number != trial.number
            and DUPLICATE_OF not in other.user_attrs
            and other.params == trial.params
        ):
            return other
    return None


def draw_distinct(study: optuna.Study, draw: Callable[[], tuple[optuna.Trial, Any]]) -> Any:
    """``draw()`` (asks ``study`` for a trial, returns it and its point) until the point is new
    to the study, at most ``MAX_REDRAWS`` times more; each duplicate is settled as above."""
    from optuna.trial import TrialState

    for attempt in range(MAX_REDRAWS + 1):
        trial, point = draw()
        twin = twin_of(study, trial)
        if twin is None or attempt == MAX_REDRAWS:
            return point
        trial.set_user_attr(DUPLICATE_OF, twin.number)
        if twin.state == TrialState.COMPLETE:
            study.tell(trial, twin.values)
        else:
            study.tell(trial, state=TrialState.PRUNED)
    raise AssertionError("unreachable")


def sample_sequence(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    """The first ``n`` points a sweep of ``space`` asks for, without training anything.

    Before ``sampler.startup_trials`` results exist, TPE samples at random from its seeded
    generator, so these points are a pure function of the space and its seed: a sweep's trials
    0..n-1 get exactly these (for n <= startup_trials), duplicates drawn again as in a sweep.
    """
    import optuna

    study = optuna.create_study(sampler=make_sampler(space), directions=space.directions)

    def draw() -> tuple[optuna.Trial, dict[str, Any]]:
        trial = study.ask()
        return trial, suggest_params(space, trial)

    return [draw_distinct(study, draw) for _ in range(n)]
