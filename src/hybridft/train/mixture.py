"""Turn a stage's requested mixture into packed rows, and report the mixture it really got.

The realised mixture is what users of other tools never see: after sampling, packing and trimming
to the budget, how many examples and tokens each source actually contributed, next to the weight
that was asked for.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hybridft.train.packing import PackedRows, pack_rows


@dataclass
class RenderedSource:
    """A source's samples, rendered and truncated once: token ids and loss masks."""

    name: str
    ids: list[np.ndarray]
    masks: list[np.ndarray]
    fingerprint: str = ""
    truncated: int = 0

    @property
    def mean_tokens(self) -> float:
        return float(np.mean([len(x) for x in self.ids])) if self.ids else 0.0


@dataclass
class StagePlan:
    """What a stage trains on: packed rows plus its realised mixture report."""

    rows: PackedRows
    sources: list[str]
    realised: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int = 0


def _cycle(n: int, rng: random.Random) -> Iterator[int]:
    """Endless epochs over 0..n-1, each freshly shuffled."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def _split_counts(shares: list[float], total: int) -> list[int]:
    """Largest-remainder split of ``total`` draws by ``shares``."""
    raw = [s * total for s in shares]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_stage(
    sources: list[RenderedSource],
    weights: list[float],
    mix_by: str,
    *,
    length: int,
    pad_id: int,
    rows_per_step: int,
    steps: int | None,
    tokens: int | None,
    seed: int,
    packing: bool = True,
    chunk: int = 2048,
) -> StagePlan:
    """Draw examples by the requested weights, pack them, and trim to whole optimizer steps.

    Args:
        sources: rendered samples per source, in the stage's mix order.
        weights: requested weights (any positive scale), one per source.
        mix_by: "examples" (weights are shares of examples) or "tokens" (shares of tokens).
        length: row length in tokens.
        pad_id: padding token id.
        rows_per_step: rows one optimizer step consumes (workers x batch x accumulation).
        steps: the budget in optimizer steps, or None when ``tokens`` is given.
        tokens: the budget in trained (non-pad) tokens.
        seed: sampling seed.
        packing: pack several samples per row (else one sample per row, padded).
        chunk: examples drawn and packed together.
    """
    rng = random.Random(seed)
    active = [i for i, w in enumerate(weights) if w > 0 and sources[i].ids]
    total_w = sum(weights[i] for i in active)
    shares = [weights[i] / total_w for i in active]
    if mix_by == "tokens":  # draw counts so that expected tokens follow the shares
        per_ex = [shares[k] / max(sources[i].mean_tokens, 1.0) for k, i in enumerate(active)]
        shares = [x / sum(per_ex) for x in per_ex]
    iters = {i: _cycle(len(sources[i].ids), random.Random(rng.random())) for i in active}

    chunks: list[PackedRows] = []
    n_rows, n_tokens = 0, 0
    target_rows = steps * rows_per_step if steps else None
    while (target_rows is not None and n_rows < target_rows) or (
        tokens is not None and n_tokens < tokens
    ):
        ids, masks, src = [], [], []
        for k, count in enumerate(_split_counts(shares, chunk)):
            i = active[k]
            for _ in range(count):
                j = next(iters[i])
                ids.append(sources[i].ids[j])
                masks.append(sources[i].masks[j])
                src.append(i)
        order = list(range(len(ids)))
        rng.shuffle(order)
        packed = pack_rows(
            [ids[o] for o in order],
            [masks[o] for o in order],
            [src[o] for o in order],
            length,
            pad_id,
            packing,
        )
        perm = np.array(rng.sample(range(len(packed)), len(packed)))
        packed = _take(packed, perm)
        chunks.append(packed)
        n_rows += len(packed)
        n_tokens += int((packed.source_ids >= 0).sum())
    rows = _concat(chunks)
    if target_rows is None:  # token budget: the first rows reaching it, rounded up to whole steps
        cum = np.cumsum((rows.source_ids >= 0).sum(axis=1))
        assert tokens is not None  # a budget is steps or tokens (specs)
        need = int(np.searchsorted(cum, tokens)) + 1
        target_rows = -(-need // rows_per_step) * rows_per_step
        if target_rows > len(rows):  # rare: top up by repeating the plan's first rows
            rows = _concat([rows, _take(rows, np.arange(target_rows - len(rows)))])
    rows = _take(rows, np.arange(target_rows))
    names = [s.name for s in sources]
    plan = StagePlan(rows=rows, sources=names, steps=target_rows // rows_per_step)
    plan.realised = realised_mixture(rows, names, weights, mix_by)
    return plan


def realised_mixture(
    rows: PackedRows, names: list[str], weights: list[float], mix_by: str
) -> dict[str, dict[str, float]]:
    """Per source: requested share, examples, tokens and loss tokens actually trained, and shares."""
    total_w = sum(weights) or 1.0
    out: dict[str, dict[str, float]] = {}
    starts = rows.position_ids == 0
    real = rows.source_ids >= 0
    tok_total = int(real.sum()) or 1
    ex_total = int((starts & real).sum()) or 1
    for i, name in enumerate(names):
        here = rows.source_ids == i
        examples = int((starts & here).sum())
        toks = int(here.sum())
        out[name] = {
            "requested_share": weights[i] / total_w,
            "examples": examples,
            "tokens": toks,
            "loss_tokens": int((here & (rows.loss_mask > 0)).sum()),
            "example_share": examples / ex_total,
            "token_share": toks / tok_total,
        }
        out[name]["realised_share"] = out[name][
            "token_share" if mix_by == "tokens" else "example_share"
        ]
    return out


def _take(rows: PackedRows, idx: np.ndarray) -> PackedRows:
    return PackedRows(
        rows.input_ids[idx],
        rows.position_ids[idx],
        rows.loss_mask[idx],
        rows.source_ids[idx],
        rows.samples_per_row[idx],
    )


def _concat(parts: list[PackedRows]) -> PackedRows:
    return PackedRows(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in PackedRows.__dataclass_fields__)
    )
