"""Packing invariants: no attention across samples, and the loss does not depend on how we pack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridft.model.hf import load_model
from hybridft.train.loss import LossModel, micro_batch_loss
from hybridft.train.packing import best_fit_decreasing, pack_rows, shift_loss_mask


def _samples(n: int, seed: int = 0, vocab: int = 300) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for _ in range(n):
        k = int(rng.integers(5, 40))
        ids.append(rng.integers(5, vocab, size=k).astype(np.int32))
        m = np.zeros(k, dtype=np.int8)
        m[int(rng.integers(1, k - 1)) :] = 1  # a prompt, then a completion
        masks.append(m)
    return ids, masks


def test_best_fit_respects_capacity_and_keeps_every_sample() -> None:
    lengths = [int(x) for x in np.random.default_rng(1).integers(1, 64, size=500)]
    bins = best_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # best-fit decreasing is within 11/9 OPT + 1 bins; the lower bound is total/capacity
    assert len(bins) <= (11 / 9) * (sum(lengths) / 64) + 2


def test_oversized_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([10, 65], 64)


def test_packed_rows_reset_positions_and_never_predict_across_samples() -> None:
    ids, masks = _samples(40)
    rows = pack_rows(ids, masks, [0] * 40, length=128, pad_id=0)
    target = shift_loss_mask(rows.loss_mask, rows.position_ids)
    # every sample start (position 0) is never a loss target, padding never carries loss
    assert not target[rows.position_ids[:, 1:] == 0].any()
    assert not rows.loss_mask[rows.source_ids < 0].any()
    assert int(rows.samples_per_row.sum()) == 40
    # all loss tokens survive packing except each sample's first token (never a target anyway)
    expected = sum(int(m[1:].sum()) for m in masks)
    assert int(target.sum()) == expected


def _token_losses(model: torch.nn.Module, rows, idx: np.ndarray) -> torch.Tensor:
    pos = rows.position_ids[idx]
    return LossModel(model)(
        torch.from_numpy(rows.input_ids[idx].astype(np.int64)),
        torch.from_numpy(pos.astype(np.int64)),
        torch.from_numpy(shift_loss_mask(rows.loss_mask[idx], pos)),
    )


def test_packed_loss_equals_unpacked_loss(tiny_model_dir) -> None:
    """Block-diagonal attention: a sample's loss is the same alone or packed with others."""
    torch.manual_seed(0)
    model = load_model(tiny_model_dir).eval()
    ids, masks = _samples(24, seed=3, vocab=model.config.vocab_size)
    packed = pack_rows(ids, masks, [0] * 24, length=128, pad_id=0, packing=True)
    unpacked = pack_rows(ids, masks, [0] * 24, length=48, pad_id=0, packing=False)
    assert len(packed) < len(unpacked)
    with torch.no_grad():
        a = _token_losses(model, packed, np.arange(len(packed)))
        b = _token_losses(model, unpacked, np.arange(len(unpacked)))
    assert a.numel() == b.numel()
    assert torch.allclose(a.sum() / a.numel(), b.sum() / b.numel(), atol=1e-5, rtol=1e-5)
    # sorted per-token losses agree too (packing only reorders samples)
    assert torch.allclose(a.sort().values, b.sort().values, atol=1e-4)


def test_cross_sample_attention_would_change_the_loss(tiny_model_dir) -> None:
    """The invariant above is not vacuous: with positions not reset, samples do contaminate."""
    model = load_model(tiny_model_dir).eval()
    ids, masks = _samples(24, seed=3, vocab=model.config.vocab_size)
    packed = pack_rows(ids, masks, [0] * 24, length=128, pad_id=0)
    leaky = np.tile(np.arange(128, dtype=np.int32), (len(packed), 1))
    target = torch.from_numpy(shift_loss_mask(packed.loss_mask, packed.position_ids))
    with torch.no_grad():
        lm = LossModel(model)
        good = lm(
            torch.from_numpy(packed.input_ids.astype(np.int64)),
            torch.from_numpy(packed.position_ids.astype(np.int64)),
            target,
        )
        bad = lm(
            torch.from_numpy(packed.input_ids.astype(np.int64)),
            torch.from_numpy(leaky.astype(np.int64)),
            target,
        )
    assert not torch.allclose(good, bad, atol=1e-3)


def test_gradient_accumulation_equivalence(tiny_model_dir) -> None:
    """One step over 8 rows == 4 micro-batches of 2 rows accumulated (fp32)."""
    ids, masks = _samples(60, seed=5)
    rows = pack_rows(ids, masks, [0] * 60, length=64, pad_id=0)
    idx = np.arange(8)
    total = int(shift_loss_mask(rows.loss_mask[idx], rows.position_ids[idx]).sum())

    def grads(split: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = load_model(tiny_model_dir)
        for part in np.array_split(idx, split):
            micro_batch_loss(_token_losses(model, rows, part), total, 1).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for g1, g4 in zip(grads(1), grads(4), strict=True):
        assert torch.allclose(g1, g4, atol=1e-6, rtol=1e-4)


def test_compiled_layers_give_the_same_loss(tiny_model_dir) -> None:
    """training.compile is a speed switch only: the loss it computes is the eager one."""
    from hybridft.train.strategy import compile_layers

    ids, masks = _samples(16, seed=7)
    rows = pack_rows(ids, masks, [0] * 16, length=128, pad_id=0)
    idx = np.arange(len(rows))
    model = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        eager = _token_losses(model, rows, idx)
        compile_layers(model)
        compiled = _token_losses(model, rows, idx)
    assert torch.allclose(eager, compiled, atol=1e-4, rtol=1e-4)
