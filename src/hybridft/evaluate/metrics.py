"""The one implementation of each score: exact match, label accuracy, token F1."""

from __future__ import annotations

import re
from collections import Counter

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace, strip: the comparison form of an answer."""
    return _SPACE.sub(" ", text).strip().lower()


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0] if text.strip() else ""


def exact_match(pred: str, gold: str) -> float:
    return float(normalise(pred) == normalise(gold))


def label_match(pred: str, gold_label: str) -> float:
    """The label is the completion's first line (the demo tasks' convention)."""
    return float(normalise(first_line(pred)) == normalise(gold_label))


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style bag-of-tokens F1 on normalised text."""
    p, g = normalise(pred).split(), normalise(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)
