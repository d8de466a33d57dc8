"""Typed models of every YAML kind hybridft reads, and ``load_*`` functions with file:line:key errors.

Each component takes the slice of a spec it needs (``spec.model``, ``spec.data``, ...), never the
whole JobSpec, so no god config leaks through the code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hybridft.errors import located
from hybridft.specfile import key_path, line_of, load_yaml_model

# Tokens kept per rendered example unless a job says otherwise (``data.max_len``): the one place
# this default is written.
DEFAULT_MAX_LEN = 256

PosInt = Annotated[int, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class TinyModelSpec(Strict):
    """The default tiny Llama: small enough to learn the demo tasks on 2 CPU cores in minutes."""

    layers: PosInt = (
        2  # 4 learnt the demo task more slowly from the pretrained base, at half the speed
    )
    hidden: PosInt = 256
    heads: PosInt = 4
    kv_heads: PosInt = 4
    intermediate: PosInt = 688
    vocab_size: Annotated[int, Field(ge=300)] = 2048
    max_position: PosInt = 512
    rope_theta: Annotated[float, Field(gt=0)] = 10000.0


class PretrainSpec(Strict):
    """How ``base: pretrained`` is built: the tiny Llama as a causal LM on the docstrings of the
    Python standard library (general text on every machine). ~1.2M tokens: ~3 minutes on 2 cores."""

    steps: PosInt = 300
    batch_size: PosInt = 16
    seq_len: Annotated[int, Field(ge=16)] = 256
    lr: Annotated[float, Field(gt=0)] = 6e-4  # 2e-3 left a base that SFT could barely move
    warmup_steps: Annotated[int, Field(ge=0)] = 20
    seed: int = 0  # the base's own seed: every job seed and report arm shares one base


class ModelSpec(Strict):
    """Where a job starts. ``base`` is one of: ``pretrained`` (the tiny Llama pretrained offline on
    general text, built once and cached), ``tiny`` (random init: fast tests only), a local HF
    causal-LM directory, or a Hugging Face Hub id (``owner/name[@revision]``, through the hub
    client and its cache)."""

    base: str = "tiny"
    tiny: TinyModelSpec = TinyModelSpec()
    pretrain: PretrainSpec = PretrainSpec()
    # Where the tiny base (weights + locally trained tokenizer) is cached; built once per config.
    cache_dir: str = ".hybridft/base"
    # Text the random-init ``tiny`` base's tokenizer is trained on (globs): the demo corpus by
    # default. ``pretrained`` trains its tokenizer on its general corpus instead.
    tokenizer_corpus: Annotated[list[str], Field(min_length=1)] = ["data/demo/**/train.jsonl"]


RecordFormat = Literal["auto", "instruction", "chat", "task"]


class SourceSpec(Strict):
    """One data source: files (globs allowed), their record format, and its role in the study."""

    paths: Annotated[list[str], Field(min_length=1)]
    format: RecordFormat = "auto"
    kind: Literal["instruction", "task"] = "task"
    labels: list[str] | None = None  # the task's label set, checked per row when given


class DataSpec(Strict):
    sources: Annotated[dict[str, SourceSpec], Field(min_length=1)]
    # Held-out splits for evaluation, per source name (paths or globs).
    eval: dict[str, list[str]] = {}
    # Validation splits, per source name: a validation loss during training (what a sweep's early
    # stopping compares); never the eval split, so choosing on it does not peek at the test set.
    validation: dict[str, list[str]] = {}
    on_bad_rows: Literal["error", "skip"] = "error"
    rejects_dir: str = ".hybridft/rejects"
    # Which tokens carry loss: only the assistant's answer (default) or every token.
    loss: Literal["completion_only", "all"] = "completion_only"
    max_len: Annotated[int, Field(ge=16)] = DEFAULT_MAX_LEN


class MixItem(Strict):
    source: str
    weight: NonNegFloat


class BudgetSpec(Strict):
    """A stage's length: optimizer steps or trained tokens (exactly one)."""

    steps: PosInt | None = None
    tokens: PosInt | None = None


class StageSpec(Strict):
    name: str
    mix: Annotated[list[MixItem], Field(min_length=1)]
    # The weights are shares of examples or of tokens: stated, never implied.
    mix_by: Literal["examples", "tokens"] = "examples"
    budget: BudgetSpec
    lr: Annotated[float, Field(gt=0)] = 3e-4
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    # What the stage trains: every weight, the same LoRA adapter, or a fresh adapter after merging
    # the previous one. Default: "full" for method full, "continue" for method lora.
    adapter: Literal["full", "continue", "merge_and_new"] | None = None


class LoraSpec(Strict):
    r: PosInt = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: Annotated[list[str], Field(min_length=1)] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]
    # The dtype the frozen base is loaded in for a LoRA stage: bfloat16 halves its memory (a 7B
    # base: 14 GB, not 28) at the cost of bf16-rounded frozen weights (and merges into them);
    # the adapter stays fp32. A full stage after it trains in fp32 again.
    frozen_dtype: Literal["float32", "bfloat16"] = "float32"


class MethodSpec(Strict):
    type: Literal["full", "lora"] = "full"
    lora: LoraSpec = LoraSpec()


class TrainingSpec(Strict):
    batch_size: PosInt = 16  # sequences (or packed rows) per worker per micro-step
    grad_accum: PosInt = 1
    packing: bool = True
    precision: Literal["bf16", "fp32"] = "bf16"
    weight_decay: NonNegFloat = 0.0
    grad_clip: NonNegFloat = 1.0
    log_every: PosInt = 10
    checkpoint_every: PosInt = 100
    # Latest checkpoints a run keeps on disk (resume starts from the last); each stage's end
    # checkpoint is kept besides (the stage models the run returns). None: every checkpoint.
    keep_checkpoints: PosInt | None = 2
    # Steps between validation losses (with data.validation); default: at every checkpoint.
    validate_every: PosInt | None = None
    threads_per_worker: PosInt = 1
    # torch.compile each decoder layer (fixed packed shapes compile once; ~10-30 s per worker)
    compile: bool = False
    # Memory over speed, for models that do not fit otherwise (both off: the CPU default).
    # Recompute each decoder layer in backward (activations of one layer at a time); packed rows
    # then take transformers' masked attention, not the varlen path.
    gradient_checkpointing: bool = False
    # LM head + cross-entropy over chunks of this many target tokens, each recomputed in backward:
    # the fp32 logits of one chunk at a time (a 128k vocabulary x 8k targets is 4 GB otherwise).
    loss_chunk_tokens: PosInt | None = None


class ScalingSpec(Strict):
    num_workers: PosInt = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, NonNegFloat] = {"CPU": 1.0}
    strategy: Literal["ddp", "zero2", "zero3"] = "ddp"
    max_failures: Annotated[int, Field(ge=0)] = 0


DEFAULT_PHRASINGS = (
    "{prompt}",
    "Please handle the following request.\n\n{prompt}",
    "{prompt}\n\nKeep the answer short.",
)


class EvalSpec(Strict):
    """How ``hybridft eval`` scores a run: per task, on ``data.eval``'s held-out files."""

    max_examples: PosInt = 200  # per task
    max_new_tokens: PosInt = 24
    # Validation files per eval source: temperature scaling of label probabilities is fitted here.
    calibration: dict[str, Annotated[list[str], Field(min_length=1)]] = {}
    # Rewordings of the last user message ({prompt} is the original); robustness is the spread of
    # label accuracy across them. At least 3, the first usually "{prompt}" itself.
    phrasings: Annotated[list[str], Field(min_length=3)] = list(DEFAULT_PHRASINGS)
    # Task graph (clusters, relations) for held-out-cluster scores and forgetting.
    task_graph: str | None = None
    # Run the leakage shield (train vs eval overlap) before scores are reported.
    leakage: bool = True
    calibration_bins: PosInt = 15
    # Label probabilities of classification tasks (calibration, robustness): ~10x the cost of
    # greedy answers. A report's arms scored by accuracy skip them; the run it registers does not.
    label_probs: bool = True


def stage_adapter(stage: StageSpec, method: MethodSpec) -> str:
    """The stage's effective adapter policy."""
    return stage.adapter or ("continue" if method.type == "lora" else "full")


class JobSpec(Strict):
    """A training job: data sources, a base model, and one or more stages."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    seed: int = 0
    output_dir: str = ".hybridft/runs"
    model: ModelSpec = ModelSpec()
    data: DataSpec
    stages: Annotated[list[StageSpec], Field(min_length=1)]
    method: MethodSpec = MethodSpec()
    training: TrainingSpec = TrainingSpec()
    scaling: ScalingSpec = ScalingSpec()
    eval: EvalSpec = EvalSpec()
    # Set by load_job: the file the spec came from (for messages and lineage), not a YAML key.
    source_file: str = Field(default="", exclude=True)


def _job_problems(spec: JobSpec) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-field checks that pydantic field types cannot express, with their locations."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    names = set(spec.data.sources)
    for i, stage in enumerate(spec.stages):
        for j, item in enumerate(stage.mix):
            if item.source not in names:
                problems.append(
                    (
                        ("stages", i, "mix", j, "source"),
                        f"expected one of the data sources ({', '.join(sorted(names))}), "
                        f'got "{item.source}"',
                    )
                )
        if sum(item.weight for item in stage.mix) <= 0:
            problems.append((("stages", i, "mix"), "expected weights summing to > 0, got 0"))
        if (stage.budget.steps is None) == (stage.budget.tokens is None):
            problems.append((("stages", i, "budget"), "expected exactly one of steps or tokens"))
    for section in ("eval", "validation"):
        for name in getattr(spec.data, section):
            if name not in names:
                problems.append(
                    (("data", section, name), f'expected the name of a data source, got "{name}"')
                )
    for name in spec.eval.calibration:
        if name not in spec.data.eval:
            problems.append(
                (
                    ("eval", "calibration", name),
                    f"expected a source named under data.eval ({', '.join(sorted(spec.data.eval))})"
                    f', got "{name}"',
                )
            )
    for i, text in enumerate(spec.eval.phrasings):
        if "{prompt}" not in text:
            problems.append(
                (("eval", "phrasings", i), f'expected a text containing "{{prompt}}", got {text!r}')
            )
    for i, stage in enumerate(spec.stages):
        if spec.method.type == "full" and stage.adapter in ("continue", "merge_and_new"):
            problems.append(
                (
                    ("stages", i, "adapter"),
                    f'expected "full" (method.type is full; use method.type: lora for '
                    f'adapters), got "{stage.adapter}"',
                )
            )
    if len({s.name for s in spec.stages}) != len(spec.stages):
        problems.append((("stages",), "expected unique stage names"))
    model = spec.model.tiny
    if model.hidden % model.heads or model.heads % model.kv_heads:
        problems.append(
            (
                ("model", "tiny", "heads"),
                "expected heads dividing hidden and kv_heads dividing heads",
            )
        )
    return problems


def load_job(path: str | Path) -> JobSpec:
    """Load and check a job spec; the first problem becomes a file:line:key UserError."""
    spec = load_yaml_model(path, JobSpec)
    spec.source_file = str(path)
    problems = _job_problems(spec)
    if problems:
        loc, message = problems[0]
        raise located(str(path), line_of(path, loc), key_path(loc), message)
    return spec


def edit_job(job: JobSpec, edit: Callable[[dict[str, Any]], None]) -> JobSpec:
    """The one way code changes a job: ``edit`` changes its plain form in place; the result is
    validated again (field types and the cross-field checks of ``load_job``) and keeps the file
    the job came from. Sweep points, report arms and retraining jobs are all made this way."""
    d = job.model_dump()
    edit(d)
    out = JobSpec.model_validate(d)
    out.source_file = job.source_file
    problems = _job_problems(out)
    if problems:
        loc, message = problems[0]
        raise ValueError(f"{job.source_file or job.name}: {key_path(loc)}: {message}")
    return out
