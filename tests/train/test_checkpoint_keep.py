"""``training.keep_checkpoints``: a run keeps the latest N checkpoints plus every stage's end (the
stage models it returns), on Ray Train's worker group and in process alike. No Ray started: the
in-process session is driven directly, as the loop would report to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridft.specs import TrainingSpec
from hybridft.train.checkpoint import KEEP_SCORE, keep_score
from hybridft.train.in_process import INDEX_FILE, InProcessSession, checkpoints_to_drop
from hybridft.train.run import checkpoint_config, checkpoints_to_keep

STAGES = [("instruction", 4), ("sft", 10)]
EVERY = 2  # checkpoint_every


def _reports() -> list[dict]:
    """The metrics the loop attaches to each checkpoint of a 2-stage run (4 + 10 steps)."""
    steps = [n for _, n in STAGES]
    out = []
    for s_idx, (name, n) in enumerate(STAGES):
        for done in range(EVERY, n + 1, EVERY):
            out.append(
                {
                    "stage": name,
                    "step": done,
                    "stage_end": name if done == n else "",
                    KEEP_SCORE: keep_score(steps, s_idx, done),
                }
            )
    return out


def test_keep_score_puts_every_stage_end_above_every_other_checkpoint() -> None:
    scores = {(r["stage"], r["step"]): r[KEEP_SCORE] for r in _reports()}
    ends = [scores[("instruction", 4)], scores[("sft", 10)]]
    others = [v for k, v in scores.items() if k not in (("instruction", 4), ("sft", 10))]
    assert min(ends) > max(others)
    assert ends == sorted(ends) and others == sorted(others)  # then by global step


def test_checkpoints_to_drop_is_ray_trains_rule() -> None:
    assert checkpoints_to_drop([5, 1, 3, 2], None) == set()
    assert checkpoints_to_drop([5, 1, 3, 2], 2) == {1}  # the latest (2) is never dropped
    assert checkpoints_to_drop([5, 1, 3, 9], 2) == {1, 2}
    assert checkpoints_to_drop([1, 1, 1], 2) == {0}  # ties: the later ranks higher
    assert checkpoints_to_drop([None, 1, 3, 4], 1) == {1, 2}  # unscored (old index): kept


def test_checkpoint_config_from_a_spec() -> None:
    config = checkpoint_config(TrainingSpec(keep_checkpoints=3), n_stages=2)
    assert config.num_to_keep == 5  # 3 latest + 2 stage ends
    assert config.checkpoint_score_attribute == KEEP_SCORE
    assert config.checkpoint_score_order == "max"
    assert TrainingSpec().keep_checkpoints == 2
    assert checkpoint_config(TrainingSpec(keep_checkpoints=None), 2).num_to_keep is None


def _report(session: InProcessSession, metrics: dict, tmp: Path) -> None:
    from ray.train import Checkpoint

    src = tmp / f"src-{metrics['stage']}-{metrics['step']}"
    src.mkdir()
    (src / "train_state.pt").write_text(json.dumps(metrics))
    session.report(dict(metrics), checkpoint=Checkpoint.from_directory(str(src)))


def _index(storage: Path) -> list[dict]:
    return json.loads((storage / INDEX_FILE).read_text())


@pytest.mark.parametrize("keep", [1, 2])
def test_in_process_keeps_at_most_n_and_the_newest_survive(tmp_path, keep) -> None:
    storage = tmp_path / "ray" / "run"
    storage.mkdir(parents=True)
    limit = checkpoints_to_keep(TrainingSpec(keep_checkpoints=keep), len(STAGES))
    session = InProcessSession(storage, "run", [], limit)
    reports = _reports()
    for i, metrics in enumerate(reports):
        _report(session, metrics, tmp_path)
        index = _index(storage)
        assert len(index) <= keep + len(STAGES)
        # what a resume would pick, the last report, is listed and whole
        assert (index[-1]["metrics"]["stage"], index[-1]["metrics"]["step"]) == (
            metrics["stage"],
            metrics["step"],
        )
        assert index[-1]["dir"] == f"checkpoint_{i + 1:06d}"  # numbers are never reused
        on_disk = sorted(p.name for p in storage.glob("checkpoint_*"))
        assert on_disk == sorted(e["dir"] for e in index)
        assert all((storage / e["dir"] / "train_state.pt").is_file() for e in index)
    kept = [(e["metrics"]["stage"], e["metrics"]["step"]) for e in _index(storage)]
    latest = [(r["stage"], r["step"]) for r in reports if not r["stage_end"]][-keep:]
    assert set(kept) >= {("instruction", 4), ("sft", 10), *latest}  # stage ends, the newest
    assert [m["stage_end"] for _, m in session.reported if m["stage_end"]] == ["instruction", "sft"]
    assert session.get_checkpoint().path.endswith(f"checkpoint_{len(reports):06d}")

    resumed = InProcessSession(storage, "run", [], limit)  # a killed run, resumed by name
    assert resumed.get_checkpoint().path == session.get_checkpoint().path
    _report(resumed, {**reports[-1], "step": 11, KEEP_SCORE: 99}, tmp_path)
    assert _index(storage)[-1]["dir"] == f"checkpoint_{len(reports) + 1:06d}"


def test_in_process_without_a_limit_keeps_every_checkpoint(tmp_path) -> None:
    storage = tmp_path / "run"
    storage.mkdir()
    session = InProcessSession(storage, "run", [], None)
    for metrics in _reports():
        _report(session, metrics, tmp_path)
    assert len(_index(storage)) == len(_reports()) == 7
