"""What a training checkpoint holds, written by every rank together and read back on resume.

A checkpoint is a directory Ray Train persists:
  * ``train_state.pt``: the loop state (stage, step, tokens, RNG, whether the frozen weights are
    still the base's own) and, under DDP, the optimizer and scheduler (under ZeRO each rank's
    shard sits beside it in DeepSpeed's own files);
  * ``train_model.pt``: the adapter recipe and the training weights — for LoRA on the base's own
    frozen weights, the adapter alone (megabytes; the base is re-read on resume); at a full
    stage's end nothing (the fp32 HF export below is the exact state);
  * at a stage's end only, ``model/`` (the plain HF model, LoRA merged) and ``adapter/``: the
    stage model a run returns. Between stage ends no export is written;
  * ``metrics.jsonl``: the run's history so far.

Weights are gathered to rank 0 only (``Engine.full_state``) and the export is built from that
state dict (``weights.merged_state_dict``), never from a second copy of the model.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hybridft.model.hf import load_tokenizer
from hybridft.train.adapters import adapter_names, is_peft, lora_config, recipe_of
from hybridft.train.plan import WorkerPlan
from hybridft.train.strategy import Engine
from hybridft.train.weights import merged_state_dict, tied_names

STATE_FILE = "train_state.pt"
MODEL_STATE_FILE = "train_model.pt"
HISTORY_FILE = "metrics.jsonl"
KEEP_SCORE = "keep_score"  # every checkpoint's retention rank (see keep_score)


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:

    return load_tokenizer(path)


def _meta_model(base_dir: str, dtype: torch.dtype) -> Any:
    """The base architecture with no storage: what ``save_pretrained`` needs besides weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def base_weights(base_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(Path(base_dir).glob("*.safetensors")):
        out.update(load_file(str(path), device="cpu"))
    return out


def export_hf(
    base_dir: str,
    recipe: dict[str, Any] | None,
    weights: dict[str, torch.Tensor],
    adapter_only: bool,
    out: Path,
) -> None:
    """Write ``out/model`` (a plain HF directory, LoRA merged in) and, for LoRA, ``out/adapter``
    (peft's adapter files) from a state dict alone."""
    plain = weights
    dtype = next(iter(weights.values())).dtype if weights else torch.float32
    if recipe is not None:
        base = base_weights(base_dir) if adapter_only else None
        plain = merged_state_dict(weights, recipe, base)
        dtype = next(v.dtype for k, v in plain.items() if k.endswith(".weight"))
        adapter = {k: v for k, v in weights.items() if ".lora_" in k}
        from peft import get_peft_model

        meta = get_peft_model(_meta_model(base_dir, dtype), lora_config(recipe))
        meta.save_pretrained(str(out / "adapter"), state_dict=adapter)
    model = _meta_model(base_dir, dtype)
    plain = {k: v for k, v in plain.items() if k not in tied_names(model)}
    model.save_pretrained(str(out / "model"), state_dict=plain, safe_serialization=True)
    _tokenizer(base_dir).save_pretrained(str(out / "model"))


def read_checkpoint(
    ckpt_dir: Path,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A checkpoint's loop state, model blob (``recipe``, ``state``, ``adapter_only``) and
    history, tensors on the CPU.

    Rank 0 saved the tensors from its device: loaded as saved, every rank would put them on
    rank 0's GPU. From the CPU each goes where it belongs: the RNG state into the CPU generator,
    the weights into the model before the engine moves it, the optimizer state into the optimizer
    (``load_state_dict`` casts it to its parameters' device). The weights are memory-mapped: a
    rank that does not read them (ZeRO: rank 0 loads them for all) does not pay for them.
    """
    # tensors, numbers, strings, lists, tuples and dicts only (optimizer and LambdaLR state
    # dicts, the LoRA recipe): weights_only loads them
    state = torch.load(ckpt_dir / STATE_FILE, map_location="cpu", weights_only=True)
    blob = torch.load(ckpt_dir / MODEL_STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    if blob["state"] is None:  # a full stage's end: the fp32 HF weights are the exact state
        from safetensors.torch import load_file

        blob["state"] = load_file(str(ckpt_dir / "model" / "model.safetensors"), device="cpu")
    history = [json.loads(x) for x in (ckpt_dir / HISTORY_FILE).read_text().splitlines()]
    return state, blob, history


def keep_score(stage_steps: list[int], s_idx: int, done: int) -> int:
    """A checkpoint's retention rank: every stage end above every other checkpoint, each group
    by global step. Keeping the ``keep + len(stages)`` highest (``train.run.checkpoint_config``)
    keeps every stage model and at least the ``keep`` latest checkpoints."""
    global_step = sum(stage_steps[:s_idx]) + done
    return global_step + (sum(stage_steps) if done == stage_steps[s_idx] else 0)


def write_checkpoint(
    plan: WorkerPlan, engine: Engine, progress: Any, at: tuple[int, int], rank: int
) -> None:
    """Every rank calls this at step ``at = (stage index, steps done)`` (it gathers state and
    reports); rank 0 writes the model files. ``progress``: the loop's ``Progress``."""
    import ray.train
    from ray.train import Checkpoint

    s_idx, done = at
    state, history, timings = progress.state, progress.history, progress.timings
    stages = plan.stages
    last = done == stages[s_idx].steps
    started = time.perf_counter()
    weights = engine.full_state()  # collective; rank 0's CPU copy, {} elsewhere
    adapter_only = is_peft(engine.lm) and bool(state.get("frozen_is_base"))
    next_state = {
        "stage": s_idx + 1 if last else s_idx,
        "step": 0 if last else done,
        "tokens": state["tokens"],
        "rng_torch": torch.get_rng_state(),
        "frozen_is_base": bool(state.get("frozen_is_base")),
    }
    metrics = dict(history[-1]) if history else {}
    metrics["stage_end"] = stages[s_idx].name if last else ""
    metrics["done"] = bool(last and s_idx == len(stages) - 1)
    metrics[KEEP_SCORE] = keep_score([s.steps for s in stages], s_idx, done)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if not last:
            next_state.update(engine.save(out, rank))  # DeepSpeed: every rank writes its shard
        attach = plan.strategy != "ddp" and not last
        if rank == 0:
            if adapter_only:
                names = set(adapter_names(engine.lm))
                weights = {k: v for k, v in weights.items() if k in names}
            recipe = recipe_of(engine.lm, plan.recipe)
            if last:
                export_hf(plan.base_dir, recipe, weights, adapter_only, out)
            # a full stage's end: the fp32 HF export is the exact state, not written twice
            full_export = last and recipe is None
            blob = {
                "recipe": recipe,
                "state": None if full_export else weights,
                "adapter_only": adapter_only,
            }
            torch.save(blob, out / MODEL_STATE_FILE)
            torch.save(next_state, out / STATE_FILE)
        timings["time/checkpoint_s"] += time.perf_counter() - started
        if history:  # the run's record of its own time, up to this report
            history[-1].update(timings)
            metrics.update(timings)
        if rank == 0:
            (out / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
            attach = True
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if attach else None)
