"""A step's rows as device tensors, and the sums a log line reads.

Everything that decides a shape (segments, target positions, token counts) is computed from the
host rows here: the step never waits on the device to learn one, and the loss sums stay on the
device until a log line reads them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from hybridft.train.attention import segments_from_numpy
from hybridft.train.loss import per_source_sums
from hybridft.train.packing import PackedRows, shift_loss_mask


def step_rows(step: int, rank: int, world: int, per_worker: int) -> np.ndarray:
    """Row indices this worker trains at ``step``: an interleaved share of the step's rows."""
    return step * per_worker * world + rank + world * np.arange(per_worker)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``; to a GPU from pinned memory, without waiting for the copy."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def micro_batches(
    rows: PackedRows, idx: np.ndarray, batch: int, device: torch.device
) -> list[dict[str, Any]]:
    """The step's micro-batches on ``device``. Everything that decides a shape (segments, target
    positions, token counts) is computed here from the host rows: the step never waits on the
    device to learn one."""
    out = []
    for k in range(0, len(idx), batch):
        sel = idx[k : k + batch]
        pos = rows.position_ids[sel]
        target = shift_loss_mask(rows.loss_mask[sel], pos)
        out.append(
            {
                "inputs": {
                    "input_ids": _to_device(rows.input_ids[sel].astype(np.int64), device),
                    "position_ids": _to_device(pos.astype(np.int64), device),
                    "target_mask": _to_device(target, device),
                    "segments": segments_from_numpy(pos, device),
                    "target_index": _to_device(np.flatnonzero(target).astype(np.int64), device),
                },
                "target_sources": _to_device(rows.source_ids[sel][:, 1:][target], device),
                "real_tokens": int((rows.source_ids[sel] >= 0).sum()),
            }
        )
    return out


class Window:
    """Sums over the steps since the last log line. The loss sums stay on the device until the
    log line reads them (``totals``): no host sync per micro-batch."""

    def __init__(self, n_sources: int, device: torch.device | str = "cpu") -> None:
        self.loss_tokens = 0
        self.tokens = 0
        self.src = torch.zeros(2, n_sources, dtype=torch.float64, device=device)
        self.t0 = time.perf_counter()

    def add(self, token_losses: torch.Tensor, mb: dict[str, Any]) -> None:
        self.loss_tokens += token_losses.numel()  # a shape: known without a sync
        self.tokens += mb["real_tokens"]
        s, c = per_source_sums(token_losses, mb["target_sources"], self.src.shape[1])
        self.src[0] += s
        self.src[1] += c

    @property
    def loss(self) -> float:
        return float(self.src[0].sum())
