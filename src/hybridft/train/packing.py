"""Pack rendered samples into fixed token budgets without cross-contamination.

A packed row holds several samples back to back. Each sample's position ids restart at 0, which is
what makes the attention block-diagonal: transformers' mask builder reads a position reset as a
sample boundary (``find_packed_sequence_indices``) and no token attends across it. The tail of a
row is padding: its own segment, no loss.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np


@dataclass
class PackedRows:
    """A stage's training rows, all ``length`` tokens long (``int32``/``int8`` arrays [rows, length])."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    loss_mask: np.ndarray
    source_ids: np.ndarray  # per token: index into the stage's source names; -1 for padding
    samples_per_row: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each summing to <= capacity (best-fit decreasing, O(n log n))."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin index)
    for i in order:
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"sample {i} has {need} tokens, more than the row capacity {capacity}")
        pos = bisect.bisect_left(free, (need, -1))
        if pos < len(free):
            remaining, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (remaining - need, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - need, len(bins) - 1))
    # Keep the original sample order inside a bin (deterministic, and order within a row is free).
    return [sorted(b) for b in bins]


def pack_rows(
    ids: list[np.ndarray],
    masks: list[np.ndarray],
    sources: list[int],
    length: int,
    pad_id: int,
    packing: bool = True,
) -> PackedRows:
    """Pack samples (or, with ``packing=False``, pad each to ``length``) into rows."""
    lengths = [len(x) for x in ids]
    bins = best_fit_decreasing(lengths, length) if packing else [[i] for i in range(len(ids))]
    n = len(bins)
    input_ids = np.full((n, length), pad_id, dtype=np.int32)
    position_ids = np.zeros((n, length), dtype=np.int32)
    loss_mask = np.zeros((n, length), dtype=np.int8)
    source_ids = np.full((n, length), -1, dtype=np.int8)
    per_row = np.zeros(n, dtype=np.int32)
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            k = lengths[i]
            input_ids[r, at : at + k] = ids[i]
            position_ids[r, at : at + k] = np.arange(k)
            loss_mask[r, at : at + k] = masks[i]
            source_ids[r, at : at + k] = sources[i]
            at += k
        position_ids[r, at:] = np.arange(length - at)  # padding: a segment of its own
        per_row[r] = len(members)
    return PackedRows(input_ids, position_ids, loss_mask, source_ids, per_row)


def shift_loss_mask(loss_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    """Mask over *targets*: token t+1 is predicted from t only inside the same sample.

    A target at a sample's first position (position id 0) would be predicted from the previous
    sample's last token: that is cross-contamination, so it never carries loss.
    """
    target = loss_mask[:, 1:].astype(bool) & (position_ids[:, 1:] != 0)
    return target
