"""The MFU peak: best of bursts, measured with the training threads, keyed per (dtype, threads,
device), and never below a window's own rate, so a reported MFU is never above 100%; and the
numerator's FLOPs per token, which follow what is trained (6 per trained weight, 4 per frozen).

Invariants only, no timed assertions: a fake clock stands in for the timer, a fake measurement for
the matmuls (timings on a shared 2-core machine are not repeatable).
"""

from __future__ import annotations

import logging

import pytest
import torch

from hybridft.specs import LoraSpec, TrainingSpec
from hybridft.train import loop, throughput
from hybridft.train.plan import WorkerPlan, WorkerStage
from hybridft.train.throughput import (
    MatmulPeak,
    best_burst_rate,
    measure_matmul_peak,
    mfu,
    non_embedding_params,
    train_flops_per_token,
)


class FakeClock:
    """A clock that each call of the timed function advances by the next scripted duration."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = iter(durations)

    def __call__(self) -> float:
        return self.now

    def call(self) -> None:
        self.now += next(self.durations)


def test_best_burst_rate_is_the_fastest_burst():
    # bursts of 1 s: 4 calls of 0.25 s, 2 of 0.5 s (the "contended" one), 10 of 0.1 s
    clock = FakeClock([0.25] * 4 + [0.5] * 2 + [0.1] * 10)
    rate = best_burst_rate(clock.call, work=3.0, bursts=3, burst_s=1.0, clock=clock)
    assert rate == pytest.approx(3.0 * 10 / 1.0)  # the fastest burst, not the mean (~17)


def test_best_burst_rate_runs_at_least_one_call_per_burst():
    clock = FakeClock([2.0, 4.0])  # each call longer than a burst
    assert best_burst_rate(clock.call, 8.0, bursts=2, burst_s=0.1, clock=clock) == 4.0


def test_best_burst_rate_syncs_around_every_burst():
    events: list[str] = []
    clock = FakeClock([1.0] * 4)

    def call() -> None:
        events.append("call")
        clock.call()

    best_burst_rate(
        call, 1.0, bursts=2, burst_s=1.5, clock=clock, sync=lambda: events.append("sync")
    )
    assert events == ["sync", "call", "call", "sync"] * 2


def test_the_peak_is_measured_with_the_threads_asked_for(monkeypatch):
    seen: list[int] = []

    def fake_rate(*args, **kwargs) -> float:
        seen.append(torch.get_num_threads())
        return 1e9

    monkeypatch.setattr(throughput, "best_burst_rate", fake_rate)
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    assert measure_matmul_peak(torch.float32, size=8, threads=other) == 1e9
    assert seen == [other]
    assert torch.get_num_threads() == before  # the caller's count is back


def test_measure_matmul_peak_on_cpu_is_positive():
    assert measure_matmul_peak(torch.float32, size=32, seconds=0.01, bursts=2) > 0


def test_the_peak_is_cached_per_dtype_threads_and_device(monkeypatch):
    calls: list[tuple] = []

    def fake_measure(dtype, device, threads):
        calls.append((dtype, threads, device))
        return float(len(calls))

    monkeypatch.setattr(loop, "measure_matmul_peak", fake_measure)
    loop.matmul_peak.cache_clear()
    cpu = torch.device("cpu")
    try:
        assert loop.matmul_peak(torch.bfloat16, 1, cpu) == 1.0
        assert loop.matmul_peak(torch.bfloat16, 1, cpu) == 1.0  # measured once
        assert loop.matmul_peak(torch.bfloat16, 2, cpu) == 2.0
        assert loop.matmul_peak(torch.float32, 1, cpu) == 3.0
        assert loop.matmul_peak(torch.bfloat16, 1, torch.device("meta")) == 4.0
    finally:
        loop.matmul_peak.cache_clear()
    assert calls == [
        (torch.bfloat16, 1, cpu),
        (torch.bfloat16, 2, cpu),
        (torch.float32, 1, cpu),
        (torch.bfloat16, 1, torch.device("meta")),
    ]


def test_mfu_is_never_above_one_when_the_peak_was_measured_low():
    peak = MatmulPeak(1e9)  # deliberately low: 6 MFLOP/token (1M params) x 1000 tok/s = 6 GFLOP/s
    assert peak.mfu(1000.0, 6e6) == 1.0
    assert peak.flops == pytest.approx(6e9) and peak.measured == 1e9
    # later windows are against the raised peak: a slower one is below 100%, never above
    assert peak.mfu(500.0, 6e6) == pytest.approx(0.5)
    assert peak.mfu(2000.0, 6e6) == 1.0
    assert peak.flops == pytest.approx(12e9)


def test_a_true_peak_is_left_alone():
    peak = MatmulPeak(12e9)
    assert peak.mfu(1000.0, 6e6) == pytest.approx(0.5)
    assert peak.flops == 12e9


def test_a_raised_peak_is_said_once_at_info(caplog):
    peak = MatmulPeak(1e9)
    with caplog.at_level(logging.INFO, logger=throughput.__name__):
        for tps in (1000.0, 2000.0, 3000.0, 100.0):
            peak.mfu(tps, 6e6)
    assert len(caplog.records) == 1
    assert "raised to 6.0 GFLOP/s" in caplog.records[0].getMessage()


class FakeEngine:
    def lr(self) -> float:
        return 1e-3


def test_the_logged_record_is_against_the_raised_peak():
    """What the user sees (the logged record's mfu and peak_flops_worker) with a peak measured
    too low."""
    window = loop.Window(1)
    window.t0 -= 1.0  # a window of >= 1 s
    window.tokens = 10_000  # <= 10k tokens/s
    stage = WorkerStage("sft", None, ("a",), 4, 1e-3, "constant", 0, 1.0, "full")
    plan = WorkerPlan((stage,), TrainingSpec(log_every=1), LoraSpec(), "ddp", 0, "base")
    peak = MatmulPeak(1.0)  # 1 FLOP/s: any training window beats it
    worker = loop.Worker(plan, rank=0, world=1, device=torch.device("cpu"), peak=peak)
    progress = loop.Progress(state={"tokens": 10_000})
    assert loop.log_step(worker, progress, FakeEngine(), (0, 1), (window, 6_000.0))
    record = progress.history[-1]
    assert record["mfu"] == 1.0
    achieved = 6_000.0 * record["tokens_per_s_worker"]
    assert record["peak_flops_worker"] == pytest.approx(achieved)


# -- FLOPs per token -------------------------------------------------------------------------------
VOCAB, HIDDEN = 64, 16


def tiny_llama(tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def matmul_weights(model: torch.nn.Module, tied: bool) -> int:
    """Non-embedding weights with the LM head once: ``non_embedding_params`` drops a tied one."""
    return non_embedding_params(model) + (VOCAB * HIDDEN if tied else 0)


def test_mfu_is_flops_per_token_times_tokens_per_peak():
    assert mfu(1000.0, 6e6, 12e9) == pytest.approx(0.5)
    assert mfu(1000.0, 6e6, 0.0) == 0.0
    assert MatmulPeak(12e9).mfu(1000.0, 4e6) == pytest.approx(1 / 3)


@pytest.mark.parametrize("tied", [False, True])
def test_full_fine_tuning_counts_six_per_non_embedding_weight(tied):
    model = tiny_llama(tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    n = matmul_weights(model, tied)
    if not tied:
        assert n == non_embedding_params(model)  # untied: the head is already in the count
    assert train_flops_per_token(model) == 6.0 * n


@pytest.mark.parametrize("tied", [False, True])
def test_lora_counts_four_per_frozen_weight_and_six_per_adapter_weight(tied):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(tied)
    frozen = matmul_weights(base, tied)  # before wrapping: the base weights, all to be frozen
    lm = get_peft_model(
        base,
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    adapter = sum(p.numel() for name, p in lm.named_parameters() if "lora_" in name)
    assert adapter > 0
    assert train_flops_per_token(lm) == 4.0 * frozen + 6.0 * adapter
    assert train_flops_per_token(lm) < 6.0 * frozen  # what 6N claimed for the same run


def test_a_frozen_model_counts_four_per_weight():
    model = tiny_llama(tied=True)
    model.requires_grad_(False)
    assert train_flops_per_token(model) == 4.0 * matmul_weights(model, tied=True)


def test_zero3_partitioned_parameters_count_whole():
    model = tiny_llama(tied=False)
    whole = train_flops_per_token(model)
    n = non_embedding_params(model)
    # what ZeRO-3 leaves on a rank: an empty local tensor, the full size in ``ds_numel``
    for p in (model.lm_head.weight, model.model.layers[0].mlp.up_proj.weight):
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert train_flops_per_token(model) == whole
    assert non_embedding_params(model) == n
