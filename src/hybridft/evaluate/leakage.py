"""The leakage shield: which eval examples overlap the training data, checked before any score.

Four rules, each run on the *normalised* text of every example (``normalise_for_overlap``:
NFKC, lower-case, every character that is not a letter, digit or whitespace becomes a space,
whitespace collapsed to single spaces and stripped; tokens are the space-separated words):

* ``exact``: the eval text equals a train text.
* ``ngram_any`` (GPT-3, Brown et al. 2020, appendix C): dirty if *any* 13-gram of the eval text
  is a 13-gram of some train text. As in GPT-3, 13-grams found in more than
  ``ngram_max_train_docs`` (10) distinct train texts are ignored: they are boilerplate (a shared
  instruction template), not leaked answers. An eval text shorter than 13 tokens is compared
  whole: dirty if its full token sequence occurs as a contiguous span of a train text (subject to
  the same boilerplate filter).
* ``ngram_fraction`` (PaLM, Chowdhery et al. 2022): dirty if at least 70% of the eval text's
  8-grams (counted by position) occur in the train 8-gram set. An eval text shorter than 8 tokens
  is compared whole, like the 13-gram rule (no boilerplate filter, as in PaLM).
* ``minhash``: near-duplicates. Shingles are character 5-grams of the normalised text (short task
  rows have too few words for word 5-gram shingles to survive a two-word edit at Jaccard 0.8);
  a text shorter than 5 characters is one shingle. ``datasketch`` MinHash (128 permutations,
  fixed seed) + MinHashLSH propose candidates, and each candidate is verified with the exact
  Jaccard of the two shingle sets against the 0.8 threshold, so LSH false positives never count.
  The LSH index itself is built at a lower threshold (0.6 by default): datasketch's banding for
  0.8 proposes a pair at Jaccard 0.8 only ~40% of the time, for 0.6 ~98.5%; verification keeps
  the decision exact, so the lower threshold only buys recall at the cost of a few more checks.

Empty texts (after normalisation) are never flagged. N-grams are stored as the Python hashes of
tuples of integer token ids: int-tuple hashes are not salted, so results are identical across
processes, and a 64-bit collision is vanishingly unlikely at these sizes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hybridft.data.records import Example

RULES = ("exact", "ngram_any", "ngram_fraction", "minhash")

_NOT_WORD = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for the shingle hash


@dataclass(frozen=True)
class LeakageConfig:
    """Thresholds of the four rules; the defaults are the published ones."""

    ngram_n: int = 13
    ngram_max_train_docs: int | None = 10  # None: keep every train n-gram
    fraction_n: int = 8
    fraction_threshold: float = 0.7
    minhash_threshold: float = 0.8
    minhash_lsh_threshold: float | None = None  # candidate threshold; None: minhash_threshold - 0.2
    shingle_chars: int = 5
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("ngram_n", "fraction_n", "shingle_chars", "num_perm"):
            if getattr(self, name) < 1:
                raise ValueError(f"LeakageConfig.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("fraction_threshold", "minhash_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"LeakageConfig.{name}: expected in (0, 1]")
        if self.minhash_lsh_threshold is not None and not (
            0 < self.minhash_lsh_threshold <= self.minhash_threshold
        ):
            raise ValueError(
                "LeakageConfig.minhash_lsh_threshold: expected in (0, minhash_threshold]"
            )
        if self.ngram_max_train_docs is not None and self.ngram_max_train_docs < 1:
            raise ValueError("LeakageConfig.ngram_max_train_docs: expected >= 1 or None")


@dataclass(frozen=True)
class LeakageReport:
    """Dirty eval indices per rule, their union, and the clean mask used to split scores."""

    n_train: int
    n_eval: int
    by_rule: dict[str, tuple[int, ...]]
    config: LeakageConfig

    @property
    def counts(self) -> dict[str, int]:
        return {rule: len(idx) for rule, idx in self.by_rule.items()}

    @property
    def dirty(self) -> tuple[int, ...]:
        """Sorted eval indices flagged by at least one rule."""
        return tuple(sorted(set().union(*self.by_rule.values())))

    @property
    def contamination_rate(self) -> float:
        return len(self.dirty) / self.n_eval if self.n_eval else 0.0

    @property
    def clean_mask(self) -> np.ndarray:
        """Boolean array over eval examples: True where no rule flagged the example."""
        mask = np.ones(self.n_eval, dtype=bool)
        mask[list(self.dirty)] = False
        return mask

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (the clean mask is left out: it follows from ``dirty``)."""
        return {
            "n_train": self.n_train,
            "n_eval": self.n_eval,
            "by_rule": {rule: list(idx) for rule, idx in self.by_rule.items()},
            "counts": self.counts,
            "dirty": list(self.dirty),
            "n_dirty": len(self.dirty),
            "contamination_rate": self.contamination_rate,
            "config": asdict(self.config),
        }


def normalise_for_overlap(text: str) -> str:
    """The comparison form of a text: NFKC, lower-case, punctuation to spaces, spaces collapsed.

    Args:
        text: any text.

    Returns:
        The normalised text; its tokens are ``text.split(" ")`` (none when empty).
    """
    text = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return _SPACE.sub(" ", text).strip()


def example_text(example: Example) -> str:
    """Prompt and completion of an example as one text: non-system message contents, one a line.

    System messages are left out: they are usually one prompt shared by every row, and would make
    every example "overlap" every other.
    """
    parts = [m.content for m in example.prompt_messages if m.role != "system"]
    return "\n".join([*parts, example.completion])


def check_example_leakage(
    train: Sequence[Example], eval_: Sequence[Example], config: LeakageConfig | None = None
) -> LeakageReport:
    """Run the leakage shield on examples (prompt + completion text, see ``example_text``).

    Args:
        train: the training examples.
        eval_: the evaluation examples; report indices refer to this sequence.
        config: rule thresholds; the published defaults when omitted.

    Returns:
        The leakage report.
    """
    return check_leakage([example_text(e) for e in train], [example_text(e) for e in eval_], config)


def check_leakage(
    train_texts: Sequence[str], eval_texts: Sequence[str], config: LeakageConfig | None = None
) -> LeakageReport:
    """Run the four leakage rules between plain train and eval texts.

    Args:
        train_texts: training texts.
        eval_texts: evaluation texts; report indices refer to this sequence.
        config: rule thresholds; the published defaults when omitted.

    Returns:
        The leakage report: dirty eval indices per rule and overall.
    """
    cfg = config or LeakageConfig()
    train_norm = [normalise_for_overlap(t) for t in train_texts]
    eval_norm = [normalise_for_overlap(t) for t in eval_texts]
    vocab: dict[str, int] = {}
    train_ids = [_token_ids(t, vocab) for t in train_norm]
    eval_ids = [_token_ids(t, vocab) for t in eval_norm]

    # Short eval texts are compared whole (see the module docstring); one pass serves both rules.
    short_docs = _short_span_docs(train_ids, eval_ids, max(cfg.ngram_n, cfg.fraction_n))
    by_rule = {
        "exact": _exact(train_norm, eval_norm),
        "ngram_any": _ngram_any(
            train_ids, eval_ids, short_docs, cfg.ngram_n, cfg.ngram_max_train_docs
        ),
        "ngram_fraction": _ngram_fraction(
            train_ids, eval_ids, short_docs, cfg.fraction_n, cfg.fraction_threshold
        ),
        "minhash": _minhash(train_norm, eval_norm, cfg),
    }
    return LeakageReport(len(train_texts), len(eval_texts), by_rule, cfg)


def split_scores(
    per_example_scores: Sequence[float] | np.ndarray, report: LeakageReport
) -> dict[str, float | int | None]:
    """Mean score over all, clean and dirty eval examples, so a report can show both.

    Args:
        per_example_scores: one score per eval example, in the report's eval order.
        report: the leakage report for the same eval set.

    Returns:
        ``{"all", "clean", "dirty", "n_clean", "n_dirty"}``; a mean is None when its set is empty.
    """
    scores = np.asarray(per_example_scores, dtype=np.float64)
    if scores.shape != (report.n_eval,):
        raise ValueError(f"per_example_scores: expected {report.n_eval} scores, got {scores.shape}")
    mask = report.clean_mask

    def mean(x: np.ndarray) -> float | None:
        return float(x.mean()) if len(x) else None

    return {
        "all": mean(scores),
        "clean": mean(scores[mask]),
        "dirty": mean(scores[~mask]),
        "n_clean": int(mask.sum()),
        "n_dirty": int((~mask).sum()),
    }


# --- the rules -----------------------------------------------------------------------------------


def _token_ids(text: str, vocab: dict[str, int]) -> tuple[int, ...]:
    # Integer ids make n-gram tuple hashes deterministic across processes (str hashes are salted).
    return tuple(vocab.setdefault(tok, len(vocab)) for tok in text.split()) if text else ()


def _gram_hashes(ids: tuple[int, ...], n: int) -> Iterable[int]:
    return (hash(ids[i : i + n]) for i in range(len(ids) - n + 1))


def _exact(train_norm: list[str], eval_norm: list[str]) -> tuple[int, ...]:
    seen = set(train_norm)
    return tuple(i for i, t in enumerate(eval_norm) if t and t in seen)


def _short_span_docs(
    train_ids: list[tuple[int, ...]], eval_ids: list[tuple[int, ...]], max_len: int
) -> dict[int, int]:
    """For eval texts of 1 to ``max_len - 1`` tokens: in how many train texts the whole token
    sequence occurs as a contiguous span (eval index -> document count; absent when none)."""
    wanted: dict[int, dict[int, list[int]]] = {}  # length -> sequence hash -> eval indices
    for i, ids in enumerate(eval_ids):
        if 0 < len(ids) < max_len:
            wanted.setdefault(len(ids), {}).setdefault(hash(ids), []).append(i)
    if not wanted:
        return {}
    # Only spans starting with the first token of some short eval text can match: checking that
    # token first skips hashing most train positions.
    starts: dict[int, list[int]] = {}  # first token -> lengths of short eval texts starting there
    for k, grams in wanted.items():
        for i in {eval_ids[idx[0]][0] for idx in grams.values()}:
            starts.setdefault(i, []).append(k)
    docs: Counter[int] = Counter()
    for ids in train_ids:
        found = {
            g
            for pos, tok in enumerate(ids)
            if tok in starts
            for k in starts[tok]
            if pos + k <= len(ids) and (g := hash(ids[pos : pos + k])) in wanted[k]
        }
        docs.update(found)  # a set per train text: counts documents, not occurrences
    return {
        i: docs[g] for grams in wanted.values() for g, idx in grams.items() for i in idx if docs[g]
    }


def _ngram_any(
    train_ids: list[tuple[int, ...]],
    eval_ids: list[tuple[int, ...]],
    short_docs: dict[int, int],
    n: int,
    max_docs: int | None,
) -> tuple[int, ...]:
    docs: Counter[int] = Counter()
    for ids in train_ids:
        docs.update(set(_gram_hashes(ids, n)))  # per-doc set: counts documents, not occurrences
    train = {g for g, c in docs.items() if max_docs is None or c <= max_docs}
    hits = {
        i
        for i, c in short_docs.items()
        if len(eval_ids[i]) < n and (max_docs is None or c <= max_docs)
    }
    hits.update(
        i for i, ids in enumerate(eval_ids) if any(g in train for g in _gram_hashes(ids, n))
    )
    return tuple(sorted(hits))


def _ngram_fraction(
    train_ids: list[tuple[int, ...]],
    eval_ids: list[tuple[int, ...]],
    short_docs: dict[int, int],
    n: int,
    threshold: float,
) -> tuple[int, ...]:
    train: set[int] = set()
    for ids in train_ids:
        train.update(_gram_hashes(ids, n))
    hits = {i for i in short_docs if len(eval_ids[i]) < n}
    for i, ids in enumerate(eval_ids):
        grams = list(_gram_hashes(ids, n))
        if grams and sum(g in train for g in grams) >= threshold * len(grams):
            hits.add(i)
    return tuple(sorted(hits))


def _shingles(text: str, k: int) -> set[str]:
    if len(text) <= k:
        return {text} if text else set()
    return {text[i : i + k] for i in range(len(text) - k + 1)}


def _shingle_hashes(text: str, k: int) -> np.ndarray:
    """32-bit hashes of the distinct character k-shingles of a non-empty text.

    One vectorised polynomial hash per text instead of datasketch's per-shingle SHA-1, which was
    two thirds of the run time at demo size; MinHash's affine32 scheme re-mixes every input hash,
    so any well-spread 32-bit value will do. Verification still uses the shingle strings.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) <= k:
        windows = codes[None, :]
    else:
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
    powers = _POLY ** np.arange(windows.shape[1], dtype=np.uint64)  # wraps mod 2**64 on purpose
    with np.errstate(over="ignore"):
        h = (windows * powers).sum(axis=1, dtype=np.uint64)
    return np.unique((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def _minhash(train_norm: list[str], eval_norm: list[str], cfg: LeakageConfig) -> tuple[int, ...]:
    from datasketch import MinHash, MinHashLSH

    # One permutation set shared by every sketch: same seed, and no per-sketch RNG set-up cost.
    template = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)

    def sketch(text: str) -> MinHash:
        m = MinHash(
            num_perm=cfg.num_perm,
            seed=cfg.seed,
            hashfunc=int,  # the shingles arrive already hashed (_shingle_hashes)
            permutations=template.permutations,
            scheme=template.scheme,
        )
        m.update_batch(_shingle_hashes(text, cfg.shingle_chars).tolist())
        return m

    lsh_threshold = cfg.minhash_lsh_threshold or max(cfg.minhash_threshold - 0.2, 0.05)
    lsh = MinHashLSH(threshold=lsh_threshold, num_perm=cfg.num_perm)
    unique_train: dict[str, int] = {}  # normalised text -> its key; duplicates sketched once
    for text in train_norm:
        if text and text not in unique_train:
            unique_train[text] = len(unique_train)
            lsh.insert(unique_train[text], sketch(text))
    by_key = list(unique_train)

    hits = []
    verdict: dict[str, bool] = {}  # repeated eval texts are checked once
    for i, text in enumerate(eval_norm):
        if not text or not unique_train:
            continue
        if text not in verdict:
            shingles = _shingles(text, cfg.shingle_chars)
            candidates = sorted(lsh.query(sketch(text)))
            verdict[text] = any(
                _jaccard(shingles, _shingles(by_key[k], cfg.shingle_chars)) >= cfg.minhash_threshold
                for k in candidates
            )
        if verdict[text]:
            hits.append(i)
    return tuple(hits)
