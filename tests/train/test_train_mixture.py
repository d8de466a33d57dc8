"""Mixture planning: the realised mixture follows the requested weights and is reported honestly."""

from __future__ import annotations

import numpy as np
import pytest

from hybridft.train.mixture import RenderedSource, plan_stage


def _source(name: str, n: int, length: int, seed: int) -> RenderedSource:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(5, 100, size=length).astype(np.int32) for _ in range(n)]
    masks = [np.r_[np.zeros(length // 2), np.ones(length - length // 2)].astype(np.int8)] * n
    return RenderedSource(name, ids, masks)


def _plan(mix_by: str, steps: int | None = 40, tokens: int | None = None, seed: int = 0):
    sources = [_source("short", 300, 10, 1), _source("long", 300, 40, 2)]
    return plan_stage(
        sources,
        [3.0, 1.0],
        mix_by,
        length=64,
        pad_id=0,
        rows_per_step=8,
        steps=steps,
        tokens=tokens,
        seed=seed,
    )


def test_example_weighted_mix_matches_requested_shares() -> None:
    plan = _plan("examples")
    assert len(plan.rows) == 40 * 8 and plan.steps == 40
    real = plan.realised
    assert real["short"]["requested_share"] == pytest.approx(0.75)
    assert real["short"]["example_share"] == pytest.approx(0.75, abs=0.03)
    # by tokens the long source is over-represented: the report shows it, not hides it
    assert real["long"]["token_share"] > real["long"]["example_share"] + 0.2


def test_token_weighted_mix_matches_requested_shares() -> None:
    real = _plan("tokens").realised
    assert real["short"]["token_share"] == pytest.approx(0.75, abs=0.03)
    assert real["short"]["realised_share"] == real["short"]["token_share"]


def test_realised_counts_add_up_to_the_rows() -> None:
    plan = _plan("examples")
    tokens = sum(v["tokens"] for v in plan.realised.values())
    assert tokens == int((plan.rows.source_ids >= 0).sum())
    examples = sum(v["examples"] for v in plan.realised.values())
    assert examples == int(plan.rows.samples_per_row.sum())


def test_token_budget_rounds_up_to_whole_steps() -> None:
    plan = _plan("examples", steps=None, tokens=5000)
    assert len(plan.rows) % 8 == 0
    trained = int((plan.rows.source_ids >= 0).sum())
    assert trained >= 5000
    per_step_max = 8 * 64
    assert trained - 5000 < 2 * per_step_max


def test_same_seed_same_plan_and_different_seed_differs() -> None:
    a, b, c = _plan("examples", seed=1), _plan("examples", seed=1), _plan("examples", seed=2)
    assert np.array_equal(a.rows.input_ids, b.rows.input_ids)
    assert not np.array_equal(a.rows.input_ids, c.rows.input_ids)


def test_zero_weight_source_contributes_nothing() -> None:
    sources = [_source("a", 50, 10, 1), _source("b", 50, 10, 2)]
    plan = plan_stage(
        sources,
        [1.0, 0.0],
        "examples",
        length=64,
        pad_id=0,
        rows_per_step=4,
        steps=5,
        tokens=None,
        seed=0,
    )
    assert plan.realised["b"]["tokens"] == 0
