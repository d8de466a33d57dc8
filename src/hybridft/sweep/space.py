"""Search spaces (``search_spaces/*.yaml``): a base job, the parameters a trial may change, what to
optimise, the budget of every trial, and early stopping.

Loaded like a job spec: unknown keys are errors, and every mistake (an unknown parameter, low >
high, a log scale from <= 0, a condition on a missing parent, an objective nobody produces) is one
line naming ``file:line: key`` before any trial starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError

from hybridft.errors import located
from hybridft.specfile import describe_error, key_path, line_of, load_yaml_model
from hybridft.specs import JobSpec, PosInt, Strict, _job_problems, load_job
from hybridft.sweep.objectives import (
    INTERMEDIATE_METRICS,
    NEEDS_TARGET_EVAL,
    NEEDS_TASK_GRAPH,
    NEEDS_VALIDATION,
    PRODUCED_OBJECTIVES,
)
from hybridft.sweep.params import INSTRUCTION_SHARE, MIX_PREFIX, REPLAY_RATIO, known_parameters

Scalar = bool | int | float | str
Loc = tuple[Any, ...]


class ParamSpec(Strict):
    """One parameter: a float / int range (optionally log-scaled) or categorical choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: Annotated[list[Scalar], Field(min_length=1)] | None = None
    # Define-by-run: the parameter exists only when each named parent took that value.
    when: dict[str, Scalar] = {}


ObjectiveDirection = Literal["minimize", "maximize"]


class ObjectiveSpec(Strict):
    name: str
    direction: ObjectiveDirection


class SweepBudgetSpec(Strict):
    trials: PosInt
    # Trained tokens per trial and seed, split over the stages (matched compute across trials).
    tokens: PosInt
    # Each trial trains its configuration once per seed; objectives are means over the seeds.
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    # At most this many trials at once (default: as many as the cluster holds).
    max_concurrent: PosInt | None = None


class AshaSpec(Strict):
    """Asynchronous successive halving on an intermediate metric, at milestones of trained
    ``unit`` (summed over a trial's seeds): grace_period, grace_period * reduction_factor, ..."""

    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    unit: Literal["tokens", "steps"] = "tokens"
    grace_period: PosInt
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


class SamplerSpec(Strict):
    # tpe: Optuna's TPE; grid: every combination of the (categorical) parameters' choices, once
    # each, in a seeded order (the baseline a search is compared with).
    type: Literal["tpe", "grid"] = "tpe"
    # Configurations drawn at random (from the space's seed) before TPE models the results.
    startup_trials: Annotated[int, Field(ge=0)] = 10


class SearchSpace(Strict):
    """A sweep over one base job."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    job: str  # the base job spec (relative to the working directory, else to this file)
    seed: int = 0  # the sampler's seed: same seed, same sequence of configurations
    # Deep-merged into the base job before sampling (e.g. smaller trials, validation files).
    job_overrides: dict[str, Any] = {}
    parameters: Annotated[dict[str, ParamSpec], Field(min_length=1)]
    objectives: Annotated[list[ObjectiveSpec], Field(min_length=1)]
    budget: SweepBudgetSpec
    asha: AshaSpec | None = None
    sampler: SamplerSpec = SamplerSpec()
    # Where a trial trains. in_process: in the Tune trial's own process, reused from trial to
    # trial (Ray Train's local mode; one worker; ``scaling.max_failures`` restarts the trial's
    # process, which resumes from its last checkpoint). worker_group: a Ray Train worker group
    # per trial (several workers, DeepSpeed). auto: in_process for one-worker jobs.
    trial_runner: Literal["auto", "in_process", "worker_group"] = "auto"
    source_file: str = Field(default="", exclude=True)
    _base_job: JobSpec | None = PrivateAttr(default=None)

    @property
    def base_job(self) -> JobSpec:
        """The base job with ``job_overrides`` applied (set by ``load_space``)."""
        if self._base_job is None:
            raise RuntimeError("load the space with load_space() to resolve its job")
        return self._base_job

    @property
    def directions(self) -> list[ObjectiveDirection]:
        return [o.direction for o in self.objectives]

    @property
    def in_process(self) -> bool:
        """Whether trials train in process (``trial_runner``, ``auto`` resolved)."""
        if self.trial_runner == "auto":
            job = self.base_job
            return job.scaling.num_workers == 1
        return self.trial_runner == "in_process"

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def sampling_order(self) -> list[str]:
        """Parameter names, parents before their children (file order otherwise)."""
        order: list[str] = []
        pending = list(self.parameters)
        while pending:
            ready = [n for n in pending if all(p in order for p in self.parameters[n].when)]
            if not ready:
                raise ValueError(f"conditions form a cycle among {', '.join(pending)}")
            order.append(ready[0])
            pending.remove(ready[0])
        return order


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_job_path(space: SearchSpace, path: Path) -> Path:
    for candidate in (Path(space.job), path.parent / space.job):
        if candidate.is_file():
            return candidate
    raise located(
        str(path), line_of(path, ("job",)), "job", f"expected a job spec file, got {space.job!r}"
    )


def _job_with_overrides(space: SearchSpace, path: Path) -> JobSpec:
    """The base job (its own errors name its file), then the overrides (errors name this file)."""
    job = load_job(_resolve_job_path(space, path))
    if not space.job_overrides:
        return job
    merged = _deep_merge(job.model_dump(), space.job_overrides)
    try:
        out = JobSpec.model_validate(merged)
    except ValidationError as exc:
        first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        key, problem = describe_error(JobSpec, first)
        loc = ("job_overrides", *first["loc"])
        raise located(str(path), line_of(path, loc), f"job_overrides.{key}", problem) from None
    problems = _job_problems(out)
    if problems:
        loc, problem = problems[0]
        where = ("job_overrides", *loc)
        raise located(str(path), line_of(path, where), key_path(where), problem)
    out.source_file = job.source_file
    return out


def _range_problems(name: str, p: ParamSpec) -> list[tuple[Loc, str]]:
    at = ("parameters", name)
    if p.type == "categorical":
        if p.choices is None:
            return [(at + ("choices",), "expected a list of choices for type categorical")]
        extra = [k for k in ("low", "high") if getattr(p, k) is not None] + (["log"] * p.log)
        return [(at + (k,), "expected no low/high/log for type categorical") for k in extra[:1]]
    if p.choices is not None:
        return [(at + ("choices",), f"expected no choices for type {p.type} (use low/high)")]
    for bound in ("low", "high"):
        value = getattr(p, bound)
        if value is None:
            return [(at + (bound,), f"required for type {p.type}")]
        if p.type == "int" and value != int(value):
            return [(at + (bound,), f"expected an integer for type int, got {value:g}")]
    low, high = float(p.low or 0), float(p.high or 0)
    if low > high:
        return [(at + ("low",), f"expected low <= high ({high:g}), got {low:g}")]
    if p.log and low <= 0:
        return [(at + ("low",), f"expected a number > 0 with log: true, got {low:g}")]
    return []


def _condition_problems(space: SearchSpace, name: str, p: ParamSpec) -> list[tuple[Loc, str]]:
    """``when: {parent: value}``: the parent is another categorical parameter that can take it."""
    problems: list[tuple[Loc, str]] = []
    for parent, value in p.when.items():
        where: Loc = ("parameters", name, "when", parent)
        other = space.parameters.get(parent)
        if other is None or parent == name:
            names = ", ".join(n for n in space.parameters if n != name)
            problems.append(
                (where, f"expected a parameter of this space ({names}), got {parent!r}")
            )
        elif other.type != "categorical":
            problems.append(
                (where, f"expected a categorical parent, got {parent!r} ({other.type})")
            )
        elif value not in (other.choices or []):
            choices = ", ".join(map(str, other.choices or []))
            problems.append(
                (where, f"expected one of {parent}'s choices ({choices}), got {value!r}")
            )
    return problems


def _parameter_problems(space: SearchSpace, job: JobSpec) -> list[tuple[Loc, str]]:
    known = known_parameters(job)
    problems: list[tuple[Loc, str]] = []
    for name, p in space.parameters.items():
        at: Loc = ("parameters", name)
        if name not in known:
            hybrid = name in (INSTRUCTION_SHARE, REPLAY_RATIO) or name.startswith(MIX_PREFIX)
            if hybrid and not any(k.startswith(MIX_PREFIX) for k in known):
                stages = ", ".join(s.name for s in job.stages)
                problems.append(
                    (at, f"expected a job with an instruction stage then an SFT stage for "
                         f"{name}, got stages: {stages}")
                )  # fmt: skip
            else:
                problems.append(
                    (at, f"expected a known parameter ({', '.join(known)}), got {name!r}")
                )
            continue
        problems += _range_problems(name, p)
        domain = known[name]
        if p.type not in domain.kinds:
            problems.append(
                (at + ("type",), f"expected {' or '.join(domain.kinds)}, got {p.type!r}")
            )
            continue
        values = list(p.choices or []) + [v for v in (p.low, p.high) if v is not None]
        for value in values:
            if not domain.admits(value):
                key = (
                    "choices" if p.type == "categorical" else ("low" if value == p.low else "high")
                )
                problems.append((at + (key,), f"expected {domain.describe()}, got {value!r}"))
                break
        problems += _condition_problems(space, name, p)
    return problems


def _grid_problems(space: SearchSpace) -> list[tuple[Loc, str]]:
    """A grid needs every parameter categorical and unconditional (a finite product)."""
    if space.sampler.type != "grid":
        return []
    problems: list[tuple[Loc, str]] = []
    for name, p in space.parameters.items():
        if p.type != "categorical" or p.when:
            problems.append(
                (("parameters", name), "expected a categorical parameter without `when` "
                 f"(sampler.type is grid), got {p.type}" + (" with when" if p.when else ""))
            )  # fmt: skip
    size = 1
    for p in space.parameters.values():
        size *= len(p.choices or [])
    if not problems and space.budget.trials > size:
        problems.append(
            (("budget", "trials"), f"expected at most the grid's {size} points, got "
             f"{space.budget.trials}")
        )  # fmt: skip
    return problems


def _runner_problems(space: SearchSpace, job: JobSpec) -> list[tuple[Loc, str]]:
    if space.trial_runner == "in_process" and job.scaling.num_workers != 1:
        return [
            (("trial_runner",), "expected worker_group or auto for a job with "
             f"scaling.num_workers {job.scaling.num_workers} (in_process trains one worker), "
             "got in_process")
        ]  # fmt: skip
    return []


def _goal_problems(space: SearchSpace, job: JobSpec) -> list[tuple[Loc, str]]:
    """Objectives and the early-stopping metric: produced, and with the data they need."""
    problems: list[tuple[Loc, str]] = []
    needs: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for i, objective in enumerate(space.objectives):
        at: Loc = ("objectives", i, "name")
        if objective.name not in PRODUCED_OBJECTIVES:
            produced = ", ".join(sorted(PRODUCED_OBJECTIVES))
            problems.append(
                (
                    at,
                    f"expected an objective the evaluator produces ({produced}), got {objective.name!r}",
                )
            )
        elif objective.name in seen:
            problems.append((at, f"expected each objective once, got {objective.name!r} twice"))
        seen.add(objective.name)
        needs.append((at, objective.name))
    if space.asha is not None:
        at = ("asha", "metric")
        if space.asha.metric not in INTERMEDIATE_METRICS:
            reported = ", ".join(sorted(INTERMEDIATE_METRICS))
            problems.append(
                (
                    at,
                    f"expected a metric reported while training ({reported}), got {space.asha.metric!r}",
                )
            )
        needs.append((at, space.asha.metric))
        if space.asha.unit == "tokens" and space.asha.grace_period >= space.budget.tokens:
            problems.append(
                (("asha", "grace_period"), f"expected fewer tokens than budget.tokens "
                 f"({space.budget.tokens}), got {space.asha.grace_period}")
            )  # fmt: skip
    has_target = any(job.data.sources[n].kind == "task" for n in job.data.eval)
    for at, name in needs:
        if name in NEEDS_VALIDATION and not job.data.validation:
            problems.append(
                (
                    at,
                    f"expected a job with data.validation files ({name} is measured on them), got none",
                )
            )
        if name in NEEDS_TASK_GRAPH and not job.eval.task_graph:
            problems.append((at, f"expected a job with eval.task_graph for {name}, got none"))
        if name in NEEDS_TARGET_EVAL and not has_target:
            problems.append(
                (
                    at,
                    f"expected a job with a target task (kind: task) under data.eval for {name}, got none",
                )
            )
    return problems


def load_space(path: str | Path) -> SearchSpace:
    """Load and check a search space and its base job; the first problem is a file:line:key error."""
    path = Path(path)
    space = load_yaml_model(path, SearchSpace)
    space.source_file = str(path)
    job = _job_with_overrides(space, path)
    problems = (
        _parameter_problems(space, job)
        + _goal_problems(space, job)
        + _grid_problems(space)
        + _runner_problems(space, job)
    )
    if not problems:
        try:
            space.sampling_order()
        except ValueError as exc:
            problems.append((("parameters",), f"expected conditions without cycles, got {exc}"))
    if problems:
        loc, problem = problems[0]
        raise located(str(path), line_of(path, loc), key_path(loc), problem)
    space._base_job = job
    return space
