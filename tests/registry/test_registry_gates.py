"""Policy gates and promote: each bad version is blocked by exactly the check meant to block it."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import pytest

from hybridft.errors import UserError
from hybridft.registry.access import User
from hybridft.registry.approvals import approve
from hybridft.registry.audit import default_audit_path, read_audit
from hybridft.registry.catalog import register_dataset, review_dataset
from hybridft.registry.gates import alias_version, evaluate_gate, promote
from hybridft.registry.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
TRAINER = User("tina", ("trainer",))
APPROVER = User("carol", ("approver",))
RELEASER = User("dave", ("releaser",))
GOOD = {"eval/score": 0.80, "eval/ece": 0.05, "eval/contamination": 0.0}


@pytest.fixture
def policy() -> Policy:
    return load_policy(REPO / "policies" / "default.yaml")


@pytest.fixture
def approved_fp(registry) -> str:
    register_dataset(registry, "fp-good-0001", name="tickets", rows=10, user=TRAINER)
    review_dataset(registry, "fp-good-0001", "approved", reviewer=APPROVER, comment="checked")
    return "fp-good-0001"


def failing(verdict) -> list[str]:
    return [c.check for c in verdict.failures()]


def test_gate_blocks_each_bad_version_and_passes_a_good_one(
    registry, make_version, policy, approved_fp
):
    data = {"tickets": approved_fp}
    v1 = make_version("clf", GOOD, data)
    approve(registry, "clf", v1, user=APPROVER, comment="first")
    first = promote(registry, policy, "clf", v1, "champion", user=RELEASER, reason="first")
    assert first.moved, first.reason
    assert any(c.detail == "no champion" for c in first.verdict.checks)
    assert alias_version(registry, "clf", "champion") == v1

    # (a) 0.10 worse than the champion, the policy allows 0.02
    worse = make_version("clf", {**GOOD, "eval/score": 0.70}, data)
    # (b) contamination above 1%
    leaky = make_version("clf", {**GOOD, "eval/contamination": 0.05}, data)
    # (c) nobody approved it
    unapproved = make_version("clf", GOOD, data)
    # (d) trained on a dataset still in draft
    register_dataset(
        registry, "fp-draft-0002", name="synthetic", generator="synth", seed=3, user=TRAINER
    )
    dirty = make_version("clf", GOOD, {"tickets": approved_fp, "synthetic": "fp-draft-0002"})
    for v in (worse, leaky, dirty):
        approve(registry, "clf", v, user=APPROVER)

    expected = {
        worse: ["eval/score drop vs champion"],
        leaky: ["contamination <= 0.01"],
        unapproved: ["approvals by approver"],
        dirty: ["training data approved"],
    }
    for version, checks in expected.items():
        assert failing(evaluate_gate(registry, policy, "clf", version)) == checks
        result = promote(registry, policy, "clf", version, "champion", user=RELEASER)
        assert not result.moved and result.reason.startswith("gate failed: ")
        assert alias_version(registry, "clf", "champion") == v1
    assert "synthetic=fp-draft-0002 (draft)" in result.reason

    better = make_version("clf", {**GOOD, "eval/score": 0.81}, data)
    approve(registry, "clf", better, user=APPROVER, comment="looks good")
    won = promote(registry, policy, "clf", better, "champion", user=RELEASER, reason="v+0.01")
    assert won.moved and won.from_version == v1 and won.to_version == better
    assert alias_version(registry, "clf", "champion") == better
    mirrored = registry.client.get_model_version("clf", better).tags["hybridft.promoted.champion"]
    assert json.loads(mirrored)["from"] == v1

    promotions = read_audit(default_audit_path(registry.tracking_uri), action="promote")
    assert [(r.to_version, r.outcome) for r in promotions] == [
        (v1, "ok"),
        (worse, "refused"),
        (leaky, "refused"),
        (unapproved, "refused"),
        (dirty, "refused"),
        (better, "ok"),
    ]
    refused = promotions[1]
    assert refused.who == "dave" and refused.from_version == v1
    assert refused.verdict is not None and refused.verdict["passed"] is False


def test_missing_measurements_fail_closed(registry, make_version, policy, approved_fp):
    v = make_version("clf", {"eval/score": 0.9}, {"tickets": approved_fp})
    approve(registry, "clf", v, user=APPROVER)
    details = {c.check: c.detail for c in evaluate_gate(registry, policy, "clf", v).failures()}
    assert details == {
        "eval/ece <= 0.15": "metric eval/ece not logged on the run",
        "contamination <= 0.01": (
            "no eval/contamination metric or tag: contamination not measured"
        ),
    }
    no_data = make_version("clf", GOOD)
    approve(registry, "clf", no_data, user=APPROVER)
    assert failing(evaluate_gate(registry, policy, "clf", no_data)) == ["training data approved"]


def test_contamination_read_from_tag_and_min_gain(registry, make_version):
    strict = Policy(
        name="strict",
        metrics=[{"metric": "eval/score", "min": 0.5, "min_gain_vs_champion": 0.05}],
        max_contamination=0.01,
        required_approvals={"count": 0},
        require_approved_data=False,
    )
    clean = {"eval/score": 0.8}
    v1 = make_version("m", clean, tags={"eval/contamination": "0.0"})
    assert promote(registry, strict, "m", v1, "champion", user=RELEASER).moved
    small_gain = make_version("m", {"eval/score": 0.82}, tags={"eval/contamination": "0.0"})
    verdict = evaluate_gate(registry, strict, "m", small_gain)
    assert failing(verdict) == ["eval/score gain vs champion"]
    leaky_tag = make_version("m", {"eval/score": 0.9}, tags={"eval/contamination": "0.2"})
    assert failing(evaluate_gate(registry, strict, "m", leaky_tag)) == ["contamination <= 0.01"]


def test_promote_refuses_unguarded_alias_and_stale_expectation(registry, make_version):
    loose = Policy(name="loose", required_approvals={"count": 0}, require_approved_data=False)
    v1, v2 = make_version("m", GOOD), make_version("m", GOOD)
    with pytest.raises(UserError, match="guards candidate, champion; not alias 'prod'"):
        promote(registry, loose, "m", v1, "prod", user=RELEASER)
    assert promote(registry, loose, "m", v1, "champion", user=RELEASER).moved
    stale = promote(registry, loose, "m", v2, "champion", user=RELEASER, expected_current=None)
    assert not stale.moved
    assert stale.reason == f"champion moved from (none) to {v1} since this promotion was requested"
    assert alias_version(registry, "m", "champion") == v1
    missing = promote(registry, loose, "m", "99", "champion", user=RELEASER)
    assert not missing.moved and missing.reason == "m@99: no such model version"
    outcomes = [r.outcome for r in read_audit(default_audit_path(registry.tracking_uri))]
    assert outcomes == ["refused", "ok", "refused", "refused"]  # the unguarded alias first


def _race_worker(uri: str, version: str, barrier, audit: str) -> None:
    from hybridft.registry.client import Registry

    reg = Registry(uri)
    loose = Policy(name="loose", required_approvals={"count": 0}, require_approved_data=False)
    barrier.wait(timeout=60)
    result = promote(
        reg,
        loose,
        "race",
        version,
        "champion",
        user=RELEASER,
        expected_current=None,
        audit_path=audit,
    )
    sys.exit(0 if result.moved else 3)


def test_twenty_processes_race_for_champion(registry, make_version, tmp_path):
    versions = [make_version("race", GOOD) for _ in range(20)]
    audit = str(tmp_path / "race-audit.jsonl")
    ctx = multiprocessing.get_context("fork")  # shares the imported mlflow: 20 spawns are slow
    barrier = ctx.Barrier(len(versions))
    procs = [
        ctx.Process(target=_race_worker, args=(registry.tracking_uri, v, barrier, audit))
        for v in versions
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    assert sorted(codes) == [0] + [3] * 19, codes
    winner = versions[codes.index(0)]
    assert alias_version(registry, "race", "champion") == winner

    lines = Path(audit).read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(line)["action"] == "promote" for line in lines)
    records = read_audit(audit, model="race")
    assert sorted(r.to_version for r in records) == sorted(versions)
    assert [r.to_version for r in records if r.outcome == "ok"] == [winner]
    assert records[0].outcome == "ok"  # the lock orders attempts: the winner went first
    for r in records[1:]:
        assert r.reason == (
            f"champion moved from (none) to {winner} since this promotion was requested"
        )
