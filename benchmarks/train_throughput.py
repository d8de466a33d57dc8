"""Training throughput on CPU, bf16: hybridft vs TRL's SFTTrainer, and hybridft's scaling modes.

In one run, from the SAME initial HF directory (a ~25M non-embedding-parameter Llama and a
byte-level BPE trained locally) and the SAME heavy-tailed instruction rows (~20 to ~500 tokens,
lognormal, max length 512), with the same learning rate, completion-only loss and tokens per step
(8 rows of max_len for packed modes, 8 sequences for the padded one), 1 worker and 1 thread:

- trl_default:  SFTTrainer, padding (no packing), gradient checkpointing off;
- trl_packed:   SFTTrainer, ``packing=True`` (BFD) + ``padding_free=True``. On CPU there is no
                varlen attention kernel: a flattened batch of 8 rows becomes one 4096-token
                sequence with a 4096 x 4096 block-diagonal SDPA mask, so TRL's best CPU set-up is
                1 packed row per micro-batch x 8 accumulation steps (same tokens per step);
                ``--trl-packed-micro batch`` (or ``both``) measures the flattened batch too;
- hybridft:     ``hybridft.train.run.run(spec)`` (Ray Train, packing, bf16);

then hybridft 2 workers x 1 thread vs 1 worker x 2 threads, and ZeRO-2 vs DDP on 2 workers.

Trained tokens/s counts non-pad tokens in steady state (the first steps are warm-up). MFU is
6 x non-embedding params x tokens/s per worker / (threads per worker x the bf16 matmul peak with
1 thread); the peak is sampled before every contender and the best sample counts (other
processes only ever lower it). hybridft's own figure, against the peak its worker measured at
start-up, is kept as ``mfu_reported``. Ray start-up and data preparation are outside every timed
window; the 1-minute load average around each contender shows whether something else shared the
machine. Prints a table, then a final line that is one JSON object.

    python benchmarks/train_throughput.py            # ~7-8 minutes on 2 CPU threads
    python benchmarks/train_throughput.py --quick    # smoke run, ~4-5 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

# The syllable lexicon of the data benchmark: imported, not copied (this script's directory is on
# sys.path when it runs as a script).
from data_throughput import _lexicon, _sentence

MODEL = {"layers": 8, "hidden": 512, "heads": 8, "kv_heads": 8, "intermediate": 1376}
TARGETS = {
    "hybridft_over_trl_default": 2.0,
    "hybridft_over_trl_best": 1.3,
    "hybridft_mfu": 0.35,
    "two_workers_over_two_threads": 0.85,
}


# -- data and model ------------------------------------------------------------------------------


def heavy_tailed_rows(n: int, seed: int, lo: int, hi: int, median: float) -> list[dict[str, str]]:
    """Instruction rows whose total length (in words, ~tokens) is lognormal, clipped to [lo, hi].

    Most rows are short and a few are long, as in real instruction suites: the case where padding
    wastes the most compute and packing matters.
    """
    rng = random.Random(seed)
    words = _lexicon(rng, size=6000)  # large enough for the BPE to reach its ~8k vocabulary
    rows = []
    for _ in range(n):
        total = int(min(hi, max(lo, rng.lognormvariate(math.log(median), 0.9))))
        n_instr = rng.randint(4, min(20, max(4, total // 4)))
        row = {"instruction": _sentence(rng, words, n_instr)}
        n_input = 0
        if rng.random() < 0.4 and total > 60:
            n_input = rng.randint(10, total // 3)
            row["input"] = _sentence(rng, words, n_input)
        # ~10 template/punctuation tokens per row: the output takes the rest of the budget
        row["output"] = _sentence(rng, words, max(3, total - n_instr - n_input - 10))
        rows.append(row)
    return rows


def user_text(row: dict[str, str]) -> str:
    """The user turn exactly as hybridft's ``instruction`` format builds it (data/formats.py)."""
    extra = row.get("input", "")
    return f"{row['instruction']}\n\n{extra}" if extra and extra.strip() else row["instruction"]


def build_base(rows: list[dict[str, str]], out: Path, vocab: int, seed: int) -> tuple[Path, Any]:
    from hybridft.model.hf import save_model
    from hybridft.model.tiny import build_model, train_tokenizer
    from hybridft.specs import TinyModelSpec

    tokenizer = train_tokenizer((v for row in rows for v in row.values()), vocab)
    cfg = TinyModelSpec(**MODEL, vocab_size=vocab, max_position=512)
    model = build_model(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, seed)
    save_model(model, tokenizer, out)
    return out, tokenizer


def length_summary(rows: list[dict[str, str]], tokenizer: Any, max_len: int) -> dict[str, Any]:
    """Token lengths of the rendered rows (hybridft and TRL apply the same chat template)."""
    texts = [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": user_text(r)},
                {"role": "assistant", "content": r["output"]},
            ],
            tokenize=False,
        )
        for r in rows
    ]
    full = [len(x) for x in tokenizer(texts)["input_ids"]]
    lengths = sorted(min(max_len, n) for n in full)
    q = statistics.quantiles(lengths, n=20)
    return {
        "rows": len(lengths),
        "min": lengths[0],
        "median": int(statistics.median(lengths)),
        "mean": round(statistics.fmean(lengths), 1),
        "p95": int(q[-1]),
        "max": lengths[-1],
        "truncated": sum(1 for n in full if n > max_len),
    }


# -- TRL -----------------------------------------------------------------------------------------


def run_trl(
    name: str,
    base_dir: Path,
    rows: list[dict[str, str]],
    work: Path,
    args: argparse.Namespace,
    packed: bool,
    micro: int,
    accum: int,
) -> dict[str, Any]:
    """SFTTrainer for warm-up + measured steps; tokens/s over the measured steps only."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from hybridft.model.hf import load_model, load_tokenizer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.ends.append(time.perf_counter())

    class CountingSFTTrainer(SFTTrainer):
        """Counts the non-pad tokens of every micro-batch (TRL has no per-step token hook)."""

        micro_tokens: list[int]  # set before train()

        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kw: Any) -> Any:
            if "attention_mask" in inputs:
                self.micro_tokens.append(int(inputs["attention_mask"].sum()))
            else:  # padding-free: one flattened sequence with no padding at all
                self.micro_tokens.append(int(inputs["position_ids"].numel()))
            return super().training_step(model, inputs, *rest, **kw)

    steps = args.trl_warmup + (args.trl_packed_steps if packed else args.trl_default_steps)
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": user_text(r)}],
                "completion": [{"role": "assistant", "content": r["output"]}],
            }
            for r in rows
        ]
    )
    config = SFTConfig(
        output_dir=str(work / name),
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=True,
        use_cpu=True,
        # SFTConfig turns checkpointing on by default (memory for ~30% more compute); hybridft
        # does not recompute activations, so neither does TRL here.
        gradient_checkpointing=args.trl_grad_checkpointing,
        max_length=args.max_len,
        packing=packed,
        padding_free=packed,
        packing_strategy="bfd",
        completion_only_loss=True,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    trainer = CountingSFTTrainer(
        model=load_model(base_dir),
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(base_dir),
    )
    trainer.micro_tokens = []
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    w = args.trl_warmup
    if len(clock.ends) != steps or len(trainer.micro_tokens) != steps * accum:
        raise RuntimeError(
            f"{name}: expected {steps} steps of {accum} micro-batches, got {len(clock.ends)} steps "
            f"and {len(trainer.micro_tokens)} micro-batches"
        )
    tokens = sum(trainer.micro_tokens[w * accum :])
    seconds = clock.ends[-1] - clock.ends[w - 1]
    return {
        "tokens_per_s": tokens / seconds,
        "measured_steps": steps - w,
        "tokens_per_step": tokens / (steps - w),
        "micro_batch": micro,
        "grad_accum": accum,
    }


# -- hybridft ------------------------------------------------------------------------------------


def job_spec(
    name: str,
    base_dir: Path,
    data: Path,
    work: Path,
    args: argparse.Namespace,
    workers: int,
    threads: int,
    strategy: str,
) -> Any:
    from hybridft.specs import (
        BudgetSpec,
        DataSpec,
        JobSpec,
        MixItem,
        ModelSpec,
        ScalingSpec,
        SourceSpec,
        StageSpec,
        TrainingSpec,
    )

    return JobSpec(
        name=name,
        seed=args.seed,
        output_dir=str(work / "runs"),
        model=ModelSpec(base=str(base_dir)),
        data=DataSpec(
            sources={
                "bench": SourceSpec(paths=[str(data)], format="instruction", kind="instruction")
            },
            loss="completion_only",
            max_len=args.max_len,
            rejects_dir=str(work / "rejects"),
        ),
        stages=[
            StageSpec(
                name="train",
                mix=[MixItem(source="bench", weight=1.0)],
                budget=BudgetSpec(steps=args.hf_steps),
                lr=args.lr,
                schedule="constant",
            )
        ],
        training=TrainingSpec(
            batch_size=args.batch // workers,
            grad_accum=1,
            packing=True,
            precision="bf16",
            grad_clip=1.0,
            log_every=args.log_every,
            checkpoint_every=10**9,  # only the final checkpoint, after the last timed window
            threads_per_worker=threads,
            compile=args.compile,
        ),
        scaling=ScalingSpec(
            num_workers=workers,
            resources_per_worker={"CPU": float(threads)},
            strategy=strategy,
        ),
    )


def steady_state(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens/s and MFU over every log window but the first (warm-up).

    Each window's weight is its time: its tokens / its tokens/s. Without ``trained_tokens`` in the
    records, steps stand in for tokens (packed rows hold nearly the same tokens each step).
    """
    windows = history[1:]
    if not windows:
        raise RuntimeError("no log window after warm-up: raise --hf-steps or lower --log-every")
    key = "trained_tokens" if all("trained_tokens" in h for h in history) else "step"
    amount = [b[key] - a[key] for a, b in zip(history[:-1], windows, strict=True)]
    seconds = [x / h["tokens_per_s"] for x, h in zip(amount, windows, strict=True)]
    share = [s / sum(seconds) for s in seconds]
    return {
        "tokens_per_s": sum(w * h["tokens_per_s"] for w, h in zip(share, windows, strict=True)),
        "tokens_per_s_worker": sum(
            w * h["tokens_per_s_worker"] for w, h in zip(share, windows, strict=True)
        ),
        "mfu": sum(w * h["mfu"] for w, h in zip(share, windows, strict=True)),
        "peak_flops_worker": statistics.fmean(h["peak_flops_worker"] for h in windows),
        "measured_steps": windows[-1]["step"] - history[0]["step"],
        "final_loss": windows[-1]["loss"],
    }


def run_hybridft(
    name: str,
    base_dir: Path,
    data: Path,
    work: Path,
    args: argparse.Namespace,
    workers: int = 1,
    threads: int = 1,
    strategy: str = "ddp",
) -> dict[str, Any]:
    from pydantic import ValidationError

    from hybridft.train.run import run

    try:
        spec = job_spec(name, base_dir, data, work, args, workers, threads, strategy)
    except ValidationError as exc:  # e.g. a strategy this version of the spec does not know yet
        reason = exc.errors()[0]
        return {
            "available": False,
            "reason": f"{'.'.join(map(str, reason['loc']))}: {reason['msg']}",
        }
    result = run(spec)
    stats = steady_state([h for h in result.history if h.get("stage") == "train"])
    stats["mfu_reported"] = stats.pop("mfu")
    return {
        "available": True,
        "workers": workers,
        "threads": threads,
        "strategy": strategy,
        **stats,
    }


# -- report --------------------------------------------------------------------------------------


class PeakMeter:
    """The bf16 matmul peak with 1 thread, sampled before every contender; the best sample counts.

    Other processes on a shared machine lower any one sample; the highest over the run is the
    closest to what the machine can do, so every MFU in the summary uses it.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        from hybridft.train.throughput import measure_matmul_peak

        torch.set_num_threads(1)
        self.samples.append(max(measure_matmul_peak(torch.bfloat16, seconds=0.5) for _ in range(2)))

    @property
    def peak(self) -> float:
        return max(self.samples)


def guarded(name: str, meter: PeakMeter, fn: Any, *a: Any, **kw: Any) -> dict[str, Any]:
    """One contender failing is reported, not fatal: the others still run."""
    print(f"\n=== {name} ===", flush=True)
    meter.sample()
    # The 1-minute load average: above ~2 on this 2-thread machine, something else is running.
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        out = fn(*a, **kw)
    except Exception as exc:  # noqa: BLE001  (a benchmark reports every failure and goes on)
        traceback.print_exc()
        out = {"available": False, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"=== {name}: {json.dumps(_rounded(out))}", flush=True)
    return out


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4) if abs(x) < 100 else round(x, 1)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def ratio(
    a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "tokens_per_s"
) -> float | None:
    """``a[key] / b[key]``, None where either is missing."""
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return a[key] / b[key]


def print_table(results: dict[str, dict[str, Any]], peak: float) -> None:
    print(f"\nbf16 matmul peak (1 thread): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'contender':<22} {'tokens/s':>9} {'MFU':>7} {'steps':>6} {'wall s':>7}  notes")
    for name, r in results.items():
        if not r.get("available", True) or "tokens_per_s" not in r:
            print(
                f"{name:<22} {'-':>9} {'-':>7} {'-':>6} {r.get('wall_s', 0):>7}  {r.get('reason')}"
            )
            continue
        note = r.get("mode", "")
        print(
            f"{name:<22} {r['tokens_per_s']:>9.0f} {r['mfu']:>7.1%} {r['measured_steps']:>6} "
            f"{r['wall_s']:>7}  {note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rows and steps: a smoke run")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=8, help="sequences (or packed rows) per step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-warmup", type=int, default=2, help="TRL steps before timing")
    parser.add_argument("--trl-default-steps", type=int, default=8, help="timed padded steps")
    parser.add_argument("--trl-packed-steps", type=int, default=6, help="timed packed steps")
    parser.add_argument(
        "--trl-packed-micro",
        choices=["1", "batch", "both"],
        default="1",
        help="packed rows per TRL micro-batch: 1 (x batch accumulation) and/or the whole batch",
    )
    parser.add_argument("--trl-grad-checkpointing", action="store_true")
    parser.add_argument(
        "--hf-steps", type=int, default=8, help="hybridft steps (the first log window: warm-up)"
    )
    parser.add_argument("--log-every", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="hybridft with training.compile (TRL stays eager)"
    )
    parser.add_argument("--skip-scaling", action="store_true", help="only the 1-worker contenders")
    parser.add_argument("--workdir", help="keep data, model and runs here (default: a temp dir)")
    args = parser.parse_args()
    if args.trl_warmup < 1:
        parser.error("--trl-warmup: expected at least 1 step (the clock starts at its end)")
    if args.quick:
        args.rows, args.trl_warmup, args.trl_default_steps, args.trl_packed_steps = 600, 1, 2, 2
        args.hf_steps, args.log_every = 3, 1

    torch.set_num_threads(1)
    from hybridft.train.throughput import non_embedding_params

    meter = PeakMeter()
    with tempfile.TemporaryDirectory(prefix="hybridft-train-bench-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rows = heavy_tailed_rows(args.rows, args.seed, lo=20, hi=500, median=100)
        data = work / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        base_dir, tokenizer = build_base(rows, work / "base", args.vocab_size, args.seed)
        from hybridft.model.hf import load_model

        base_model = load_model(base_dir)
        n_params = non_embedding_params(base_model)
        attention = hybridft_attention(base_model, args)
        del base_model
        lengths = length_summary(rows, tokenizer, args.max_len)
        print(
            f"model: {n_params / 1e6:.2f}M non-embedding params, vocab {len(tokenizer)}; "
            f"rows (tokens): {json.dumps(lengths)} ({time.perf_counter() - t0:.0f} s); "
            f"hybridft attention: {attention}",
            flush=True,
        )

        results: dict[str, dict[str, Any]] = {}
        results["trl_default"] = guarded(
            "trl_default", meter, run_trl, "trl_default", base_dir, rows, work, args,
            packed=False, micro=args.batch, accum=1,
        )  # fmt: skip
        results["trl_default"]["mode"] = f"padding, {args.batch} seqs/step"
        micros = {"1": [1], "batch": [args.batch], "both": [1, args.batch]}[args.trl_packed_micro]
        for micro in micros:
            name = f"trl_packed_m{micro}"
            results[name] = guarded(
                name, meter, run_trl, name, base_dir, rows, work, args,
                packed=True, micro=micro, accum=args.batch // micro,
            )  # fmt: skip
            results[name]["mode"] = (
                f"packing=bfd, padding_free, {micro} row(s) x {args.batch // micro} accum"
            )

        hybridft_runs = [("hybridft", 1, 1, "ddp")]
        if not args.skip_scaling:
            hybridft_runs += [
                ("hybridft_2x1_ddp", 2, 1, "ddp"),
                ("hybridft_1x2", 1, 2, "ddp"),
                ("hybridft_2x1_zero2", 2, 1, "zero2"),
            ]
        for name, workers, threads, strategy in hybridft_runs:
            results[name] = guarded(
                name, meter, run_hybridft, f"bench-{workers}x{threads}-{strategy}", base_dir, data,
                work, args, workers=workers, threads=threads, strategy=strategy,
            )  # fmt: skip
            results[name]["mode"] = (
                f"packing, {workers} worker(s) x {threads} thread(s), {strategy}, {attention}"
            )
        meter.sample()

        import ray

        ray.shutdown()

    add_mfu(results, n_params, meter.peak)
    print_table(results, meter.peak)
    summary = summarise(results, meter.peak, n_params, lengths, args)
    print(json.dumps(_rounded(summary)))


def hybridft_attention(model: Any, args: argparse.Namespace) -> str:
    """The attention hybridft's LossModel takes for this model (the workers decide the same way)."""
    from hybridft.train.attention import varlen_supported

    if args.compile:
        return "sdpa block-diagonal mask (compiled layers)"
    if varlen_supported(model.get_decoder()):
        return "varlen attention"
    return "sdpa block-diagonal mask"


def add_mfu(results: dict[str, dict[str, Any]], n_params: int, peak: float) -> None:
    """One peak for every MFU: the best 1-thread sample, times the worker's threads.

    hybridft's own figure (against the peak its worker measured at start-up, with all its threads)
    stays as ``mfu_reported``.
    """
    from hybridft.train.throughput import mfu

    for r in results.values():
        if r.get("tokens_per_s"):
            per_worker = r.get("tokens_per_s_worker", r["tokens_per_s"])
            r["mfu"] = mfu(per_worker, 6 * n_params, peak * r.get("threads", 1))


def summarise(
    results: dict[str, dict[str, Any]],
    peak: float,
    n_params: int,
    lengths: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    packed = {
        k: v for k, v in results.items() if k.startswith("trl_packed") and v.get("tokens_per_s")
    }
    best_name = max(packed, key=lambda k: packed[k]["tokens_per_s"]) if packed else None
    candidates = [results["trl_default"]] + ([packed[best_name]] if best_name else [])
    trl_best = max(candidates, key=lambda r: r.get("tokens_per_s") or 0)
    hyb = results.get("hybridft")
    ratios = {
        "hybridft_over_trl_default": ratio(hyb, results["trl_default"]),
        "hybridft_over_trl_best": ratio(hyb, trl_best),
        "hybridft_mfu": hyb.get("mfu") if hyb else None,
        "two_workers_over_two_threads": ratio(
            results.get("hybridft_2x1_ddp"), results.get("hybridft_1x2")
        ),
        "zero2_over_ddp": ratio(results.get("hybridft_2x1_zero2"), results.get("hybridft_2x1_ddp")),
    }
    met = {k: (None if ratios[k] is None else ratios[k] >= t) for k, t in TARGETS.items()}

    def brief(r: dict[str, Any] | None) -> Any:
        if not r:
            return "not run"
        if not r.get("available", True) or "tokens_per_s" not in r:
            return "not available: " + str(r.get("reason"))
        keys = ("tokens_per_s", "mfu", "mfu_reported", "peak_flops_worker", "mode", "load_avg_1m")
        return {k: r[k] for k in keys if k in r}

    return {
        "benchmark": "train_throughput",
        "quick": args.quick,
        "device": "cpu",
        "dtype": "bf16",
        "non_embedding_params": n_params,
        "bf16_peak_flops_1thread": peak,
        "mfu_note": "6 x non-embedding params x tokens/s per worker / (threads per worker x "
        "bf16_peak_flops_1thread); "
        "mfu_reported: hybridft's own, against the peak its worker measured at start-up",
        "max_len": args.max_len,
        "rows": lengths,
        "contenders": {k: brief(v) for k, v in results.items()},
        "trl_best": best_name if trl_best is not results["trl_default"] else "trl_default",
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": met,
    }


if __name__ == "__main__":
    sys.exit(main())
