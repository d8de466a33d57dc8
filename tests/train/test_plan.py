"""The driver -> worker contract is a frozen, picklable plan of typed parts, and train/ reads as
plain functions: none takes more than 6 positional parameters, none is hand-formatted."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import pytest

from hybridft.errors import UserError
from hybridft.specs import LoraSpec, TrainingSpec
from hybridft.train.plan import Fault, ValidationPlan, WorkerPlan, WorkerStage

TRAIN = Path(__file__).resolve().parents[2] / "src" / "hybridft" / "train"


def _plan() -> WorkerPlan:
    stage = WorkerStage("sft", None, ("a", "b"), 4, 1e-3, "cosine", 1, 0.1, "continue")
    return WorkerPlan(
        stages=(stage,),
        training=TrainingSpec(batch_size=2),
        lora=LoraSpec(r=4),
        strategy="zero3",
        seed=3,
        base_dir="/base",
        validation=ValidationPlan(rows=None, sources=("a",), every=2),
        fault=Fault.parse("1:0:3:/tmp/marker"),
    )


def test_the_plan_is_frozen_picklable_and_typed() -> None:
    plan = _plan()
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan
    assert isinstance(again.training, TrainingSpec) and again.training.batch_size == 2
    assert again.recipe == LoraSpec(r=4).model_dump()  # plain types, as checkpoints store it
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 4  # type: ignore[misc]
    assert plan.with_base_dir("/node/base").base_dir == "/node/base" and plan.base_dir == "/base"


def test_a_bad_fault_drill_is_a_clear_error() -> None:
    assert Fault.parse("") is None
    assert Fault.parse("1:0:3:/tmp/m") == Fault(1, 0, 3, "/tmp/m")
    with pytest.raises(UserError, match="HYBRIDFT_FAULT: expected rank:stage:step:marker-file"):
        Fault.parse("one:0:3:/tmp/m")


def test_no_train_function_takes_more_than_6_positional_parameters() -> None:
    wide = []
    for path in sorted(TRAIN.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = len(node.args.posonlyargs) + len(node.args.args)
                if n > 6:
                    wide.append(f"{path.name}:{node.lineno} {node.name} ({n})")
    assert wide == []


def test_no_hand_formatted_code_in_train() -> None:
    marked = [
        f"{p.name}:{i}"
        for p in sorted(TRAIN.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert marked == []
