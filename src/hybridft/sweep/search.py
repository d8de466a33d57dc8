"""What Tune's search runs on: Optuna behind ``OptunaSearch`` (the study in the sweep's
directory, one point per trial, only final objectives reported), and ASHA on the sweep's time
axis (tokens or steps trained, trial-wide)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from hybridft.runtime import debug_mode
from hybridft.sweep.params import draw_distinct, make_sampler, suggest_params
from hybridft.sweep.record import OPTUNA_NUMBER
from hybridft.sweep.space import SearchSpace

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.db"


class FinalObjectiveSearch(OptunaSearch):
    """OptunaSearch that passes Optuna only results carrying the objective, stepped by the
    sweep's time axis.

    Intermediate results carry the early-stopping metric; the objectives arrive with a trial's
    final report. Single-objective OptunaSearch indexes every result by its metric, and reports
    it to the Optuna trial as an intermediate value at Tune's iteration. Here the step is the
    trial-wide ``step_attr`` (``sweep_tokens`` / ``sweep_steps``, ASHA's axis), so the study's
    curves (optuna-dashboard) line up with ASHA's milestones, and a trial resumed after a
    driver kill (Tune counts its iterations from 1 again) reports only what is new: a step at
    or below one already reported is the resumed run re-reporting, and is left out.
    """

    def __init__(self, *args: Any, step_attr: str = "sweep_tokens", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_attr = step_attr
        self.reported_steps: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict | None:
        """A point not trained before in this study (see ``params.draw_distinct``)."""
        drawn = [0]

        def draw() -> tuple[Any, dict | None]:
            if drawn[0]:  # the last draw was a duplicate, settled: ask Optuna again
                del self._ot_trials[trial_id]
            drawn[0] += 1
            config = super(FinalObjectiveSearch, self).suggest(trial_id)
            return self._ot_trials[trial_id], config

        # Ray declares the study None (its __init__ value); setup() made it before any suggest
        return draw_distinct(cast("optuna.Study", self._ot_study), draw)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not (isinstance(self.metric, str) and self.metric in result):
            return
        if self.step_attr not in result:  # the final value reaches Optuna on completion
            return
        step = int(result[self.step_attr])
        # a searcher restored from an older save may lack the record: then Optuna itself
        # ignores a repeated step (with a warning)
        reported = self.__dict__.setdefault("reported_steps", {})
        if step <= reported.get(trial_id, -1):
            return
        reported[trial_id] = step
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: step})


def define_by_run(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """OptunaSearch's define-by-run space: the sampled point plus its Optuna trial number."""
    return {**suggest_params(space, trial), OPTUNA_NUMBER: trial.number}


def study_url(sweep_dir: Path) -> str:
    return f"sqlite:///{sweep_dir / STUDY_FILE}"


def searcher(space: SearchSpace, sweep_dir: Path, study_name: str) -> OptunaSearch:
    import optuna

    if not debug_mode():  # no "A new study created in RDB" line
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = space.objective_names
    modes = ["min" if d == "minimize" else "max" for d in space.directions]
    single = len(names) == 1
    return FinalObjectiveSearch(
        space=functools.partial(define_by_run, space),
        metric=names[0] if single else names,
        mode=modes[0] if single else modes,
        sampler=make_sampler(space),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(study_url(sweep_dir)),
        step_attr=time_attr(space),
    )


def time_attr(space: SearchSpace) -> str:
    """The sweep's time axis: trained so far, trial-wide (ASHA's unit; tokens without ASHA)."""
    return f"sweep_{space.asha.unit}" if space.asha else "sweep_tokens"


def scheduler(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = space.asha
    if asha is None:
        return FIFOScheduler()
    # ASHA stops a trial that reaches max_t: set it above any trial's total (steps <= tokens) so
    # it never cuts off the final evaluation. Milestones are grace_period * factor^k; the relay
    # sends nothing at or past the token budget, so only those below it are ever reached.
    bound = 2 * space.budget.tokens * len(space.budget.seeds)
    return ASHAScheduler(
        time_attr=time_attr(space),
        metric=asha.metric,
        mode=asha.mode,
        max_t=bound,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
        brackets=1,
    )


def asha_milestones(space: SearchSpace) -> list[int]:
    """The milestones (in ``asha.unit``) a trial can reach within its budget."""
    if space.asha is None:
        return []
    out, t = [], float(space.asha.grace_period)
    while t < space.budget.tokens * len(space.budget.seeds):
        out.append(int(t))
        t *= space.asha.reduction_factor
    return out
