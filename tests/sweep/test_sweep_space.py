"""Search spaces: validation before any trial (file:line:key), the space -> job mapping, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_job
from sweep_helpers import SIX_POINTS, hybrid_job, write_hybrid

from hybridft.errors import UserError
from hybridft.sweep.params import apply_params, sample_sequence
from hybridft.sweep.space import load_space

ROOT = Path(__file__).resolve().parents[2]

SPACE = """\
name: t
job: {job}
seed: 0
parameters:
  instruction_share: {{type: float, low: 0.0, high: 1.0}}
  replay_ratio: {{type: float, low: 0.0, high: 0.5}}
  lr.sft: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
  method: {{type: categorical, choices: [full, lora]}}
  lora_rank:
    type: int
    low: 2
    high: 16
    when: {{method: lora}}
objectives:
  - {{name: val_loss, direction: minimize}}
budget: {{trials: 3, tokens: 4000}}
asha: {{metric: val_loss, grace_period: 1000}}
"""


@pytest.fixture
def job_path(tmp_path: Path) -> Path:
    # paths only: loading a space never reads the data files
    return write_hybrid(tmp_path, tmp_path / "data")


def write_space(tmp_path: Path, job_path: Path, old: str = "", new: str = "") -> Path:
    text = SPACE.format(job=job_path)
    assert old in text
    path = tmp_path / "space.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def line_with(path: Path, text: str) -> int:
    """1-based line of the first line containing ``text`` (found independently of the loader)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=str)
def test_every_shipped_search_space_parses(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # shipped spaces name jobs relative to the project root
    space = load_space(path)
    assert space.parameters and space.objectives
    assert space.budget.trials <= 12  # the demo: at most 12 trials


def test_good_space_loads(tmp_path: Path, job_path: Path) -> None:
    space = load_space(write_space(tmp_path, job_path))
    assert space.sampling_order() == [
        "instruction_share", "replay_ratio", "lr.sft", "method", "lora_rank",
    ]  # fmt: skip
    assert [s.name for s in space.base_job.stages] == ["instruction", "sft"]


@pytest.mark.parametrize(
    ("old", "new", "line_text", "key", "expected"),
    [
        (  # 1) a parameter the space -> job mapping does not know
            "  replay_ratio:", "  learning_rate:", "learning_rate",
            "parameters.learning_rate", "expected a known parameter (",
        ),
        (  # 2) low > high
            "low: 5.0e-4, high: 5.0e-3", "low: 5.0e-2, high: 5.0e-3", "lr.sft",
            "parameters.lr.sft.low", "expected low <= high (0.005), got 0.05",
        ),
        (  # 3) a log scale starting at <= 0
            "low: 5.0e-4, high: 5.0e-3", "low: 0.0, high: 5.0e-3", "lr.sft",
            "parameters.lr.sft.low", "expected a number > 0 with log: true, got 0",
        ),
        (  # 4) a condition on a parent the space does not have
            "{method: lora}", "{methd: lora}", "methd",
            "parameters.lora_rank.when.methd", "expected a parameter of this space (",
        ),
        (  # 5) an objective the evaluator does not produce
            "{name: val_loss, direction", "{name: bleu, direction", "bleu",
            "objectives[0].name", "expected an objective the evaluator produces (",
        ),
    ],
    ids=["unknown-parameter", "low-above-high", "log-from-zero", "missing-parent", "objective"],
)  # fmt: skip
def test_bad_space_is_one_line_naming_file_line_key(
    tmp_path: Path, job_path: Path, old: str, new: str, line_text: str, key: str, expected: str
) -> None:
    path = write_space(tmp_path, job_path, old, new)
    message = error_of(path)
    assert message.startswith(f"{path}:{line_with(path, line_text)}: {key}: {expected}")


@pytest.mark.parametrize(
    ("old", "new", "line_text", "key", "expected"),
    [
        ("  method:", "  methods:", "methods", "parameters.methods", "expected a known"),
        ("high: 1.0}", "high: 1.5}", "instruction_share", "parameters.instruction_share.high",
         "expected a value >= 0 and <= 1 (share of the token budget), got 1.5"),
        ("{method: lora}", "{method: qlora}", "qlora", "parameters.lora_rank.when.method",
         "expected one of method's choices (full, lora), got 'qlora'"),
        ("{metric: val_loss,", "{metric: accuracy,", "accuracy", "asha.metric",
         "expected a metric reported while training"),
        ("grace_period: 1000", "grace_period: 4000", "grace_period", "asha.grace_period",
         "expected fewer tokens than budget.tokens (4000), got 4000"),
        ("budget: {trials", "budgte: {trials", "budgte", "budgte",
         "unknown key (did you mean 'budget'?)"),
    ],
    ids=["typo-name", "out-of-domain", "condition-value", "asha-metric", "grace", "typo-key"],
)  # fmt: skip
def test_more_space_mistakes(
    tmp_path: Path, job_path: Path, old: str, new: str, line_text: str, key: str, expected: str
) -> None:
    path = write_space(tmp_path, job_path, old, new)
    assert error_of(path).startswith(f"{path}:{line_with(path, line_text)}: {key}: {expected}")


def test_trial_runner_resolves_and_checks_the_worker_count(tmp_path: Path) -> None:
    one = write_hybrid(tmp_path, tmp_path / "data")  # scaling.num_workers: 1
    space = load_space(write_space(tmp_path, one))
    assert space.trial_runner == "auto" and space.in_process
    path = write_space(tmp_path, one, "seed: 0\n", "seed: 0\ntrial_runner: worker_group\n")
    assert not load_space(path).in_process

    spec = hybrid_job(tmp_path, tmp_path / "data")
    spec["scaling"] = {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}}
    two = write_job(tmp_path, spec, "two.yaml")
    assert not load_space(write_space(tmp_path, two)).in_process  # auto: a worker group
    spec["scaling"] = {"num_workers": 1, "max_failures": 2}
    restarts = write_job(tmp_path, spec, "restarts.yaml")
    # restarts asked: Tune starts a failed in-process trial again (see test_sweep_run)
    assert load_space(write_space(tmp_path, restarts)).in_process
    path = write_space(tmp_path, two, "seed: 0\n", "seed: 0\ntrial_runner: in_process\n")
    assert error_of(path) == (
        f"{path}:{line_with(path, 'trial_runner: ')}: trial_runner: expected worker_group or auto "
        "for a job with scaling.num_workers 2 (in_process trains one worker), got in_process"
    )


def test_val_loss_needs_validation_files(tmp_path: Path) -> None:
    spec = hybrid_job(tmp_path, tmp_path / "data")
    del spec["data"]["validation"]
    path = write_space(tmp_path, write_job(tmp_path, spec))
    message = error_of(path)
    assert message.startswith(f"{path}:{line_with(path, 'name: val_loss')}: objectives[0].name: ")
    assert "data.validation" in message


def test_job_overrides_errors_name_the_space_file(tmp_path: Path, job_path: Path) -> None:
    path = write_space(
        tmp_path, job_path, "seed: 0\n", "seed: 0\njob_overrides:\n  training: {batch_sise: 2}\n"
    )
    message = error_of(path)
    assert message.startswith(
        f"{path}:{line_with(path, 'batch_sise')}: job_overrides.training.batch_sise: unknown key"
    )


# -- the space -> job mapping -------------------------------------------------------------------


@pytest.fixture
def space(tmp_path: Path, job_path: Path):
    return load_space(write_space(tmp_path, job_path))


def _tokens(job) -> dict[str, int]:
    return {s.name: s.budget.tokens for s in job.stages}


@pytest.mark.parametrize("share", [0.0, 0.001, 0.25, 0.5, 0.7, 0.999, 1.0])
def test_stage_budgets_split_the_total_tokens(space, share: float) -> None:
    job = apply_params(space.base_job, {"instruction_share": share}, total_tokens=4000)
    tokens = _tokens(job)
    assert sum(tokens.values()) == 4000  # matched compute: every trial trains the same total
    assert tokens.get("instruction", 0) == round(share * 4000)
    assert all(s.budget.steps is None for s in job.stages)


def test_share_zero_drops_the_instruction_stage_and_one_drops_sft(space) -> None:
    sft_only = apply_params(space.base_job, {"instruction_share": 0.0}, total_tokens=4000)
    assert [s.name for s in sft_only.stages] == ["sft"]
    instruction_only = apply_params(space.base_job, {"instruction_share": 1.0}, total_tokens=4000)
    assert [s.name for s in instruction_only.stages] == ["instruction"]


def test_replay_ratio_sets_the_sft_mixture(space) -> None:
    base = space.base_job
    for r in (0.0, 0.1, 0.45):
        job = apply_params(base, {"replay_ratio": r, "lr.sft": 1e-3}, total_tokens=4000)
        sft = {m.source: m.weight for m in job.stages[1].mix}
        assert sum(sft.values()) == pytest.approx(1.0)
        assert sft.get("instr", 0.0) == pytest.approx(r)  # the replayed instruction share
        assert sft["it_desk"] == pytest.approx(1 - r)
        assert job.stages[1].lr == 1e-3 and job.stages[0].lr == base.stages[0].lr
    assert "instr" not in {
        m.source for m in apply_params(base, {"replay_ratio": 0.0}).stages[1].mix
    }


def test_method_and_lora_rank(space) -> None:
    base = space.base_job
    lora = apply_params(base, {"method": "lora", "lora_rank": 16})
    assert lora.method.type == "lora" and lora.method.lora.r == 16
    # alpha keeps the base job's alpha / r ratio
    assert lora.method.lora.alpha / 16 == pytest.approx(base.method.lora.alpha / base.method.lora.r)
    assert apply_params(base, {"method": "full"}).method.type == "full"
    # a point never changes what it does not name
    assert apply_params(base, {}) == base


def test_unknown_parameter_is_refused(space) -> None:
    with pytest.raises(ValueError, match="unknown"):
        apply_params(space.base_job, {"dropout": 0.1})


def test_conditions_are_honoured_in_sampled_points(space) -> None:
    points = sample_sequence(space, 10)
    assert {p["method"] for p in points} == {"full", "lora"}
    for p in points:
        assert ("lora_rank" in p) == (p["method"] == "lora")
        job = apply_params(space.base_job, p, space.budget.tokens)
        assert sum(_tokens(job).values()) == space.budget.tokens


def test_same_seed_same_sequence(tmp_path: Path, job_path: Path) -> None:
    space = load_space(write_space(tmp_path, job_path))
    first = sample_sequence(space, 8)
    assert sample_sequence(space, 8) == first
    other = load_space(write_space(tmp_path, job_path, "seed: 0", "seed: 1"))
    assert sample_sequence(other, 8) != first


GRID = SIX_POINTS.replace("{sampler}", "{{type: grid}}").replace("{name}", "g")


def test_grid_sampler_visits_every_point_once_and_checks_its_space(
    tmp_path: Path, job_path: Path
) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(job=job_path))
    points = sample_sequence(load_space(path), 6)
    assert sorted((p["instruction_share"], p["lr.sft"]) for p in points) == [
        (s, lr) for s in (0.0, 0.5, 1.0) for lr in (1e-3, 3e-3)
    ]
    path.write_text(GRID.format(job=job_path).replace("trials: 6", "trials: 7"))
    assert error_of(path).endswith("budget.trials: expected at most the grid's 6 points, got 7")
    path.write_text(
        GRID.format(job=job_path).replace(
            "lr.sft: {type: categorical, choices: [1.0e-3, 3.0e-3]}",
            "lr.sft: {type: float, low: 1.0e-3, high: 3.0e-3}",
        )
    )
    message = error_of(path)
    assert (
        f"{path}:{line_with(path, 'lr.sft')}: parameters.lr.sft: expected a categorical" in message
    )
