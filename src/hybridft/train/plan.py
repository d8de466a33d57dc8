"""The driver -> worker contract: a frozen, picklable ``WorkerPlan`` of typed parts.

``train.run`` builds it from the job spec and the prepared data; it crosses the Ray boundary as
``train_loop_config={"plan": plan}`` and the loop reads nothing else. The row arrays travel by
reference (Ray object refs; in process, the arrays themselves) and are fetched where they are
used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hybridft.errors import UserError
from hybridft.specs import LoraSpec, StageSpec, TrainingSpec, stage_adapter

Strategy = str  # "ddp" | "zero2" | "zero3" (ScalingSpec.strategy)


@dataclass(frozen=True)
class WorkerStage:
    """One stage as the workers train it: its packed rows and its optimizer schedule."""

    name: str
    rows: Any  # PackedRows, or a Ray object ref to them
    sources: tuple[str, ...]
    steps: int
    lr: float
    schedule: str
    warmup_steps: int
    min_lr_ratio: float
    adapter: str  # the effective adapter policy (adapters.POLICIES)

    @classmethod
    def of(cls, stage: StageSpec, adapter: str, rows: Any, sources: list[str], steps: int):
        return cls(
            name=stage.name,
            rows=rows,
            sources=tuple(sources),
            steps=steps,
            lr=stage.lr,
            schedule=stage.schedule,
            warmup_steps=stage.warmup_steps,
            min_lr_ratio=stage.min_lr_ratio,
            adapter=adapter,
        )


@dataclass(frozen=True)
class ValidationPlan:
    """``data.validation``'s rows (padded to a multiple of the workers) and when to score them."""

    rows: Any  # PackedRows, or a Ray object ref to them
    sources: tuple[str, ...]
    every: int  # steps between validation losses (and at every stage's end)


@dataclass(frozen=True)
class Fault:
    """A fault drill (``HYBRIDFT_FAULT=rank:stage:step:marker``): SIGKILL that worker once."""

    rank: int
    stage: int
    step: int
    marker: str

    @classmethod
    def parse(cls, text: str) -> Fault | None:
        if not text:
            return None
        try:
            rank, stage, step, marker = text.split(":", 3)
            return cls(int(rank), int(stage), int(step), marker)
        except ValueError:
            raise UserError(
                f"HYBRIDFT_FAULT: expected rank:stage:step:marker-file, got {text!r}"
            ) from None


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker trains from."""

    stages: tuple[WorkerStage, ...]
    training: TrainingSpec
    lora: LoraSpec
    strategy: Strategy
    seed: int
    base_dir: str
    base_files: Any = None  # an object ref to the base's files (no shared storage), or None
    validation: ValidationPlan | None = None
    fault: Fault | None = None
    prepare_s: float = 0.0  # the driver's data preparation for this attempt

    @property
    def recipe(self) -> dict[str, Any]:
        """The LoRA recipe as checkpoints store it (plain types: ``weights_only`` loads it)."""
        return self.lora.model_dump()

    def with_base_dir(self, base_dir: str) -> WorkerPlan:
        return dataclasses.replace(self, base_dir=base_dir)


def stage_plans(spec: Any, prepared_stages: list[Any], put: Any) -> tuple[WorkerStage, ...]:
    """A job's stages with their prepared rows (``put``: how rows travel, e.g. ``ray.put``)."""
    return tuple(
        WorkerStage.of(stage, stage_adapter(stage, spec.method), put(p.rows), p.sources, p.steps)
        for stage, p in zip(spec.stages, prepared_stages, strict=True)
    )
