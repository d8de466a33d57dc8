"""Varlen attention for packed rows: causal attention per sample, no dense block-diagonal mask.

A packed row holds several samples back to back, each with position ids restarting at 0. With the
default ``sdpa`` implementation transformers turns that into a dense ``[rows, 1, L, L]``
block-diagonal mask, and SDPA then computes every query against every key of the row (the masked
blocks included) and cannot take its causal fast path. Here the row is cut at the sample
boundaries instead and each sample attends causally to itself only: the same result, with only
the lower triangle of each sample's own block computed. On CUDA (bf16/fp16) the whole batch is one
call per layer of torch's flash-attention varlen kernel (``torch.nn.attention.varlen``: the rows
flattened, ``cu_seqlens`` at the sample starts, GQA native). On CPU a sample runs through plain
matmuls in query blocks (``_segment_matmul``: the fused CPU SDPA kernels are slow on the short
sequences of a packed row); elsewhere through SDPA with ``is_causal=True``, one call per sample.

No host sync in the step: the segment lengths and ``cu_seqlens`` come from the packed rows' host
(numpy) position ids (``segments_from_numpy``), and only ``cu_seqlens`` is copied to the device.

How it plugs into transformers: ``varlen_attention_forward`` is registered in the
``AttentionInterface`` under ``VARLEN``; ``LossModel`` switches the model config's
``_attn_implementation`` to it for the duration of its forward only (``varlen_attention``) and
passes the segment lengths as the ``varlen_segments`` kwarg, which transformers forwards from the
backbone call down to every attention call. ``VARLEN`` is deliberately *not* registered in the
``AttentionMaskInterface``: for an implementation without a mask function, ``create_causal_mask``
returns ``None`` before building anything. The saved ``config.json`` never holds the
implementation (transformers does not serialise it), and generation, evaluation and serving keep
the default attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

VARLEN = "hybridft_varlen"
SEGMENTS_KWARG = "varlen_segments"
# Architectures whose attention is plain causal softmax attention called with (query, key, value,
# mask, dropout, scaling): no logit soft-capping, attention sinks or position bias.
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass(frozen=True)
class Segments:
    """Lengths of the consecutive segments of every row, in order (they sum to the row length).

    ``cu_seqlens``: the segment starts over the flattened rows plus the total (int32, on the
    model's device), what a varlen kernel takes; ``max_len``: the longest segment.
    """

    rows: tuple[tuple[int, ...], ...]
    cu_seqlens: torch.Tensor | None = field(default=None, compare=False, repr=False)
    max_len: int = 0

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows)


def segments_from_numpy(position_ids: np.ndarray, device: torch.device | str = "cpu") -> Segments:
    """Segments of each row of a ``[rows, L]`` position-id batch, from host memory.

    A segment starts wherever the position does not continue the previous one (``p[t] != p[t-1] +
    1``), the same rule as transformers' ``find_packed_sequence_indices``, and at every row start:
    a segment never spans two rows.
    """
    pos = np.asarray(position_ids)
    if pos.ndim != 2:
        raise ValueError(f"expected [rows, length] position ids, got shape {tuple(pos.shape)}")
    starts = np.ones(pos.shape, dtype=bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    cu = np.append(np.flatnonzero(starts), pos.size)
    lengths = np.diff(cu)
    per_row = np.split(lengths, np.cumsum(starts.sum(axis=1))[:-1])
    cu_t = torch.from_numpy(cu.astype(np.int32))
    if torch.device(device).type == "cuda":
        cu_t = cu_t.pin_memory().to(device, non_blocking=True)
    return Segments(
        tuple(tuple(int(x) for x in row) for row in per_row),
        cu_seqlens=cu_t.to(device),
        max_len=int(lengths.max()) if lengths.size else 0,
    )


def segments_from_positions(position_ids: torch.Tensor) -> Segments:
    """``segments_from_numpy`` of a tensor (one host copy; the loop passes host segments)."""
    if position_ids.dim() != 2:
        raise ValueError(
            f"expected [rows, length] position ids, got shape {tuple(position_ids.shape)}"
        )
    return segments_from_numpy(position_ids.detach().cpu().numpy(), position_ids.device)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[heads_kv, L, D] -> [heads_kv * n_rep, L, D]; head h reads key/value head h // n_rep."""
    if n_rep == 1:
        return x
    h, length, d = x.shape
    return x[:, None].expand(h, n_rep, length, d).reshape(h * n_rep, length, d)


# Query block of the CPU kernel: a segment longer than this is cut into query blocks that each
# read only the keys up to their own end, so about half of a long segment's square is skipped.
# 256 measured best on the benchmark's rows (64 and 128: more, smaller matmuls; 512: more waste).
CPU_QUERY_BLOCK = 256

_BIAS: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _causal_bias(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """[rows, cols] additive fp32 mask for the last ``rows`` queries of ``cols`` keys (cached)."""
    bias = _BIAS.get((rows, cols, device))
    if bias is None:
        bias = torch.full((rows, cols), float("-inf"), device=device).triu(cols - rows + 1)
        if len(_BIAS) < 4096:
            _BIAS[(rows, cols, device)] = bias
    return bias


def _segment_matmul(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of one segment ([H, l, D] each) with plain matmuls, in query blocks.

    On CPU the matmuls (oneDNN) run close to the machine's peak, while the fused SDPA kernels
    are several times slower on short sequences. Scores are added to an fp32 causal bias and the
    softmax runs in fp32, as transformers' eager attention does.
    """
    block = CPU_QUERY_BLOCK
    q = q * scale
    outs = []
    for start, qb in zip(range(0, q.shape[1], block), q.split(block, dim=1), strict=True):
        end = start + qb.shape[1]
        kb, vb = k[:, :end], v[:, :end]
        scores = torch.bmm(qb, kb.transpose(1, 2)) + _causal_bias(qb.shape[1], end, q.device)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(vb.dtype)
        outs.append(torch.bmm(probs, vb))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _segment_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one segment with the fused SDPA kernel (the choice off CPU)."""
    return nn.functional.scaled_dot_product_attention(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), scale=scale, is_causal=q.shape[1] > 1
    )[0]


# Per-segment kernel by device type; any other device uses the fused SDPA kernel.
SEGMENT_KERNELS = {"cpu": _segment_matmul}

# A varlen kernel with the contract of torch.nn.attention.varlen.varlen_attn: (q, k, v [T, H, D],
# cu_seq_q, cu_seq_k, max_q, max_k, *, scale, window_size, enable_gqa) -> [T, H, D].
VarlenKernel = Callable[..., torch.Tensor]


def _torch_varlen_kernel() -> VarlenKernel | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # an older torch: the per-segment SDPA loop
        return None
    return cast(VarlenKernel, varlen_attn)  # without return_aux it returns the output alone


# Whole-batch varlen kernels by device type, with the dtypes each takes (flash: half types only).
PACKED_KERNELS: dict[str, tuple[Callable[[], VarlenKernel | None], frozenset[torch.dtype]]] = {
    "cuda": (_torch_varlen_kernel, frozenset({torch.bfloat16, torch.float16})),
}


def _packed_varlen(
    kernel: VarlenKernel,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    scale: float,
) -> torch.Tensor:
    """One varlen call for the whole batch: ``[B, H, L, D]`` in, ``[B, L, H, D]`` out."""
    b, h, length, d = query.shape

    def flat(x: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [B * L, H, D]
        return x.transpose(1, 2).reshape(b * length, x.shape[1], d)

    out = kernel(
        flat(query),
        flat(key),
        flat(value),
        segments.cu_seqlens,
        segments.cu_seqlens,
        segments.max_len,
        segments.max_len,
        scale=scale,
        window_size=(-1, 0),  # causal
        enable_gqa=key.shape[1] != h,
    )
    return out.reshape(b, length, h, d)


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each segment of each row (transformers' attention signature).

    ``query`` is ``[B, H, L, D]``, ``key``/``value`` ``[B, H_kv, L, D]``; returns ``[B, L, H, D]``
    like the ``sdpa`` implementation. Splits and concatenations (not indexing or in-place writes)
    keep the backward to one gather per row.
    """
    segments = kwargs.get(SEGMENTS_KWARG)
    if not isinstance(segments, Segments):
        raise ValueError(
            f"attention '{VARLEN}' needs the segment lengths: pass {SEGMENTS_KWARG}=Segments(...) "
            "to the model call (hybridft.train.loss.LossModel does)"
        )
    if attention_mask is not None:
        raise ValueError(f"attention '{VARLEN}' takes no mask: segments replace it")
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"attention '{VARLEN}' is for training only (no cache)")
    if len(segments.rows) != query.shape[0]:
        raise ValueError(f"{len(segments.rows)} rows of segments for a batch of {query.shape[0]}")
    if dropout > 0.0:
        raise ValueError(f"attention '{VARLEN}' has no attention dropout")
    unsupported = [k for k in ("sliding_window", "softcap", "s_aux") if kwargs.get(k) is not None]
    if unsupported:
        raise ValueError(f"attention '{VARLEN}' does not implement {', '.join(unsupported)}")
    device = query.device.type
    # One dtype for the three, cast once here rather than once per segment: under autocast the
    # autocast dtype (rotary embeddings can hand over fp32 queries/keys with bf16 values).
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else value.dtype
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    packed, dtypes = PACKED_KERNELS.get(device, (lambda: None, frozenset()))
    kernel = packed() if dtype in dtypes and segments.cu_seqlens is not None else None
    if kernel is not None:
        return _packed_varlen(kernel, query, key, value, segments, scale), None
    segment_attention = SEGMENT_KERNELS.get(device, _segment_sdpa)
    n_rep = query.shape[1] // key.shape[1]
    rows_out = []
    for q, k, v, lengths in zip(
        query.unbind(0), key.unbind(0), value.unbind(0), segments.rows, strict=True
    ):
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
        outs = [
            segment_attention(qs, ks, vs, scale)
            for qs, ks, vs in zip(
                q.split(lengths, dim=1),
                k.split(lengths, dim=1),
                v.split(lengths, dim=1),
                strict=True,
            )
        ]
        rows_out.append(torch.cat(outs, dim=1).transpose(0, 1))  # [L, H, D]
    return torch.stack(rows_out), None


def register() -> None:
    """Register ``VARLEN`` in transformers' attention interface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)


def varlen_supported(backbone: Any) -> bool:
    """Whether a forward of ``backbone`` (a transformers decoder) can take the varlen path.

    Only a model of ``MODEL_TYPES`` without a sliding window, on the default ``sdpa``
    implementation, switches (flash-attention kernels read packed position ids themselves; eager
    is chosen on purpose). Compiled decoder layers would
    recompile for every new set of segment lengths, and gradient checkpointing would re-run the
    attention in backward, after the switch is undone: both keep ``sdpa``, as does a model with
    attention dropout (not implemented here).
    """
    config = getattr(backbone, "config", None)
    layers = getattr(backbone, "layers", None)
    if config is None or layers is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) is not None or getattr(
        config, "attention_dropout", False
    ):
        return False
    return not any(
        getattr(layer, "_compiled_call_impl", None) is not None
        or getattr(layer, "gradient_checkpointing", False)
        for layer in layers
    )


@contextlib.contextmanager
def varlen_attention(backbone: Any) -> Iterator[None]:
    """Run ``backbone``'s forward on ``VARLEN`` attention; the config's own setting comes back."""
    register()
    config = backbone.config
    previous = config._attn_implementation
    config._attn_implementation = VARLEN
    try:
        yield
    finally:
        config._attn_implementation = previous
