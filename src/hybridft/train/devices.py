"""What each device needs from the worker: the process group's backend per device type, the
loop's cross-worker sums, TF32 matmuls on CUDA.

A torch process group maps each device type to a backend. NCCL serves CUDA tensors only: on a
bare ``"nccl"`` group the first collective on a CPU tensor raises "No backend type associated
with device type cpu". A GPU job's group therefore maps CPU tensors to gloo as well: gradients
(CUDA) go through NCCL, the loop's metric sums (a few dozen floats per log step, CPU) through gloo.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def process_group_backend(use_gpu: bool) -> str:
    """``TorchConfig(backend=...)`` for a job (Ray Train passes it to ``init_process_group``)."""
    return "cpu:gloo,cuda:nccl" if use_gpu else "gloo"


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum over workers (a no-op on one worker); a CPU float64 tensor, so counts stay exact."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def allow_tf32_on_cuda(device: torch.device) -> None:
    """fp32 matmuls on CUDA run on TF32 tensor cores (H100: ~495 vs ~67 dense TFLOP/s; inputs
    rounded to a 10-bit mantissa, fp32 accumulation). CPU workers keep exact fp32 matmuls."""
    if device.type == "cuda":
        # not torch.backends.cuda.matmul.fp32_precision = "tf32": set alone, it makes
        # torch.get_float32_matmul_precision() (which inductor calls) raise on torch 2.13
        torch.set_float32_matmul_precision("high")
