"""The leakage shield on hand-built train/eval pairs: each rule fires where it should, only there."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from hybridft.data.records import Example, Message
from hybridft.evaluate.leakage import (
    RULES,
    LeakageConfig,
    LeakageReport,
    check_example_leakage,
    check_leakage,
    example_text,
    normalise_for_overlap,
    split_scores,
)


def words(seed: int, n: int) -> list[str]:
    """``n`` random lower-case words; different seeds share (almost) no words or 5-char shingles."""
    rng = random.Random(seed)
    return [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 8))) for _ in range(n)
    ]


def text(tokens: list[str]) -> str:
    return " ".join(tokens)


def char_jaccard(a: str, b: str, k: int = 5) -> float:
    sa = {a[i : i + k] for i in range(len(a) - k + 1)}
    sb = {b[i : i + k] for i in range(len(b) - k + 1)}
    return len(sa & sb) / len(sa | sb)


BACKGROUND = [text(words(1000 + i, 30)) for i in range(20)]  # unrelated train rows


def flagged(report: LeakageReport, i: int = 0) -> set[str]:
    return {rule for rule, idx in report.by_rule.items() if i in idx}


def test_normalisation() -> None:
    assert normalise_for_overlap("  Hello,  World!\n It's_OK\t(42) ") == "hello world it s ok 42"
    assert normalise_for_overlap("...") == ""
    assert normalise_for_overlap("Ｆｕｌｌ width") == "full width"  # NFKC


def test_exact_duplicate_is_caught_by_every_rule() -> None:
    row = text(words(1, 25))
    eval_row = row.upper().replace(" ", " , ", 3) + "!"  # same text after normalisation
    report = check_leakage([*BACKGROUND, row], [eval_row])
    assert flagged(report) == set(RULES)
    assert report.dirty == (0,) and report.contamination_rate == 1.0


def test_shared_13_token_span_trips_13gram_rule_only() -> None:
    train_row = words(2, 40)
    span = train_row[10:23]  # 13 tokens
    eval_row = text(words(3, 15) + span + words(4, 15))  # 43 tokens, 36 8-grams, 6 shared (17%)
    report = check_leakage([*BACKGROUND, text(train_row)], [eval_row])
    assert flagged(report) == {"ngram_any"}


def test_a_12_token_span_is_not_enough_for_the_13gram_rule() -> None:
    train_row = words(2, 40)
    eval_row = text(words(3, 15) + train_row[10:22] + words(4, 15))
    report = check_leakage([text(train_row)], [eval_row])
    assert report.dirty == ()


def test_8gram_fraction_rule_at_75_and_63_percent() -> None:
    train_row = words(5, 60)
    # 32 shared tokens + 8 new: 33 8-grams, 25 inside the shared span = 75.8% >= 70%.
    over = text(train_row[:32] + words(6, 8))
    # 28 shared tokens + 12 new: 21 of 33 = 63.6% < 70%.
    under = text(train_row[:28] + words(7, 12))
    report = check_leakage([*BACKGROUND, text(train_row)], [over, under])
    assert "ngram_fraction" in flagged(report, 0)
    assert "ngram_fraction" not in flagged(report, 1)
    assert "ngram_any" in flagged(report, 1)  # a 28-token shared span still has 13-grams


def test_minhash_catches_a_near_duplicate_and_not_a_loose_relative() -> None:
    train_tokens = words(8, 40)
    near = list(train_tokens)
    near[12], near[30] = "changed", "words"
    half = train_tokens[:20] + words(9, 20)
    assert char_jaccard(text(near), text(train_tokens)) >= 0.8
    assert char_jaccard(text(half), text(train_tokens)) < 0.5

    report = check_leakage([*BACKGROUND, text(train_tokens)], [text(near), text(half)])
    assert "minhash" in flagged(report, 0) and "exact" not in flagged(report, 0)
    assert "minhash" not in flagged(report, 1)


def test_minhash_candidates_below_threshold_are_rejected_by_exact_jaccard() -> None:
    train_tokens = words(10, 40)
    borderline = list(train_tokens)
    for pos in (3, 11, 19, 27, 35):  # five edits: Jaccard well below 0.8 but far above random
        borderline[pos] = "edited"
    jac = char_jaccard(text(borderline), text(train_tokens))
    assert 0.5 < jac < 0.8
    # An LSH index built at the decision threshold itself makes the row a candidate with near
    # certainty; the exact Jaccard check must still reject it.
    report = check_leakage(
        [text(train_tokens)],
        [text(borderline)],
        LeakageConfig(minhash_threshold=0.8, minhash_lsh_threshold=0.3),
    )
    assert "minhash" not in flagged(report)
    loose = check_leakage(
        [text(train_tokens)], [text(borderline)], LeakageConfig(minhash_threshold=0.5)
    )
    assert "minhash" in flagged(loose)


def test_short_eval_text_is_compared_whole() -> None:
    train_row = text(words(11, 30))
    inside = text(train_row.split()[5:10])  # 5 tokens, a contiguous span of the train row
    shuffled = text(train_row.split()[10:5:-1])  # same words, not a span
    report = check_leakage([train_row], [inside, shuffled])
    assert {"ngram_any", "ngram_fraction"} <= flagged(report, 0)
    assert not flagged(report, 1) & {"ngram_any", "ngram_fraction"}


def test_boilerplate_13grams_are_ignored_like_gpt3() -> None:
    template = words(12, 15)  # an instruction every row shares
    train = [text(template + words(100 + i, 10)) for i in range(11)]  # in 11 train docs > 10
    eval_row = text(template + words(200, 10))
    default = check_leakage(train, [eval_row])
    assert "ngram_any" not in flagged(default)
    strict = check_leakage(train, [eval_row], LeakageConfig(ngram_max_train_docs=None))
    assert "ngram_any" in flagged(strict)
    # In 10 docs it is still counted.
    assert "ngram_any" in flagged(check_leakage(train[:10], [eval_row]))


def test_clean_set_has_zero_contamination() -> None:
    eval_rows = [text(words(300 + i, 25)) for i in range(5)] + ["", "  ?! "]
    report = check_leakage([*BACKGROUND, ""], eval_rows)
    assert report.dirty == () and report.contamination_rate == 0.0
    assert report.clean_mask.tolist() == [True] * 7
    assert report.counts == dict.fromkeys(RULES, 0)


def test_report_union_mask_and_json() -> None:
    dup = text(words(13, 20))
    span_train = words(14, 40)
    eval_rows = [text(words(15, 20)), dup, text(words(16, 5) + span_train[:13] + words(17, 20))]
    report = check_leakage([*BACKGROUND, dup, text(span_train)], eval_rows)
    assert report.dirty == (1, 2)
    assert report.clean_mask.tolist() == [True, False, False]
    assert report.contamination_rate == pytest.approx(2 / 3)
    data = json.loads(json.dumps(report.to_json()))
    assert data["dirty"] == [1, 2] and data["n_dirty"] == 2 and data["n_eval"] == 3
    assert data["counts"]["exact"] == 1 and data["config"]["ngram_n"] == 13


def test_split_scores_arithmetic() -> None:
    report = LeakageReport(
        n_train=0,
        n_eval=5,
        by_rule={"exact": (1,), "ngram_any": (1, 3), "ngram_fraction": (), "minhash": ()},
        config=LeakageConfig(),
    )
    out = split_scores([1.0, 0.0, 1.0, 0.5, 1.0], report)
    # all: 3.5 / 5; clean (0, 2, 4): 3 / 3; dirty (1, 3): 0.5 / 2
    assert out == {"all": 0.7, "clean": 1.0, "dirty": 0.25, "n_clean": 3, "n_dirty": 2}
    clean = LeakageReport(0, 2, dict.fromkeys(RULES, ()), LeakageConfig())
    assert split_scores(np.array([0.0, 1.0]), clean)["dirty"] is None
    with pytest.raises(ValueError):
        split_scores([1.0], report)


def test_examples_use_prompt_and_completion_without_system() -> None:
    def ex(user: str, answer: str) -> Example:
        return Example(
            messages=(
                Message("system", "You are a helpful support assistant."),
                Message("user", user),
                Message("assistant", answer),
            )
        )

    question = text(words(18, 20))
    assert example_text(ex(question, "network")) == f"{question}\nnetwork"
    train = [ex(question, "network"), ex(text(words(19, 20)), "billing")]
    eval_ = [ex(question.upper(), "network"), ex(text(words(20, 20)), "network")]
    report = check_example_leakage(train, eval_)
    assert flagged(report, 0) == set(RULES)
    assert report.dirty == (0,)


_SUBPROCESS = """
import json, random
from hybridft.evaluate.leakage import check_leakage
rng = random.Random(0)
vocab = ["".join(rng.choices("abcdefgh", k=5)) for _ in range(60)]
train = [" ".join(rng.choices(vocab, k=30)) for _ in range(150)]
eval_ = [" ".join(rng.choices(vocab, k=30)) for _ in range(40)] + train[:5]
eval_ += [" ".join(t.split()[:20] + rng.choices(vocab, k=10)) for t in train[5:15]]
print(json.dumps(check_leakage(train, eval_).to_json(), sort_keys=True))
"""


def test_results_are_deterministic_across_processes() -> None:
    # String hashes are salted per process; the report must not depend on the salt.
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS], env=env, capture_output=True, text=True, check=True
        )
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    report = json.loads(outs[0])
    assert set(range(40, 55)) <= set(report["dirty"])  # the copies and the 20-token prefixes


@pytest.mark.parametrize(
    "bad",
    [
        {"ngram_n": 0},
        {"fraction_threshold": 0.0},
        {"minhash_threshold": 1.5},
        {"minhash_lsh_threshold": 0.9},  # above the decision threshold: would lose recall
        {"ngram_max_train_docs": 0},
    ],
)
def test_config_is_checked_at_construction(bad: dict) -> None:
    with pytest.raises(ValueError):
        LeakageConfig(**bad)
