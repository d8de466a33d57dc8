"""The worker loop: one loop for every stage, method and strategy.

Runs inside Ray Train workers (``TorchTrainer``). It knows nothing of Tune or MLflow: it reads its
config, trains the planned rows stage by stage, reports metrics through ``ray.train.report`` and
attaches a checkpoint (HF weights + optimizer, scheduler, RNG and data position) every N steps and
at every stage end. A restarted worker group resumes from the last checkpoint at the exact row.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridft.train.loss import LossModel, micro_batch_loss, per_source_sums, unwrap
from hybridft.train.packing import PackedRows, shift_loss_mask

STATE_FILE = "train_state.pt"
HISTORY_FILE = "metrics.jsonl"


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float):
    """Multiplier of the peak LR at a step: linear warmup, then constant / linear / cosine decay."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup  # 1) linear warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 2) decay to min_ratio
        if schedule == "linear":
            return 1.0 - (1.0 - min_ratio) * progress
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_rows(rows: PackedRows, step: int, rank: int, world: int, per_worker: int) -> np.ndarray:
    """Row indices this worker trains at ``step``: an interleaved share of the step's rows."""
    base = step * per_worker * world
    return base + rank + world * np.arange(per_worker)


def _micro_batches(rows: PackedRows, idx: np.ndarray, batch: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for k in range(0, len(idx), batch):
        sel = idx[k : k + batch]
        pos = rows.position_ids[sel]
        out.append(
            {
                "input_ids": torch.from_numpy(rows.input_ids[sel].astype(np.int64)),
                "position_ids": torch.from_numpy(pos.astype(np.int64)),
                "target_mask": torch.from_numpy(shift_loss_mask(rows.loss_mask[sel], pos)),
                "target_sources": torch.from_numpy(rows.source_ids[sel][:, 1:].astype(np.int64)),
                "real_tokens": int((rows.source_ids[sel] >= 0).sum()),
            }
        )
    return out


def _loss_tokens(rows: PackedRows, idx: np.ndarray) -> int:
    return int(shift_loss_mask(rows.loss_mask[idx], rows.position_ids[idx]).sum())


def _build_model(config: dict[str, Any], model_dir: str) -> torch.nn.Module:
    from hybridft.model.hf import load_model

    model = load_model(model_dir)
    method = config["method"]
    if method["type"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = method["lora"]
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"],
                task_type="CAUSAL_LM",
            ),
        )
    return model


def save_hf(model: torch.nn.Module, tokenizer_dir: str, out: Path) -> None:
    """Write the model as a plain HF directory (LoRA merged into a copy), plus the tokenizer."""
    from hybridft.model.hf import load_tokenizer, save_model

    lm = unwrap(model)
    if hasattr(lm, "merge_and_unload"):  # peft: serve a merged copy; keep the adapter beside it
        lm.save_pretrained(str(out / "adapter"))
        import copy

        lm = copy.deepcopy(lm).merge_and_unload()
    save_model(lm, load_tokenizer(tokenizer_dir), out / "model")


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker)."""
    import ray.train
    from ray.train import Checkpoint

    torch.set_num_threads(config["threads_per_worker"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    training = config["training"]
    batch, accum = training["batch_size"], training["grad_accum"]
    per_worker = batch * accum
    use_bf16 = training["precision"] == "bf16"

    # 1) where to start: a fresh run, or the last checkpoint of this run
    state: dict[str, Any] = {"stage": 0, "step": 0, "tokens": 0, "elapsed": 0.0}
    model_dir = config["base_dir"]
    history: list[dict[str, Any]] = []
    ckpt = ray.train.get_checkpoint()
    ckpt_dir = None
    if ckpt is not None:
        ckpt_dir = ckpt.to_directory()
        state = torch.load(Path(ckpt_dir) / STATE_FILE, weights_only=False)
        model_dir = str(Path(ckpt_dir) / "model")
        history = [json.loads(x) for x in (Path(ckpt_dir) / HISTORY_FILE).read_text().splitlines()]
    _seed_all(config["seed"])
    model = _build_model(config, config["base_dir"] if ckpt_dir is None else model_dir)

    stages = config["stages"]
    for s_idx in range(state["stage"], len(stages)):
        stage = stages[s_idx]
        rows: PackedRows = stage["rows"]
        if not isinstance(rows, PackedRows):
            rows = ray.get(rows)
        n_sources = len(stage["sources"])
        wrapped = ray.train.torch.prepare_model(LossModel(model), parallel_strategy="ddp")
        params = [p for p in wrapped.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=stage["lr"], weight_decay=training["weight_decay"], betas=(0.9, 0.95)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lr_lambda(
                stage["schedule"], stage["warmup_steps"], stage["steps"], stage["min_lr_ratio"]
            ),
        )
        start = 0
        if ckpt_dir is not None and state["stage"] == s_idx and state["step"] > 0:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_torch"])
            start = state["step"]
        window = {"loss": 0.0, "tokens": 0, "loss_tokens": 0, "t0": time.perf_counter()}
        src_sum = torch.zeros(n_sources, dtype=torch.float64)
        src_cnt = torch.zeros(n_sources, dtype=torch.float64)
        for step in range(start, stage["steps"]):
            # 2) the step's rows on every worker: normaliser over the global batch, no all_reduce
            all_idx = step * per_worker * world + np.arange(per_worker * world)
            global_loss_tokens = _loss_tokens(rows, all_idx)
            mine = worker_rows(rows, step, rank, world, per_worker)
            micro = _micro_batches(rows, mine, batch)
            for m_idx, mb in enumerate(micro):
                sync = m_idx == len(micro) - 1
                no_sync = (
                    wrapped.no_sync()
                    if (not sync and hasattr(wrapped, "no_sync"))
                    else contextlib.nullcontext()
                )
                with no_sync, torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    token_losses = wrapped(mb["input_ids"], mb["position_ids"], mb["target_mask"])
                    loss = micro_batch_loss(token_losses, global_loss_tokens, world)
                loss.backward()
                s, c = per_source_sums(
                    token_losses, mb["target_sources"][mb["target_mask"]], n_sources
                )
                src_sum += s
                src_cnt += c
                window["loss"] += float(token_losses.detach().sum())
                window["loss_tokens"] += int(mb["target_mask"].sum())
                window["tokens"] += int(mb["real_tokens"])
            if training["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, training["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["tokens"] += int((rows.source_ids[all_idx] >= 0).sum())
            done = step + 1
            last = done == stage["steps"]
            if done % training["log_every"] == 0 or last:
                elapsed = time.perf_counter() - window["t0"]
                state["elapsed"] += elapsed
                record = {
                    "stage": stage["name"],
                    "stage_index": s_idx,
                    "step": done,
                    "global_step": sum(x["steps"] for x in stages[:s_idx]) + done,
                    "loss": window["loss"] / max(window["loss_tokens"], 1),
                    "lr": scheduler.get_last_lr()[0],
                    "tokens_per_s_worker": window["tokens"] / max(elapsed, 1e-9),
                    "trained_tokens": state["tokens"],
                }
                for i, name in enumerate(stage["sources"]):
                    if src_cnt[i] > 0:
                        record[f"loss/{name}"] = float(src_sum[i] / src_cnt[i])
                history.append(record)
                if rank == 0:
                    print(
                        f"[{stage['name']}] step {done}/{stage['steps']} loss {record['loss']:.4f} "
                        f"lr {record['lr']:.2e} tok/s/worker {record['tokens_per_s_worker']:.0f}",
                        flush=True,
                    )
                window = {"loss": 0.0, "tokens": 0, "loss_tokens": 0, "t0": time.perf_counter()}
                src_sum.zero_()
                src_cnt.zero_()
            save = last or done % training["checkpoint_every"] == 0
            if save:
                # 3) checkpoint: rank 0 writes, every rank reports (report is a barrier)
                next_state = {
                    "stage": s_idx + 1 if last else s_idx,
                    "step": 0 if last else done,
                    "tokens": state["tokens"],
                    "elapsed": state["elapsed"],
                    "optimizer": None if last else optimizer.state_dict(),
                    "scheduler": None if last else scheduler.state_dict(),
                    "rng_torch": torch.get_rng_state(),
                }
                metrics = dict(history[-1]) if history else {}
                metrics.update(
                    {
                        "stage_end": stage["name"] if last else "",
                        "done": last and s_idx == len(stages) - 1,
                    }
                )
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = None
                    if rank == 0:
                        save_hf(wrapped, config["base_dir"], Path(tmp))
                        torch.save(next_state, Path(tmp) / STATE_FILE)
                        (Path(tmp) / HISTORY_FILE).write_text(
                            "".join(json.dumps(h) + "\n" for h in history)
                        )
                        checkpoint = Checkpoint.from_directory(tmp)
                    ray.train.report(metrics, checkpoint=checkpoint)
            elif done % training["log_every"] == 0:
                ray.train.report(dict(history[-1]))
        model = unwrap(wrapped)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # the next stage starts from the merged weights
