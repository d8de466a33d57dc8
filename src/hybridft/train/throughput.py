"""Throughput meter: trained tokens/s and MFU against a matmul peak measured on this machine.

MFU = training FLOPs per token x tokens/s / peak FLOP/s. FLOPs per token follow what is trained
(``train_flops_per_token``): 6 per trained non-embedding weight (the usual dense-transformer
estimate: 2 forward, 4 backward), 4 per frozen one, whose weight gradient is never computed. For
LoRA on a 25M-weight base with a 0.2M adapter that is ~4N, not 6N: a 6N count would read ~1.5x
too high (6 x 25 / (4 x 25 + 6 x 0.2)). The peak is measured, not looked up: timed square matmuls
in the training dtype, on the training device, with the worker's own thread count.

Two sweep trials on one 2-core machine printed "MFU 115-123%": each measured its peak while the
other computed, and a low denominator gives an impossible MFU (here, 40 ms bursts of the same bf16
matmul ran at 713 and 1146 GFLOP/s a moment apart). Another process only ever slows a timed burst,
so the peak is the fastest of several short bursts, not one long average; and a training window
that achieves more than the peak proves the peak was measured under load, so the run's peak is
raised to the window's own rate (``MatmulPeak``): MFU <= 100% by construction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def best_burst_rate(
    call: Callable[[], object],
    work: float,
    bursts: int,
    burst_s: float,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> float:
    """The highest rate (``work`` per call, per second) of ``bursts`` timed bursts of ``call``.

    Each burst runs whole calls until ``burst_s`` have passed; ``sync`` waits for queued device
    work at both ends of a burst. The max, not the mean: contention only lowers a burst's rate.
    """
    best = 0.0
    for _ in range(bursts):
        sync()
        n, t0 = 0, clock()
        while n == 0 or clock() - t0 < burst_s:
            call()
            n += 1
        sync()
        best = max(best, work * n / max(clock() - t0, 1e-12))
    return best


def measure_matmul_peak(
    dtype: torch.dtype = torch.bfloat16,
    size: int = 1024,
    seconds: float = 0.3,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    bursts: int = 6,
) -> float:
    """FLOP/s of a square matmul in ``dtype`` on ``device``: the best of ``bursts`` bursts.

    Args:
        dtype: the training dtype (bf16 and fp32 peaks differ several-fold on CPU).
        size: the square's side. bf16 on 1 thread here: 1024 ran at ~1.1 TFLOP/s, 512 ~15%
            slower, 2048 no faster.
        seconds: the whole measurement's time, shared by the bursts.
        device: where the training step runs (CUDA is synchronised around every burst).
        threads: the intra-op threads to measure with (default: the current count, which the
            training step must keep); the caller's count is restored.
        bursts: timed bursts; the fastest counts.

    Returns:
        FLOP/s.
    """
    device = torch.device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, dtype=dtype, device=device)
        b = torch.randn(size, size, dtype=dtype, device=device)
        for _ in range(2):
            a @ b  # warm-up: first calls pick kernels and allocate
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else lambda: None
        return best_burst_rate(lambda: a @ b, 2 * size**3, bursts, seconds / bursts, sync=sync)
    finally:
        torch.set_num_threads(previous)


def _numel(p: torch.nn.Parameter) -> int:
    # DeepSpeed ZeRO-3 partitions parameters in place: numel() is 0 or this rank's shard there
    return int(getattr(p, "ds_numel", p.numel()))


def _weight_of(module: torch.nn.Module | None) -> torch.nn.Parameter | None:
    return getattr(module, "weight", None) if module is not None else None


def non_embedding_params(model: Any) -> int:
    """Parameters excluding the input embeddings (and a tied output head, which shares them)."""
    has_emb = hasattr(model, "get_input_embeddings")
    emb = _weight_of(model.get_input_embeddings() if has_emb else None)
    return sum(_numel(p) for p in model.parameters()) - (_numel(emb) if emb is not None else 0)


def train_flops_per_token(model: Any) -> float:
    """Matmul FLOPs of one trained token through ``model``: 6 per trainable weight, 4 per frozen.

    Counts every parameter but the input embedding table (a lookup, not a matmul); the LM head is
    counted once whether or not it is tied to that table (unlike ``non_embedding_params``, which
    drops a tied head), since its matmul runs either way. Trainable means ``requires_grad``, so a
    peft model counts its frozen base at 4 and its adapter at 6, and a stage's count must be taken
    from the model that stage trains. ZeRO-3 partitioned parameters count whole (``ds_numel``).
    """
    has_emb = hasattr(model, "get_input_embeddings")
    has_head = hasattr(model, "get_output_embeddings")
    emb = _weight_of(model.get_input_embeddings() if has_emb else None)
    head = _weight_of(model.get_output_embeddings() if has_head else None)
    trainable = frozen = 0
    for p in model.parameters():  # a tied weight is yielded once
        if p is emb and p is not head:
            continue
        if p.requires_grad:
            trainable += _numel(p)
        else:
            frozen += _numel(p)
    # forward 2 per weight, activation gradients 2 per weight on the backward path, weight
    # gradients 2 per trainable weight (an embedding lookup is no matmul and is not counted)
    return 6.0 * trainable + 4.0 * frozen


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (``flops_per_token`` x ``tokens_per_s``) / peak."""
    return flops_per_token * tokens_per_s / peak_flops if peak_flops > 0 else 0.0


class MatmulPeak:
    """One run's MFU denominator: the measured peak, raised to any window's rate that beats it.

    Per run, never written back to the process's measured peak: a raise from one run (its peak
    measured under load, or its FLOPs per token overstated) must not lower the next run's MFU in
    the same process.
    """

    def __init__(self, measured: float) -> None:
        self.measured = measured
        self.flops = measured

    def mfu(self, tokens_per_s: float, flops_per_token: float) -> float:
        """MFU of one window (<= 1.0); ``flops`` is then the peak it was reported against."""
        achieved = flops_per_token * tokens_per_s
        if achieved > self.flops:
            # said once per run at INFO; later raises only at DEBUG
            level = logging.INFO if self.flops == self.measured else logging.DEBUG
            log.log(
                level,
                "matmul peak raised to %.1f GFLOP/s, a training window's rate (measured %.1f)",
                achieved / 1e9,
                self.measured / 1e9,
            )
            self.flops = achieved
        return mfu(tokens_per_s, flops_per_token, self.flops)
