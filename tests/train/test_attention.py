"""Varlen attention for packed rows: the same losses and gradients as the block-diagonal mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY

from hybridft.model.hf import load_model
from hybridft.specs import TrainingSpec
from hybridft.train import attention
from hybridft.train import loss as loss_module
from hybridft.train.attention import (
    SEGMENTS_KWARG,
    VARLEN,
    Segments,
    segments_from_positions,
    varlen_attention,
    varlen_supported,
)
from hybridft.train.loss import LossModel
from hybridft.train.packing import pack_rows, shift_loss_mask

# Samples of 1 to 70 tokens in rows of 96: several samples of different lengths per row, a padding
# tail, and (with the query block lowered to 16 below) segments cut into several query blocks.
ROW = 96


def _tiny_lm(kv_heads: int, seed: int = 0, family: str = "llama", **extra) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    prefix = {"llama": "Llama", "qwen3": "Qwen3", "mistral": "Mistral"}[family]
    config = getattr(transformers, f"{prefix}Config")(
        hidden_size=TINY["hidden"],
        num_hidden_layers=TINY["layers"],
        num_attention_heads=TINY["heads"],
        num_key_value_heads=kv_heads,
        intermediate_size=TINY["intermediate"],
        vocab_size=TINY["vocab_size"],
        max_position_embeddings=ROW,
        attn_implementation="sdpa",
        **extra,
    )
    return getattr(transformers, f"{prefix}ForCausalLM")(config)


def _samples(n: int, seed: int, vocab: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids, masks = [], []
    for k in [1, 2, 70, 3, *rng.integers(4, 60, size=n - 4).tolist()]:
        ids.append(rng.integers(5, vocab, size=k).astype(np.int32))
        m = np.zeros(k, dtype=np.int8)
        m[k // 3 :] = 1
        masks.append(m)
    return ids, masks


def _packed(vocab: int, n: int = 16, seed: int = 0):
    ids, masks = _samples(n, seed, vocab)
    rows = pack_rows(ids, masks, [0] * n, length=ROW, pad_id=0)
    assert rows.samples_per_row.max() >= 3  # the test needs rows with several samples
    return (
        torch.from_numpy(rows.input_ids.astype(np.int64)),
        torch.from_numpy(rows.position_ids.astype(np.int64)),
        torch.from_numpy(shift_loss_mask(rows.loss_mask, rows.position_ids)),
    )


class _Spy:
    """Counts calls of a wrapped function."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.fn(*a, **kw)


@pytest.fixture
def spies(monkeypatch):
    """Spies on the CPU segment kernel and on transformers' sdpa mask builder."""
    from transformers.masking_utils import AttentionMaskInterface

    monkeypatch.setattr(attention, "CPU_QUERY_BLOCK", 16)
    kernel = _Spy(attention.SEGMENT_KERNELS["cpu"])
    monkeypatch.setitem(attention.SEGMENT_KERNELS, "cpu", kernel)
    mask = _Spy(AttentionMaskInterface._global_mapping["sdpa"])
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, "sdpa", mask)
    return kernel, mask


def _losses_and_grads(lm, varlen: bool, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    lm.zero_grad(set_to_none=True)
    losses = LossModel(lm, varlen=varlen)(*batch)
    losses.sum().backward()
    return losses.detach(), [p.grad.clone() for p in lm.parameters()]


def test_segments_follow_position_resets_and_rows() -> None:
    pos = torch.tensor(
        [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7], [3, 4, 0, 1, 2, 3, 0, 1]]
    )
    assert segments_from_positions(pos).rows == ((3, 2, 1, 2), (8,), (2, 4, 2))
    assert segments_from_positions(pos).count == 8


@pytest.mark.parametrize("kernel", ["matmul", "sdpa"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_varlen_equals_block_diagonal_mask(spies, monkeypatch, kv_heads: int, kernel: str) -> None:
    """Per-token losses and every gradient match transformers' masked sdpa path (fp32)."""
    kernel_spy, mask_spy = spies
    if kernel == "sdpa":  # the fused per-segment kernel used off CPU, run here on CPU
        monkeypatch.delitem(attention.SEGMENT_KERNELS, "cpu")
    lm = _tiny_lm(kv_heads)
    batch = _packed(lm.config.vocab_size)
    ref, ref_grads = _losses_and_grads(lm, False, batch)
    assert mask_spy.calls == 1 and kernel_spy.calls == 0  # the reference built its dense mask
    out, grads = _losses_and_grads(lm, True, batch)
    assert mask_spy.calls == 1  # the varlen path built no mask at all
    if kernel == "matmul":
        assert kernel_spy.calls > 0
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    for (name, _), g, r in zip(lm.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4, msg=name)
    assert lm.config._attn_implementation == "sdpa"  # switched for the forward only


@pytest.mark.parametrize("family", ["qwen3", "mistral"])
def test_varlen_equals_block_diagonal_mask_other_families(spies, family: str) -> None:
    lm = _tiny_lm(2, family=family, sliding_window=None)
    batch = _packed(lm.config.vocab_size)
    ref, ref_grads = _losses_and_grads(lm, False, batch)
    out, grads = _losses_and_grads(lm, True, batch)
    assert spies[0].calls > 0 and spies[1].calls == 1
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_leaky_segments_change_the_loss(spies, monkeypatch) -> None:
    """Not vacuous: the same kernel with each row as one segment (samples see each other) differs."""
    lm = _tiny_lm(2)
    batch = _packed(lm.config.vocab_size)
    with torch.no_grad():
        good = LossModel(lm)(*batch)

        def whole_rows(position_ids: torch.Tensor) -> Segments:
            rows, length = position_ids.shape
            return Segments(((length,),) * rows)

        monkeypatch.setattr(loss_module, "segments_from_positions", whole_rows)
        leaky = LossModel(lm)(*batch)
    assert spies[0].calls > 0
    assert not torch.allclose(good, leaky, atol=1e-3)


def _token_losses(model: torch.nn.Module, rows, idx: np.ndarray) -> torch.Tensor:
    pos = rows.position_ids[idx]
    return LossModel(model)(
        torch.from_numpy(rows.input_ids[idx].astype(np.int64)),
        torch.from_numpy(pos.astype(np.int64)),
        torch.from_numpy(shift_loss_mask(rows.loss_mask[idx], pos)),
    )


def test_packed_loss_equals_unpacked_loss_with_varlen(tiny_model_dir, spies) -> None:
    """A sample's loss is the same alone or packed with others (GQA tiny model, varlen path)."""
    model = load_model(tiny_model_dir).eval()
    assert varlen_supported(model.get_decoder())
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids, masks = _samples(24, seed=3, vocab=model.config.vocab_size)
    packed = pack_rows(ids, masks, [0] * 24, length=128, pad_id=0, packing=True)
    unpacked = pack_rows(ids, masks, [0] * 24, length=72, pad_id=0, packing=False)
    assert len(packed) < len(unpacked)
    with torch.no_grad():
        a = _token_losses(model, packed, np.arange(len(packed)))
        b = _token_losses(model, unpacked, np.arange(len(unpacked)))
    assert spies[0].calls > 0 and spies[1].calls == 0
    assert a.numel() == b.numel()
    assert torch.allclose(a.sum() / a.numel(), b.sum() / b.numel(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(a.sort().values, b.sort().values, atol=1e-4)


def test_bf16_autocast_close_to_the_masked_path_and_backward_runs(spies) -> None:
    lm = _tiny_lm(2)
    batch = _packed(lm.config.vocab_size)
    results = []
    for varlen in (False, True):
        lm.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = LossModel(lm, varlen=varlen)(*batch)
        losses.sum().backward()
        grad = torch.cat([p.grad.flatten() for p in lm.parameters()])
        results.append((losses.detach(), grad))
    (ref, ref_grad), (out, grad) = results
    assert spies[0].calls > 0
    assert out.dtype == torch.float32 and torch.isfinite(grad).all()
    assert torch.allclose(out, ref, atol=0.05, rtol=0.02)
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.99


def test_fallbacks_keep_the_configured_attention() -> None:
    lm = _tiny_lm(2)
    decoder = lm.get_decoder()
    assert varlen_supported(decoder)
    lm.activation_checkpointing_enable()
    assert not varlen_supported(decoder)  # recomputation would run after the switch is undone
    lm.activation_checkpointing_disable()
    lm.config._attn_implementation = "eager"
    assert not varlen_supported(decoder)
    lm.config._attn_implementation = "sdpa"
    decoder.layers[0].compile()
    assert not varlen_supported(decoder)
    # a sliding window is not implemented: such a model keeps its masked sdpa path
    assert not varlen_supported(_tiny_lm(2, family="mistral", sliding_window=16).get_decoder())


def test_varlen_needs_segments_and_restores_the_config() -> None:
    lm = _tiny_lm(2)
    decoder = lm.get_decoder()
    ids = torch.randint(5, 100, (2, 8))
    with pytest.raises(ValueError, match="needs the segment lengths"), varlen_attention(decoder):
        assert lm.config._attn_implementation == VARLEN
        decoder(input_ids=ids, use_cache=False)
    assert lm.config._attn_implementation == "sdpa"
    with varlen_attention(decoder):
        hidden = decoder(
            input_ids=ids, use_cache=False, **{SEGMENTS_KWARG: Segments(((8,), (8,)))}
        ).last_hidden_state
    torch.testing.assert_close(hidden, decoder(input_ids=ids, use_cache=False).last_hidden_state)


def test_saved_model_and_generation_keep_default_attention(tmp_path) -> None:
    lm = _tiny_lm(2)
    batch = _packed(lm.config.vocab_size)
    LossModel(lm)(*batch).sum().backward()
    lm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert VARLEN not in json.dumps(saved) and "attn_implementation" not in json.dumps(saved)
    reloaded = load_model(tmp_path)
    assert reloaded.config._attn_implementation == "sdpa"
    out = lm.eval().generate(batch[0][:1, :5], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 8)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size, enable_gqa):
    """``torch.nn.attention.varlen.varlen_attn``'s contract on CPU (flash is CUDA-only): causal
    attention of each ``cu_seqlens`` span of the flat ``[T, H, D]`` tensors."""
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    outs = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))  # [H, l, D]
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, scale=scale, is_causal=True, enable_gqa=enable_gqa
            ).transpose(0, 1)
        )
    return torch.cat(outs)


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_the_one_call_varlen_route_equals_the_block_diagonal_mask(spies, monkeypatch, kv_heads):
    """The CUDA route (rows flattened, ``cu_seqlens``, GQA, one kernel call per layer), run here
    with a CPU kernel of the same contract: the same losses and gradients as the masked path."""
    kernel_spy, _ = spies
    calls = _Spy(_reference_varlen)
    monkeypatch.setitem(
        attention.PACKED_KERNELS, "cpu", (lambda: calls, frozenset({torch.float32}))
    )
    lm = _tiny_lm(kv_heads)
    batch = _packed(lm.config.vocab_size)
    ref, ref_grads = _losses_and_grads(lm, False, batch)
    out, grads = _losses_and_grads(lm, True, batch)
    assert calls.calls == lm.config.num_hidden_layers  # one call per layer, whole batch
    assert kernel_spy.calls == 0  # no per-segment loop
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    for (name, _), g, r in zip(lm.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4, msg=name)


def test_the_varlen_kernel_is_taken_only_for_its_dtypes(spies, monkeypatch) -> None:
    """flash takes half types only: an fp32 forward keeps the per-segment kernel."""
    calls = _Spy(_reference_varlen)
    monkeypatch.setitem(
        attention.PACKED_KERNELS, "cpu", (lambda: calls, frozenset({torch.float16}))
    )
    lm = _tiny_lm(2)
    with torch.no_grad():
        LossModel(lm)(*_packed(lm.config.vocab_size))
    assert calls.calls == 0 and spies[0].calls > 0


def test_host_segments_match_the_tensor_rule_and_carry_cu_seqlens() -> None:
    pos = np.array([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7], [3, 4, 0, 1, 2, 3, 0, 1]])
    seg = attention.segments_from_numpy(pos)
    assert seg == segments_from_positions(torch.from_numpy(pos))
    assert seg.rows == ((3, 2, 1, 2), (8,), (2, 4, 2))
    assert seg.cu_seqlens.tolist() == [0, 3, 5, 6, 8, 16, 18, 22, 24]
    assert seg.cu_seqlens.dtype == torch.int32 and seg.max_len == 8


def test_the_chunked_loss_equals_the_whole_loss(spies) -> None:
    """``loss_chunk``: the same per-token losses and gradients (logits one chunk at a time)."""
    lm = _tiny_lm(2)
    batch = _packed(lm.config.vocab_size)
    results = []
    for chunk in (None, 7):
        lm.zero_grad(set_to_none=True)
        losses = LossModel(lm, loss_chunk=chunk)(*batch)
        losses.sum().backward()
        results.append((losses.detach(), [p.grad.clone() for p in lm.parameters()]))
    (ref, ref_grads), (out, grads) = results
    assert ref.numel() > 7 * 3  # several chunks
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    """``training.gradient_checkpointing``: recomputed layers (masked path), same gradients."""
    from hybridft.train.strategy import loss_model

    lm = _tiny_lm(2)
    batch = _packed(lm.config.vocab_size)
    ref, ref_grads = _losses_and_grads(lm, False, batch)
    module = loss_model(lm, TrainingSpec(gradient_checkpointing=True))
    assert all(layer.gradient_checkpointing for layer in lm.get_decoder().layers)
    lm.zero_grad(set_to_none=True)
    module(*batch).sum().backward()
    for g, r in zip([p.grad for p in lm.parameters()], ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
