"""A point drawn twice is not trained twice: categorical / integer spaces make TPE (and its random
start-up) draw a point again, which would train the same job on the same seeds for the same
result. The duplicate is settled in the study instead (told its twin's values, or PRUNED while
the twin runs) and Optuna draws again."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from sweep_helpers import SIX_POINTS, write_hybrid

from hybridft.sweep import search
from hybridft.sweep.params import DUPLICATE_OF, make_sampler, sample_sequence, suggest_params
from hybridft.sweep.record import OPTUNA_NUMBER
from hybridft.sweep.report import _importances
from hybridft.sweep.space import load_space

POINTS = 6  # the space's size


def space_file(tmp_path: Path, startup: int) -> Path:
    path = tmp_path / "space.yaml"
    job = write_hybrid(tmp_path, tmp_path / "data")
    sampler = f"{{type: tpe, startup_trials: {startup}}}"
    path.write_text(SIX_POINTS.format(name="d", job=job, sampler=sampler))
    return path


def key(point: dict) -> str:
    return json.dumps({k: point[k] for k in ("instruction_share", "lr.sft")}, sort_keys=True)


def loss(point: dict) -> float:  # any deterministic function of the point
    return 1.0 + point["instruction_share"] + 100 * point["lr.sft"]


def test_the_random_start_up_never_repeats_a_point(tmp_path: Path) -> None:
    space = load_space(space_file(tmp_path, startup=POINTS))
    # the seeded sampler alone draws this space's points with repeats...
    plain = optuna.create_study(sampler=make_sampler(space), directions=space.directions)
    drawn = [suggest_params(space, plain.ask()) for _ in range(POINTS)]
    assert len({key(p) for p in drawn}) < POINTS
    # ...the sweep's sequence visits every point once, and stays a function of the seed
    points = sample_sequence(space, POINTS)
    assert len({key(p) for p in points}) == POINTS
    assert sample_sequence(space, POINTS) == points


@pytest.mark.parametrize(
    ("together", "settled_as"),
    [(1, "COMPLETE"), (POINTS, "PRUNED")],
    ids=["one_at_a_time", "all_at_once"],
)
def test_the_searcher_hands_tune_each_point_once(
    tmp_path: Path, together: int, settled_as: str
) -> None:
    space = load_space(space_file(tmp_path, startup=2))
    searcher = search.searcher(space, tmp_path, "d")
    configs: dict[str, dict] = {}
    # Tune asks for `together` trials, then reports them done, as a sweep with that concurrency
    while len(configs) < POINTS:
        batch = [f"t{len(configs) + i}" for i in range(together)]
        for trial_id in batch:
            configs[trial_id] = searcher.suggest(trial_id)
        for trial_id in batch:
            searcher.on_trial_complete(trial_id, {"val_loss": loss(configs[trial_id])})
    assert len({key(c) for c in configs.values()}) == POINTS  # every point trained once

    study = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    by_number = {t.number: t for t in study.trials}
    duplicates = [t for t in study.trials if DUPLICATE_OF in t.user_attrs]
    # this seed draws repeats: of finished points one at a time, of running ones all at once
    assert settled_as in {t.state.name for t in duplicates}
    for dup in duplicates:
        twin = by_number[dup.user_attrs[DUPLICATE_OF]]
        assert dup.params == twin.params and twin.number < dup.number
        assert DUPLICATE_OF not in twin.user_attrs
        # told the twin's result when it had one, PRUNED while it was still training
        if dup.state == optuna.trial.TrialState.COMPLETE:
            assert dup.values == twin.values
        else:
            assert dup.state == optuna.trial.TrialState.PRUNED
    # Tune's trials are exactly the study's trained trials, each carrying its number
    trained = {t.number for t in study.trials if DUPLICATE_OF not in t.user_attrs}
    assert {c[OPTUNA_NUMBER] for c in configs.values()} == trained
    for c in configs.values():
        assert by_number[c[OPTUNA_NUMBER]].values == [loss(c)]


def test_importances_count_a_duplicated_point_once(tmp_path: Path) -> None:
    from optuna.distributions import CategoricalDistribution

    dists = {
        "instruction_share": CategoricalDistribution([0.0, 0.5, 1.0]),
        "lr.sft": CategoricalDistribution([1e-3, 3e-3]),
    }
    storage = f"sqlite:///{tmp_path / 'o.db'}"

    def study_with(name: str, repeated: list[int]) -> dict:
        study = optuna.create_study(study_name=name, storage=storage)
        points = [{"instruction_share": s, "lr.sft": lr} for s in (0.0, 0.5, 1.0)
                  for lr in (1e-3, 3e-3)]  # fmt: skip
        for p in points:
            study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, value=loss(p)))
        for n in repeated:  # settled duplicates: the twin's point and value, never trained
            p = points[n]
            study.add_trial(
                optuna.trial.create_trial(
                    params=p, distributions=dists, value=loss(p), user_attrs={DUPLICATE_OF: n}
                )
            )
        return {"study": {"name": name, "storage": storage}}

    once = _importances(study_with("once", []))
    assert set(once) == {"instruction_share", "lr.sft"}
    assert _importances(study_with("repeats", [5, 5, 5, 4, 1])) == once
