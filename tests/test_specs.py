"""Spec loading: every shipped YAML parses; every mistake is one line naming file:line:key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hybridft.errors import UserError
from hybridft.specs import load_job

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: t
data:
  sources:
    it: {paths: [a.jsonl], format: task}
    ins: {paths: [b.jsonl], format: instruction, kind: instruction}
stages:
  - name: s1
    mix:
      - {source: ins, weight: 1}
    budget: {steps: 10}
  - name: s2
    mix:
      - source: it
        weight: 0.8
      - source: ins
        weight: 0.2
    budget: {tokens: 5000}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_job(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_spec_parses(path: Path) -> None:
    spec = load_job(path)
    assert spec.stages and spec.data.sources


def test_good_spec_loads(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, GOOD))
    assert [s.name for s in spec.stages] == ["s1", "s2"]
    assert spec.stages[1].mix[1].weight == 0.2
    assert spec.data.loss == "completion_only"


def test_wrong_type_names_file_line_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("weight: 0.8", 'weight: "lots"'))
    assert (
        error_of(path) == f'{path}:14: stages[1].mix[0].weight: expected a number >= 0, got "lots"'
    )


def test_negative_weight(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("weight: 0.8", "weight: -1"))
    assert error_of(path) == f"{path}:14: stages[1].mix[0].weight: expected a number >= 0, got -1"


def test_typod_key_is_an_error_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("budget: {tokens: 5000}", "budgte: {tokens: 5000}"))
    message = error_of(path)
    assert message.startswith(f"{path}:17: stages[1].budgte: unknown key (did you mean 'budget'?)")


def test_typod_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "trainig: {batch_size: 2}\n")
    assert error_of(path).startswith(f"{path}:18: trainig: unknown key (did you mean 'training'?)")


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("name: t\n", ""))
    assert error_of(path) == f"{path}:1: name: required key is missing"


def test_unknown_source_in_mixture(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("source: it\n", "source: nope\n"))
    assert error_of(path) == (
        f'{path}:13: stages[1].mix[0].source: expected one of the data sources (ins, it), got "nope"'
    )


def test_weights_summing_to_zero(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("{source: ins, weight: 1}", "{source: ins, weight: 0}"))
    assert error_of(path) == f"{path}:8: stages[0].mix: expected weights summing to > 0, got 0"


def test_literal_choice(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "data_loss: x\n".replace("data_loss: x", "method: {type: qlora}"))
    assert (
        error_of(path) == f"{path}:18: method.type: expected one of 'full' or 'lora', got \"qlora\""
    )


def test_budget_needs_exactly_one(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("budget: {steps: 10}", "budget: {steps: 10, tokens: 5}"))
    assert error_of(path) == f"{path}:10: stages[0].budget: expected exactly one of steps or tokens"


def test_missing_file() -> None:
    with pytest.raises(UserError, match=r"^nope/job\.yaml: file not found$"):
        load_job("nope/job.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nstages: [\n")
    assert error_of(path).startswith(f"{path}:3: invalid YAML")


def test_cli_prints_one_line_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("weight: 0.8", 'weight: "lots"'))
    proc = subprocess.run(
        [sys.executable, "-m", "hybridft.cli", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == [
        f'error: {path}:14: stages[1].mix[0].weight: expected a number >= 0, got "lots"'
    ]


def test_lora_rank_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "method:\n  type: lora\n  lora: {r: 0}\n")
    assert error_of(path) == f"{path}:20: method.lora.r: expected an integer > 0, got 0"


def test_zero_stage_4_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "scaling: {strategy: zero4}\n")
    assert error_of(path) == (
        f"{path}:18: scaling.strategy: expected one of 'ddp', 'zero2' or 'zero3', got \"zero4\""
    )


def test_adapter_policy_needs_lora(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD.replace("budget: {steps: 10}", "budget: {steps: 10}\n    adapter: continue")
    )
    assert error_of(path) == (
        f'{path}:11: stages[0].adapter: expected "full" (method.type is full; use method.type: '
        f'lora for adapters), got "continue"'
    )


def test_typod_key_inside_a_named_source(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD.replace("it: {paths: [a.jsonl], format: task}", "it: {pathz: [a.jsonl]}")
    )
    assert error_of(path).startswith(
        f"{path}:4: data.sources.it.pathz: unknown key (did you mean 'paths'?); expected one of "
        "format, kind, labels, paths"
    )


def test_eval_calibration_must_name_an_eval_source(tmp_path: Path) -> None:
    text = GOOD.replace("stages:\n", "  eval: {it: [t.jsonl]}\nstages:\n", 1)
    text += "eval:\n  calibration:\n    ins: [v.jsonl]\n"
    path = write(tmp_path, text)
    assert error_of(path) == (
        f'{path}:21: eval.calibration.ins: expected a source named under data.eval (it), got "ins"'
    )


def test_eval_phrasings_need_the_prompt_placeholder_and_three_entries(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "eval:\n  phrasings: ['{prompt}', 'Q: {prompt}', 'no slot']\n")
    assert error_of(path) == (
        f"{path}:19: eval.phrasings[2]: expected a text containing \"{{prompt}}\", got 'no slot'"
    )
    path = write(tmp_path, GOOD + "eval:\n  phrasings: ['{prompt}']\n")
    assert f"{path}:19: eval.phrasings:" in error_of(path)
