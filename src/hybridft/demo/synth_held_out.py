"""Held-out splits the leakage shield certifies clean: the demo generator's decontamination.

Templated text makes near-duplicates common, so each SFT task draws extra held-out candidates;
this keeps, in draw order, those that no rule of ``hybridft.evaluate.leakage`` flags against any
train row of any task.
"""

from __future__ import annotations

import random
from typing import Any

from hybridft.demo.synth_sft import SftDraft
from hybridft.errors import UserError

Row = dict[str, Any]


def decontaminated_held_out(
    draws: dict[str, tuple[list[SftDraft], random.Random]],
    sizes: tuple[int, int, int],
    train_rows: list[Row],
) -> dict[str, dict[str, list[SftDraft]]]:
    """Each SFT task's validation and test drafts, taken from its clean held-out candidates.

    One leakage-shield pass compares every task's held-out candidates with all train rows as
    written (SFT with label noise, and instruction); candidates keep their draw order, so the
    result depends only on the seed.
    """
    # heavy: the leakage shield brings numpy; `hybridft data synth` (``import
    # hybridft.demo.synth``) stays free of it (test_import_stays_light)
    from hybridft.evaluate.leakage import check_leakage

    n_train, n_val, n_test = sizes
    train_texts = [_row_text(r) for r in train_rows]
    candidates: list[tuple[str, SftDraft]] = []
    for name, (drafts, _) in draws.items():
        candidates += [(name, d) for d in drafts[n_train:]]
    report = check_leakage(train_texts, [_draft_text(d) for _, d in candidates])
    dirty = set(report.dirty)
    out: dict[str, dict[str, list[SftDraft]]] = {}
    for name in draws:
        kept = [d for i, (task, d) in enumerate(candidates) if task == name and i not in dirty]
        if len(kept) < n_val + n_test:
            raise UserError(
                f"synth: task {name}: only {len(kept)} held-out examples are clean of train "
                f"overlap (leakage shield), {n_val + n_test} asked for; lower n_validation / n_test"
            )
        out[name] = {
            "validation": kept[:n_val],
            "test": kept[n_val : n_val + n_test],
        }
    return out


def _draft_text(draft: SftDraft) -> str:
    """The text the leakage shield compares (prompt and gold completion, one a line)."""
    return f"{draft.prompt}\n{draft.completion(draft.label)}"


def _row_text(row: Row) -> str:
    if "prompt" in row:
        return f"{row['prompt']}\n{row['completion']}"
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")
    return "\n".join(x for x in (row["instruction"], row["input"], row["output"]) if x)
