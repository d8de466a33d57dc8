"""A served answer's label probabilities, the same way on every engine.

The prompt and labels become token sequences with evaluation's own scorer texts
(``evaluate.scoring``), an engine sums each label's scored-token log-probabilities (the hf
engine with ``scoring.score_continuations`` on its model, the vllm engine from vLLM's prompt
logprobs), and ``calibration.apply_temperature`` normalises them as evaluation does: with the
task's fitted temperature this is the evaluated calibrated probability, whichever engine serves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hybridft.errors import UserError

if TYPE_CHECKING:
    from hybridft.evaluate.scoring import Encoded, LabelEnd


def encode_labels(
    tokenizer: Any,
    prompt: str | Sequence[dict[str, str]],
    labels: Sequence[str],
    temperature: float,
    label_end: LabelEnd,
    max_position: int | None,
) -> list[Encoded]:
    """Each label's ``(token ids, first scored index)`` after ``prompt``; bad arguments raise.

    Chat turns get each label inside the chat template (the tokens past the generation prompt
    are scored); a raw completion prompt gets it right after its text, encoded with the
    tokenizer's special tokens (as ``text_prompt_ids`` encodes a prompt).

    Raises:
        UserError: labels empty, not strings or repeated; a temperature <= 0; an unknown
            ``label_end``; a label that tokenises to nothing; a sequence past the context.
    """
    # heavy: the scorer imports torch; the router imports the serving modules and runs no model
    from hybridft.evaluate import scoring

    _check_labels(labels)
    if not temperature > 0:
        raise UserError(f"temperature: expected > 0, got {temperature}")
    if label_end not in scoring.LABEL_ENDS:
        raise UserError(f"label_end: expected one of {scoring.LABEL_ENDS}, got {label_end!r}")
    if isinstance(prompt, str):
        text, texts = scoring.text_label_texts(prompt, labels, label_end)
    else:
        text, texts = scoring.chat_label_texts(tokenizer, prompt, labels, label_end)
    encoded = scoring.encode_continuations(tokenizer, text, texts, isinstance(prompt, str))
    n_scored = [len(ids) - first for ids, first in encoded]
    empty = [label for label, n in zip(labels, n_scored, strict=True) if n <= 0]
    if empty:
        raise UserError(f"labels: {empty!r} tokenise to no tokens")
    longest = max(len(ids) for ids, _ in encoded)
    if max_position is not None and longest > max_position:
        raise UserError(
            f"prompt plus label has {longest} tokens; the model's context is {max_position}"
        )
    return encoded


def label_distribution(
    labels: Sequence[str], scores: Sequence[float], temperature: float
) -> dict[str, float]:
    """``{label: probability}`` from the labels' summed log-probabilities, as evaluation
    normalises them (``calibration.apply_temperature``)."""
    import numpy as np

    # heavy: calibration imports scipy; the router imports the engines' modules, never scores
    from hybridft.evaluate.calibration import apply_temperature

    probs = apply_temperature(np.asarray([list(scores)]), temperature)[0]
    return {label: float(p) for label, p in zip(labels, probs, strict=True)}


def _check_labels(labels: Sequence[str]) -> None:
    if isinstance(labels, str) or not labels:
        raise UserError(f"labels: expected a non-empty list of strings, got {labels!r}")
    if not all(isinstance(label, str) and label for label in labels):
        raise UserError(f"labels: expected non-empty strings, got {list(labels)!r}")
    duplicates = sorted(label for label, n in Counter(labels).items() if n > 1)
    if duplicates:
        raise UserError(f"labels: expected distinct labels, got duplicates {duplicates!r}")
