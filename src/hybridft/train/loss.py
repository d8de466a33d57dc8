"""The one loss module: completion-only causal-LM loss, normalised by loss tokens of the whole batch.

Every strategy (DDP, DeepSpeed, LoRA, full) trains through ``LossModel``; accumulation, per-source
loss and token counting live here and nowhere else.

Normalisation: each micro-batch contributes ``sum(token losses) / global_loss_tokens * world_size``
where ``global_loss_tokens`` counts loss tokens over every micro-batch of the optimizer step on every
worker. DDP averages gradients over workers, so the step's gradient is exactly that of the mean loss
over all loss tokens of the step: 8 x 1 == 2 x 4 accumulation, and 1 worker == 2 workers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hybridft.train.attention import (
    SEGMENTS_KWARG,
    Segments,
    segments_from_positions,
    varlen_attention,
    varlen_supported,
)


class LossModel(nn.Module):
    """Wraps a causal LM; ``forward`` returns per-token losses of the selected targets only.

    Only positions that carry loss go through the LM head: with completion-only loss most positions
    are prompt, so this skips most of the vocabulary projection. Wrapping (rather than calling the
    inner model directly) keeps DDP's forward hooks in the path.

    Attention: packed rows (position ids restarting at each sample) run on the varlen attention of
    ``attention.py`` (causal attention per sample, no dense block-diagonal mask) whenever the
    model allows it (``varlen_supported``: e.g. a Llama on the default ``sdpa`` implementation);
    ``varlen=False`` keeps transformers' masked path.

    No host sync: the loop passes the segments and the flat indices of the target positions
    (``target_index``) computed on the host; given only ``target_mask``, both are derived here.

    ``loss_chunk``: the LM head and cross-entropy run over chunks of that many target tokens, each
    recomputed in backward (activation checkpointing), so the fp32 logits of only one chunk exist
    at a time (``vocab x chunk x 4`` bytes instead of ``vocab x targets x 4``). Same losses and
    gradients.
    """

    def __init__(self, lm: nn.Module, varlen: bool = True, loss_chunk: int | None = None) -> None:
        super().__init__()
        self.lm: Any = lm  # a transformers causal LM (or a peft wrapper of one)
        self.varlen = varlen
        self.loss_chunk = loss_chunk

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        target_mask: torch.Tensor,
        segments: Segments | None = None,
        target_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        backbone = self.lm.get_decoder() if hasattr(self.lm, "get_decoder") else self.lm.model
        # use_cache=False: with a cache, transformers skips the packed-sequence (block-diagonal) mask
        if self.varlen and varlen_supported(backbone):
            if segments is None:
                segments = segments_from_positions(position_ids)
            with varlen_attention(backbone):
                hidden = backbone(
                    input_ids=input_ids,
                    position_ids=position_ids,
                    use_cache=False,
                    **{SEGMENTS_KWARG: segments},
                ).last_hidden_state
        else:
            hidden = backbone(
                input_ids=input_ids, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        if target_index is None:
            target_index = target_mask.reshape(-1).nonzero().squeeze(1)
        selected = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, target_index)
        targets = input_ids[:, 1:].reshape(-1).index_select(0, target_index)
        head = self.lm.get_output_embeddings()
        chunk = self.loss_chunk
        if not chunk or selected.shape[0] <= chunk:
            return _head_loss(head, selected, targets)
        return torch.cat(
            [
                checkpoint(_head_loss, head, h, t, use_reentrant=False)
                for h, t in zip(selected.split(chunk), targets.split(chunk), strict=True)
            ]
        )


def _head_loss(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of the LM head's fp32 logits."""
    return nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")


def micro_batch_loss(
    token_losses: torch.Tensor, global_loss_tokens: int, world_size: int
) -> torch.Tensor:
    """Scaled loss whose gradient, after DDP's mean over workers, is the step's mean token loss."""
    return token_losses.sum() * (world_size / max(global_loss_tokens, 1))


def per_source_sums(
    token_losses: torch.Tensor, target_sources: torch.Tensor, n_sources: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of loss, number of tokens) per source id, for the realised per-source loss."""
    idx = target_sources.long().clamp(min=0)
    device = token_losses.device
    sums = torch.zeros(n_sources, dtype=torch.float64, device=device).index_add_(
        0, idx, token_losses.detach().double()
    )
    counts = torch.zeros(n_sources, dtype=torch.float64, device=device).index_add_(
        0, idx, torch.ones_like(token_losses, dtype=torch.float64)
    )
    return sums, counts


def unwrap(model: Any) -> nn.Module:
    """The causal LM inside DDP / LossModel wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "lm", inner)
