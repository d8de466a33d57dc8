"""The GPU check (issue 18): one NVIDIA GPU, one script, everything inside about 8 minutes.

On a random-init Llama-shaped model (default ~0.47B parameters: hidden 1280, 24 layers, 20 heads,
4 KV heads, intermediate 3584, vocabulary 32000), bf16, packing, rows of 2048 tokens:

1. the GPU's bf16 matmul peak, measured here (8192^3 products, the best of several bursts);
2. hybridft jobs (a job YAML read by ``load_job``, trained by ``train.run.run``) with strategy
   ``ddp`` and ``zero3``: log lines, a validation loss and a checkpoint mid-run, tokens/s and
   MFU over the log windows after the first (warm-up);
3. TRL's ``SFTTrainer`` on the same base and rows in its packed mode (``packing`` BFD +
   ``padding_free``, bf16; 1 row x accumulation and the whole batch flattened: the faster counts);
4. ``evaluate_model`` and the serving engines on the GPU, on the model the DDP job trained: hf
   (``GenerationEngine``) and, where vLLM is installed, vllm (``VLLMEngine``, its start-up and
   tokens/s on the same prompts; the lent GPU machine has no vLLM and no network, so there the
   phase records why it did not run);
5. a resume drill per strategy: the same job again, its worker SIGKILLed after the mid-run
   checkpoint (``HYBRIDFT_FAULT``); Ray Train restarts it, the run resumes from the checkpoint
   (no step reported twice) and ends at the uninterrupted run's loss.

One GPU is lent at a time, so every job has ``num_workers: 1``: a world of one still runs DDP's
and DeepSpeed's code paths (process group, wrapping, ZeRO-3 partitioning and gathering,
checkpoint save/load), but no gradient crosses between GPUs.

Each phase has a time box (and the whole run a budget); a phase that fails or runs out of time is
recorded as ``{"ok": false, "error": ...}`` and the next one runs. MFU = training FLOPs per token
(6 per weight, the tied head counted once: ``train.throughput.train_flops_per_token``) x tokens/s
/ the peak measured in step 1; ``mfu_reported`` is the loop's own figure, against the peak its
worker measured at start-up (1024^3 products: lower than step 1's on a large GPU). Ends with one
JSON line holding every figure (also written to ``--json-out`` after every phase).

    python benchmarks/gpu_check.py            # on the GPU machine (see gpu_check.sh), <= 8 min
    python benchmarks/gpu_check.py --smoke    # tiny model, a few steps, on CPU: the script's test
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from ray.train import UserCallback

# The CPU benchmark's data, job spec, TRL runner and steady-state reading: imported, not copied
# (this script's directory is on sys.path when it runs as a script).
from train_throughput import (
    _rounded,
    heavy_tailed_rows,
    job_spec,
    ratio,
    run_trl,
    steady_state,
    user_text,
)

# Shapes, lengths, steps and time boxes (seconds) per mode.
PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {
        "model": {"hidden": 1280, "layers": 24, "heads": 20, "kv_heads": 4, "intermediate": 3584},
        "vocab": 32000,
        "max_len": 2048,
        "rows": 3000,
        "row_words": (20, 1500, 200),  # lo, hi, median: lognormal, heavy-tailed
        "batch": 8,  # packed rows per step
        "hf_steps": 40,
        "log_every": 5,
        "checkpoint_every": 20,
        "threads": 4,
        "trl_warmup": 2,
        "trl_packed_steps": 6,
        "eval_examples": 64,
        "new_tokens": 32,
        "peak_size": 8192,
        "budget_s": 420,  # + the wrapper's install (~20 s): inside 8 minutes
        "boxes": {
            "base": 90,
            "ddp": 120,
            "zero3": 130,
            "trl": 100,
            "eval": 60,
            "serve": 45,
            "serve_vllm": 120,  # vLLM's start on a GPU (CUDA graphs) is most of it
            "resume_ddp": 120,
            "resume_zero3": 130,
        },
    },
    "smoke": {
        # head size 32: one vLLM's CPU attention runs (serve_vllm on CPU)
        "model": {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 2, "intermediate": 176},
        "vocab": 1024,
        "max_len": 128,
        "rows": 160,
        "row_words": (8, 120, 30),
        "batch": 2,
        "hf_steps": 40,  # ~40 ms each: the drill's kill must come >= 1 s after the checkpoint
        "log_every": 5,
        "checkpoint_every": 20,
        "threads": 1,
        "trl_warmup": 1,
        "trl_packed_steps": 2,
        "eval_examples": 8,
        "new_tokens": 8,
        "peak_size": 512,
        "budget_s": 600,
        "boxes": {
            "base": 60,
            "ddp": 120,
            "zero3": 120,
            "trl": 120,
            "eval": 60,
            "serve": 60,
            "serve_vllm": 120,
            "resume_ddp": 150,
            "resume_zero3": 150,
        },
    },
}
NOTE = (
    "one GPU: DDP and ZeRO-3 run with num_workers=1 (a world of 1 still goes through DDP's and "
    "DeepSpeed's code paths; no gradient is exchanged between GPUs)"
)


class PhaseTimeout(BaseException):
    """A phase's time box ran out (a BaseException: library ``except Exception`` won't eat it)."""


@contextlib.contextmanager
def time_box(seconds: float) -> Iterator[None]:
    def expire(*_: Any) -> None:
        raise PhaseTimeout(f"time box of {seconds:.0f} s ran out")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Phases:
    """Runs each phase inside its time box and the run's budget; records, never raises."""

    def __init__(self, budget_s: float, json_out: str | None, skip: set[str]) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.json_out = json_out
        self.skip = skip
        self.results: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}

    def run(
        self, name: str, box_s: float, fn: Callable[..., dict[str, Any]], *a: Any, **kw: Any
    ) -> dict[str, Any]:
        print(f"\n=== {name} ===", flush=True)
        left = self.budget_s - (time.perf_counter() - self.t0)
        start = time.perf_counter()
        if name in self.skip:
            out: dict[str, Any] = {"ok": False, "error": "skipped: --skip"}
        elif left < box_s / 2:  # too little left to finish: the time is kept for what follows
            out = {"ok": False, "error": f"skipped: {left:.0f} s of the budget left"}
        else:
            try:
                with time_box(min(box_s, left)):
                    out = {"ok": True, **fn(*a, **kw)}
            except (Exception, PhaseTimeout) as exc:  # noqa: BLE001  (recorded; the next runs)
                traceback.print_exc()
                out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                if name in ("ddp", "zero3") or name.startswith("resume"):
                    stop_ray()  # a worker group left running would hold the GPU
        free_gpu()  # what a phase in this process left cached (TRL, eval, serve)
        out["wall_s"] = round(time.perf_counter() - start, 1)
        self.results[name] = out
        print(f"=== {name}: {json.dumps(_rounded(out), default=str)}", flush=True)
        self.write(partial=True)
        return out

    def write(self, partial: bool) -> dict[str, Any]:
        record = {
            **self.summary,
            "phases": self.results,
            "partial": partial,
            "total_s": round(time.perf_counter() - self.t0, 1),
        }
        if self.json_out:
            Path(self.json_out).write_text(json.dumps(_rounded(record), default=str) + "\n")
        return record


def stop_ray() -> None:
    import ray

    ray.shutdown()


# -- set-up --------------------------------------------------------------------------------------


def environment(gpu: bool) -> dict[str, Any]:
    import transformers
    import trl

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    out["trl"] = trl.__version__
    if gpu:
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sms=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return out


def measure_peak(device: str, size: int) -> dict[str, Any]:
    from hybridft.train.throughput import measure_matmul_peak

    seconds = 2.0 if device == "cuda" else 0.5
    flops = measure_matmul_peak(torch.bfloat16, size=size, seconds=seconds, device=device)
    return {"peak_bf16_tflops": flops / 1e12, "size": size}


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_base(ctx: argparse.Namespace) -> dict[str, Any]:
    """Rows (train, validation, eval) and the random-init base, saved as an HF directory."""
    from hybridft.model.hf import save_model
    from hybridft.model.tiny import build_model, train_tokenizer
    from hybridft.specs import TinyModelSpec
    from hybridft.train.throughput import non_embedding_params, train_flops_per_token

    lo, hi, median = ctx.row_words
    ctx.rows_list = heavy_tailed_rows(ctx.rows, ctx.seed, lo=lo, hi=hi, median=median)
    ctx.data = write_rows(ctx.work / "train.jsonl", ctx.rows_list)
    ctx.val = write_rows(
        ctx.work / "val.jsonl", heavy_tailed_rows(32, ctx.seed + 1, lo, hi, median)
    )
    ctx.eval_rows = heavy_tailed_rows(ctx.eval_examples, ctx.seed + 2, lo=8, hi=60, median=25)
    ctx.eval_path = write_rows(ctx.work / "eval.jsonl", ctx.eval_rows)
    tokenizer = train_tokenizer((v for r in ctx.rows_list for v in r.values()), ctx.vocab)
    cfg = TinyModelSpec(**ctx.model, vocab_size=ctx.vocab, max_position=ctx.max_len)
    # the embedding keeps the nominal vocabulary (padded past the tokenizer's, as real models
    # pad theirs): the synthetic rows hold fewer distinct words than a 32k BPE would learn
    vocab = max(len(tokenizer), ctx.vocab)
    lm = build_model(cfg, vocab, tokenizer.pad_token_id, tokenizer.eos_token_id, ctx.seed)
    ctx.base_dir = save_model(lm, tokenizer, ctx.work / "base")
    ctx.flops_per_token = train_flops_per_token(lm)
    return {
        "params": sum(p.numel() for p in lm.parameters()),
        "non_embedding_params": non_embedding_params(lm),
        **ctx.model,
        "vocab": vocab,
        "tokenizer_vocab": len(tokenizer),
        "max_len": ctx.max_len,
        "rows": ctx.rows,
        "tokens_per_step": ctx.batch * ctx.max_len,
    }


# -- hybridft ------------------------------------------------------------------------------------


class ReportLog(UserCallback):
    """Ray Train callback (runs in the Train controller): each report the controller took in
    (stage, step, with a checkpoint or not) and each worker failure, appended to a file the driver
    reads afterwards. The order tells where a restarted run resumed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def _write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        record = metrics[0]  # rank 0's: the loop's records are summed over workers already
        entry = {"stage": record.get("stage"), "step": record.get("step")}
        self._write({**entry, "checkpoint": checkpoint is not None})

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self._write({"failure": {str(k): str(v)[:200] for k, v in worker_exceptions.items()}})


def write_job(ctx: argparse.Namespace, name: str, strategy: str) -> Path:
    """The CPU benchmark's job spec, with validation, a mid-run checkpoint, one worker (on the
    GPU when there is one) and one restart allowed; written as YAML for ``load_job``."""
    spec = job_spec(name, ctx.base_dir, ctx.data, ctx.work, ctx, 1, ctx.threads, strategy)
    job = spec.model_dump(mode="json")
    job["data"]["validation"] = {"bench": [str(ctx.val)]}
    job["training"]["checkpoint_every"] = ctx.checkpoint_every
    resources = {"CPU": float(ctx.threads), **({"GPU": 1.0} if ctx.gpu else {})}
    job["scaling"].update(use_gpu=ctx.gpu, resources_per_worker=resources, max_failures=1)
    path = ctx.work / "jobs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def train_job(ctx: argparse.Namespace, strategy: str, fault_at: int | None = None) -> Any:
    """One hybridft run; with ``fault_at`` its worker SIGKILLs itself once after that step."""
    from hybridft.specs import load_job
    from hybridft.train.run import run

    name = f"gpucheck-{strategy}" + ("-drill" if fault_at else "")
    reports = ctx.work / f"{name}.reports.jsonl"
    marker = ctx.work / f"{name}.killed"
    if fault_at:
        os.environ["HYBRIDFT_FAULT"] = f"0:0:{fault_at}:{marker}"
    try:
        result = run(
            load_job(write_job(ctx, name, strategy)), run_name=name, callbacks=[ReportLog(reports)]
        )
    finally:
        os.environ.pop("HYBRIDFT_FAULT", None)
    storage = ctx.work / "runs" / "ray" / name
    result.extra["reports"] = [json.loads(x) for x in reports.read_text().splitlines()]
    result.extra["fault_fired"] = marker.is_file()
    # a 0.5B model's checkpoints are ~8 GB each: keep only the final model (eval, serve, drill)
    shutil.rmtree(storage, ignore_errors=True)
    shutil.rmtree(result.run_dir / "stages", ignore_errors=True)
    return result


def measured_run(ctx: argparse.Namespace, strategy: str) -> dict[str, Any]:
    from hybridft.train.throughput import mfu

    result = train_job(ctx, strategy)
    ctx.trained[strategy] = result
    train = [h for h in result.history if h.get("stage") == "train"]
    stats = steady_state(train)
    validated = [h["val_loss"] for h in train if "val_loss" in h]
    return {
        "tokens_per_s": stats["tokens_per_s"],
        "mfu": mfu(stats["tokens_per_s_worker"], ctx.flops_per_token, ctx.peak),
        "mfu_reported": stats["mfu"],
        "peak_tflops_worker": stats["peak_flops_worker"] / 1e12,
        "measured_steps": stats["measured_steps"],
        "final_loss": stats["final_loss"],
        "val_losses": validated,
        "log_lines": len(train),
        "checkpoints": [r["step"] for r in result.extra["reports"] if r.get("checkpoint")],
        "timings": result.extra["timings"],
    }


def resume_drill(ctx: argparse.Namespace, strategy: str) -> dict[str, Any]:
    """The same job, its worker killed after the mid-run checkpoint; vs the uninterrupted run.

    The kill comes >= 1 s of steps after the checkpoint's report: Ray Train's controller takes
    reports in at its polls (every 0.25 s here), and a worker killed 40 ms after reporting a
    checkpoint lost it in this drill on CPU (the run restarted from the checkpoint before).
    """
    from safetensors.torch import load_file

    reference = ctx.trained.get(strategy)
    if reference is None:
        raise RuntimeError(f"no uninterrupted {strategy} run to compare with")
    windows = [h["window_s"] / ctx.log_every for h in reference.history[1:] if "window_s" in h]
    step_s = statistics.median(windows) if windows else 1.0  # after warm-up
    fault_at = ctx.checkpoint_every + ctx.log_every * max(
        2, math.ceil(1.0 / step_s / ctx.log_every)
    )
    fault_at = min(fault_at, ctx.hf_steps - ctx.log_every)  # the last window before the end
    result = train_job(ctx, strategy, fault_at=fault_at)
    reports = result.extra["reports"]
    failed = next((i for i, r in enumerate(reports) if "failure" in r), None)
    before = reports[:failed] if failed is not None else reports
    after = reports[failed + 1 :] if failed is not None else []
    saved = [r["step"] for r in before if r.get("checkpoint")]
    restart_step = after[0]["step"] if after else None
    seen = [(h["stage"], h["step"]) for h in result.history]
    expected = [(h["stage"], h["step"]) for h in reference.history]
    a = load_file(str(result.model_dir / "model.safetensors"))
    b = load_file(str(reference.model_dir / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    loss, ref_loss = result.history[-1]["loss"], reference.history[-1]["loss"]
    # resumed: the first report after the restart is the first log step after the checkpoint
    # (a restart from scratch reports step log_every again)
    resumed = bool(saved) and restart_step == saved[-1] + ctx.log_every
    out = {
        "killed_after_step": fault_at,
        "fault_fired": result.extra["fault_fired"],
        "worker_failures_seen": 0 if failed is None else 1,
        "checkpoint_before_kill": saved[-1] if saved else None,
        "first_step_after_restart": restart_step,
        "resumed_from_checkpoint": resumed,
        "history_matches": seen == expected,
        "final_loss": loss,
        "uninterrupted_final_loss": ref_loss,
        "max_weight_diff": diff,
    }
    # CPU kernels repeat exactly; bf16 GPU kernels are not bit-reproducible run to run
    tolerance = 1e-2 if ctx.gpu else 1e-5
    out["resume_ok"] = (
        out["fault_fired"]
        and resumed
        and seen == expected
        and abs(loss - ref_loss) <= tolerance * ref_loss
    )
    return out


# -- TRL, evaluation, serving --------------------------------------------------------------------


@contextlib.contextmanager
def trl_on_gpu(gpu: bool) -> Iterator[None]:
    """``train_throughput.run_trl`` is written for the CPU (``SFTConfig(use_cpu=True)``); on a
    GPU the same run, with only ``use_cpu`` turned off."""
    import trl

    if not gpu:
        yield
        return
    original = trl.SFTConfig
    trl.SFTConfig = lambda **kw: original(**{**kw, "use_cpu": False})
    try:
        yield
    finally:
        trl.SFTConfig = original


def free_gpu() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trl_best(ctx: argparse.Namespace) -> dict[str, Any]:
    from hybridft.train.throughput import mfu

    modes: dict[str, Any] = {}
    for micro in sorted({1, ctx.batch}):
        name = f"trl_packed_m{micro}"
        try:
            with trl_on_gpu(ctx.gpu):
                r = run_trl(
                    name, ctx.base_dir, ctx.rows_list, ctx.work, ctx,
                    packed=True, micro=micro, accum=ctx.batch // micro,
                )  # fmt: skip
            r["mfu"] = mfu(r["tokens_per_s"], ctx.flops_per_token, ctx.peak)
            r["mode"] = (
                f"packing=bfd, padding_free, bf16, {micro} row(s) x {ctx.batch // micro} accum"
            )
        except Exception as exc:  # noqa: BLE001  (one mode failing leaves the other)
            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        modes[name] = r
        free_gpu()
    ran = {k: v for k, v in modes.items() if v.get("tokens_per_s")}
    if not ran:
        raise RuntimeError(f"no TRL mode ran: {json.dumps(modes)[:400]}")
    best = max(ran, key=lambda k: ran[k]["tokens_per_s"])
    return {
        "best": best,
        "tokens_per_s": ran[best]["tokens_per_s"],
        "mfu": ran[best]["mfu"],
        "modes": modes,
    }


def evaluate(ctx: argparse.Namespace) -> dict[str, Any]:
    from hybridft.data.reader import read_examples
    from hybridft.evaluate.run import evaluate_model

    model_dir = ctx.trained["ddp"].model_dir
    examples = list(read_examples([str(ctx.eval_path)], fmt="instruction", source="bench"))
    result = evaluate_model(
        model_dir, {"bench": examples}, max_examples=len(examples), max_new_tokens=ctx.new_tokens,
        label_probs=False, device=ctx.device,
    )  # fmt: skip
    free_gpu()
    return {
        "device": ctx.device,
        "examples": len(examples),
        "examples_per_s": result.examples_per_s,
        "score": result.headline,
        "model": "the ddp run's final model",
    }


def serve(ctx: argparse.Namespace) -> dict[str, Any]:
    """The hf engine (the model in this process) on the model the DDP job trained."""
    from hybridft.serve.generation import GenerationEngine

    engine = GenerationEngine.from_dir(ctx.trained["ddp"].model_dir, device=ctx.device)
    out = {"device": str(engine.device), **decode_rates(engine, ctx)}
    del engine
    free_gpu()
    return out


def serve_vllm(ctx: argparse.Namespace) -> dict[str, Any]:
    """The vllm engine (vLLM's server as a child process, the shipped settings: CUDA graphs and
    bf16 on a GPU) on the same model, prompts and sampling as ``serve``: its start-up and
    tokens/s. Where vLLM is not installed (``HYBRIDFT_VLLM_PYTHON``, ``.venv-vllm``, or this
    python) the phase records that and the run goes on."""
    from hybridft.serve.vllm_engine import VLLMEngine
    from hybridft.serve.vllm_process import vllm_python

    vllm_python()  # not installed: the phase's error says how to install it
    t0 = time.perf_counter()
    engine = VLLMEngine.from_dir(
        ctx.trained["ddp"].model_dir, device=ctx.device, threads=ctx.threads
    )
    start_s = time.perf_counter() - t0
    try:
        return {"device": ctx.device, "start_s": start_s, **decode_rates(engine, ctx)}
    finally:
        engine.close()  # vLLM holds most of the GPU's memory until its server stops


def decode_rates(engine: Any, ctx: argparse.Namespace) -> dict[str, Any]:
    """One answer alone, then 8 at once (seeded sampling), on either engine."""
    from hybridft.serve.generation import SamplingParams

    prompts = [
        engine.chat_prompt_ids([{"role": "user", "content": user_text(r)}])
        for r in ctx.eval_rows[:8]
    ]
    # seeded sampling at temperature 1: a briefly trained model often answers EOS at once when
    # greedy, which would time the prompt alone
    n = ctx.new_tokens * 2
    engine.generate(prompts[0], SamplingParams(max_tokens=2))  # warm-up: kernels, allocator
    t0 = time.perf_counter()
    one = engine.generate(prompts[0], SamplingParams(max_tokens=n, temperature=1.0, seed=0))
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = engine.generate_batch(
        [(p, SamplingParams(max_tokens=n, temperature=1.0, seed=i)) for i, p in enumerate(prompts)]
    )
    batch_s = time.perf_counter() - t0
    done = [c for c in batch if not isinstance(c, Exception)]
    tokens = sum(c.completion_tokens for c in done)
    return {
        "single_tokens": one.completion_tokens,
        "single_tokens_per_s": one.completion_tokens / single_s,
        "batch_requests": len(prompts),
        "batch_answered": len(done),
        "batch_tokens": tokens,
        "batch_tokens_per_s": tokens / batch_s,
        "sample": one.text[:80],
    }


# -- summary -------------------------------------------------------------------------------------


def figures(results: dict[str, dict[str, Any]], ctx: argparse.Namespace) -> dict[str, Any]:
    ddp, zero3, trl = (results.get(k) or {} for k in ("ddp", "zero3", "trl"))

    def ok(name: str, key: str = "ok") -> bool | None:
        r = results.get(name)
        return None if r is None else bool(r.get(key))

    return {
        "tokens_per_s_ddp": ddp.get("tokens_per_s"),
        "tokens_per_s_zero3": zero3.get("tokens_per_s"),
        "mfu_ddp": ddp.get("mfu"),
        "mfu_zero3": zero3.get("mfu"),
        "mfu_reported_ddp": ddp.get("mfu_reported"),
        "mfu_reported_zero3": zero3.get("mfu_reported"),
        "peak_bf16_tflops": ctx.peak / 1e12 if ctx.peak else None,
        "trl_tokens_per_s": trl.get("tokens_per_s"),
        "trl_best_mode": trl.get("best"),
        "ratios": {
            "ddp_over_trl": ratio(ddp, trl),
            "zero3_over_trl": ratio(zero3, trl),
            "zero3_over_ddp": ratio(zero3, ddp),
        },
        "resume_ok": {s: ok(f"resume_{s}", "resume_ok") for s in ("ddp", "zero3")},
        "eval_ok": ok("eval"),
        "eval_examples_per_s": (results.get("eval") or {}).get("examples_per_s"),
        "serve_ok": ok("serve"),
        "serve_batch_tokens_per_s": (results.get("serve") or {}).get("batch_tokens_per_s"),
        "serve_vllm_ok": ok("serve_vllm"),
        "serve_vllm_start_s": (results.get("serve_vllm") or {}).get("start_s"),
        "serve_vllm_batch_tokens_per_s": (results.get("serve_vllm") or {}).get(
            "batch_tokens_per_s"
        ),
        "serve_vllm_over_hf_batch": ratio(
            results.get("serve_vllm") or {}, results.get("serve") or {}, "batch_tokens_per_s"
        ),
        "failed_phases": [k for k, v in results.items() if not v.get("ok")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps, CPU is fine")
    parser.add_argument("--budget-s", type=float, help="the whole run's budget in seconds")
    parser.add_argument("--json-out", help="also write the summary here (after every phase)")
    parser.add_argument("--workdir", help="keep data, base and runs here (default: a temp dir)")
    parser.add_argument(
        "--skip",
        default="",
        help="phases to leave out, comma-separated: ddp,zero3,trl,eval,serve,serve_vllm,resume_ddp,"
        "resume_zero3 (eval, serve and the drills need the runs they use)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    given = {k: v for k, v in vars(args).items() if v is not None}
    ctx = argparse.Namespace(**{**PRESETS["smoke" if args.smoke else "gpu"], **given})
    ctx.gpu = torch.cuda.is_available()
    ctx.device = "cuda" if ctx.gpu else "cpu"
    # what the imported helpers read from their own argparse namespace
    ctx.compile, ctx.trl_default_steps, ctx.trl_grad_checkpointing = False, 0, False
    ctx.trained, ctx.peak, ctx.flops_per_token = {}, 0.0, 0.0
    if not ctx.gpu and not args.smoke:
        print("warning: no CUDA device: the full-size check on CPU would take hours; use --smoke")

    phases = Phases(ctx.budget_s, args.json_out, {x.strip() for x in args.skip.split(",") if x})
    phases.summary = {
        "benchmark": "gpu_check",
        "mode": "smoke" if args.smoke else "full",
        "device": ctx.device,
        "world": 1,
        "note": NOTE,
        **environment(ctx.gpu),
    }
    with tempfile.TemporaryDirectory(prefix="hybridft-gpu-check-") as tmp:
        ctx.work = Path(args.workdir or tmp).resolve()
        ctx.work.mkdir(parents=True, exist_ok=True)
        peak = phases.run("peak", 30, measure_peak, ctx.device, ctx.peak_size)
        ctx.peak = peak.get("peak_bf16_tflops", 0.0) * 1e12
        model = phases.run("base", ctx.boxes["base"], build_base, ctx)
        phases.summary["model"] = model
        if model["ok"]:
            for strategy in ("ddp", "zero3"):
                phases.run(strategy, ctx.boxes[strategy], measured_run, ctx, strategy)
            phases.run("trl", ctx.boxes["trl"], trl_best, ctx)
            phases.run("eval", ctx.boxes["eval"], evaluate, ctx)
            phases.run("serve", ctx.boxes["serve"], serve, ctx)
            phases.run("serve_vllm", ctx.boxes["serve_vllm"], serve_vllm, ctx)
            for strategy in ("ddp", "zero3"):
                name = f"resume_{strategy}"
                phases.run(name, ctx.boxes[name], resume_drill, ctx, strategy)
        stop_ray()
        phases.summary.update(figures(phases.results, ctx))
        record = phases.write(partial=False)
    print(json.dumps(_rounded(record), default=str))


if __name__ == "__main__":
    sys.exit(main())
