"""Throughput meter: trained tokens/s and MFU against a matmul peak measured on this machine.

MFU = 6 x non-embedding parameters x tokens/s / peak FLOP/s (the usual dense-transformer estimate:
2 FLOPs per parameter forward, 4 backward). The peak is measured, not looked up: a short timed
square matmul in the training dtype, with the worker's own thread count, at start-up.
"""

from __future__ import annotations

import time

import torch


def measure_matmul_peak(
    dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.3
) -> float:
    """FLOP/s of a square matmul in ``dtype`` on the current device and thread count.

    2048 and up: smaller squares understate the peak of a multi-threaded worker.
    """
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b  # warm-up: first calls pick kernels and allocate
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters excluding the input embeddings (and a tied output head, which shares them)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return total - (emb.weight.numel() if emb is not None else 0)


def mfu(tokens_per_s: float, n_params: int, peak_flops: float) -> float:
    return 6.0 * n_params * tokens_per_s / peak_flops if peak_flops > 0 else 0.0
