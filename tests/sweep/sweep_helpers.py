"""Builders for small search spaces over a tiny two-stage job on the small synthetic demo data
(plain functions: fixtures live in tests/conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from helpers import job_dict, write_job


def hybrid_job(tmp: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    """instruction stage -> SFT stage (it_desk + replay of instr), with a validation split."""
    spec = job_dict(
        tmp,
        data,
        name="sweepjob",
        stages=[
            {"name": "instruction", "mix": [{"source": "instr", "weight": 1}],
             "budget": {"steps": 4}, "lr": 2e-3},
            {"name": "sft", "mix": [{"source": "it_desk", "weight": 0.8},
                                    {"source": "instr", "weight": 0.2}],
             "budget": {"steps": 4}, "lr": 2e-3},
        ],
        scaling={"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
    )  # fmt: skip
    spec["data"]["validation"] = {"it_desk": [str(data / "sft/it_desk/validation.jsonl")]}
    spec["training"].update({"batch_size": 2, "log_every": 4, "checkpoint_every": 100})
    spec["training"]["validate_every"] = 4
    for key, value in overrides.items():
        spec[key] = copy.deepcopy(value)
    return spec


BUDGET = 3000  # trained tokens per trial: ~13 steps of 2 packed rows of 128 tokens


def space_dict(job_path: Path, **overrides: Any) -> dict[str, Any]:
    space: dict[str, Any] = {
        "name": "t",
        "job": str(job_path),
        "seed": 0,
        "parameters": {
            "instruction_share": {"type": "float", "low": 0.0, "high": 1.0},
            "replay_ratio": {"type": "float", "low": 0.0, "high": 0.5},
            "lr.sft": {"type": "float", "low": 5e-4, "high": 5e-3, "log": True},
            "method": {"type": "categorical", "choices": ["full", "lora"]},
            "lora_rank": {"type": "int", "low": 2, "high": 8, "when": {"method": "lora"}},
        },
        "objectives": [{"name": "val_loss", "direction": "minimize"}],
        "budget": {"trials": 3, "tokens": BUDGET, "seeds": [0]},
        "asha": {"metric": "val_loss", "unit": "tokens", "grace_period": 700},
    }
    for key, value in overrides.items():
        space[key] = copy.deepcopy(value)
    return space


def write_space(tmp: Path, space: dict[str, Any], name: str = "space.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def write_hybrid(tmp: Path, data: Path, **overrides: Any) -> Path:
    return write_job(tmp, hybrid_job(tmp, data, **overrides), "job.yaml")


# instruction share x SFT learning rate, 3 x 2 categorical choices: a 6-point space
SIX_POINTS = """\
name: {name}
job: {job}
seed: 0
parameters:
  instruction_share: {{type: categorical, choices: [0.0, 0.5, 1.0]}}
  lr.sft: {{type: categorical, choices: [1.0e-3, 3.0e-3]}}
objectives:
  - {{name: val_loss, direction: minimize}}
budget: {{trials: 6, tokens: 4000}}
sampler: {sampler}
"""
