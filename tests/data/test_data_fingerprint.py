"""Fingerprints: a change to any row changes it; how the rows are stored and ordered does not."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path

from hybridft.data.fingerprint import (
    ExampleHasher,
    fingerprint_examples,
    fingerprint_paths,
    row_digest,
)
from hybridft.data.reader import read_examples
from hybridft.data.records import Example, Message

ROWS = [
    {"prompt": f"Ticket {i}: printer {i} jams", "completion": "hardware", "label": "hardware"}
    for i in range(30)
]


def write_split(write_jsonl, folder: str, rows: list[dict], names: tuple[str, ...]) -> str:
    """Write rows round-robin into files named ``names`` under ``folder``; return the glob."""
    parts: list[list[dict]] = [[] for _ in names]
    for i, row in enumerate(rows):
        parts[i % len(names)].append(row)
    paths = [write_jsonl(f"{folder}/{name}", part) for name, part in zip(names, parts, strict=True)]
    return str(Path(paths[0]).parent / "*.jsonl")


def test_format_is_sha256_prefixed_hex(tokenizer, write_jsonl):
    fp = fingerprint_paths([write_jsonl("a.jsonl", ROWS)], tokenizer)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp)


def test_file_order_names_and_row_order_do_not_change_it(tokenizer, write_jsonl):
    base = fingerprint_paths(
        [write_split(write_jsonl, "one", ROWS, ("a.jsonl", "b.jsonl"))], tokenizer
    )
    shuffled = ROWS[:]
    random.Random(0).shuffle(shuffled)
    names = ("zeta.jsonl", "alpha.jsonl", "mid.jsonl")  # renamed, re-split, re-ordered
    assert fingerprint_paths([write_split(write_jsonl, "two", shuffled, names)], tokenizer) == base


def test_one_character_of_one_row_changes_it(tokenizer, write_jsonl):
    base = fingerprint_paths([write_jsonl("a.jsonl", ROWS)], tokenizer)
    for key in ("prompt", "completion", "label"):
        changed = copy.deepcopy(ROWS)
        changed[17][key] = changed[17][key][:-1] + "X"
        assert fingerprint_paths([write_jsonl(f"{key}.jsonl", changed)], tokenizer) != base


def test_row_multiset_counts_duplicates_and_ignores_location(tokenizer):
    ex = Example((Message("user", "q"), Message("assistant", "a")), file="x.jsonl", line=3)
    moved = Example(ex.messages, file="y.jsonl", line=9, id="7", meta={"k": "v"})
    assert row_digest(ex) == row_digest(moved)
    assert fingerprint_examples([ex], tokenizer, "all") == fingerprint_examples(
        [moved], tokenizer, "all"
    )
    assert fingerprint_examples([ex, ex], tokenizer, "all") != fingerprint_examples(
        [ex], tokenizer, "all"
    )
    labelled = Example(ex.messages, label="a")
    tasked = Example(ex.messages, task="t")
    assert len({row_digest(ex), row_digest(labelled), row_digest(tasked)}) == 3
    # A role is content too: the same text said by someone else is another row.
    swapped = Example((Message("system", "q"), Message("assistant", "a")))
    assert row_digest(swapped) != row_digest(ex)


def test_masking_mode_template_and_tokenizer_are_part_of_it(tokenizer):
    rows = [Example((Message("user", "q"), Message("assistant", "a")))]
    base = fingerprint_examples(rows, tokenizer, "completion_only")
    assert fingerprint_examples(rows, tokenizer, "all") != base
    other_template = copy.deepcopy(tokenizer)
    other_template.chat_template = tokenizer.chat_template.replace("\n", " ")
    assert fingerprint_examples(rows, other_template, "completion_only") != base
    other_vocab = copy.deepcopy(tokenizer)
    other_vocab.add_tokens(["<|tool|>"])
    assert fingerprint_examples(rows, other_vocab, "completion_only") != base


def test_tap_hashes_while_passing_examples_through(tokenizer, write_jsonl):
    path = write_jsonl("a.jsonl", ROWS)
    hasher = ExampleHasher()
    passed = list(hasher.tap(read_examples([path])))
    assert len(passed) == hasher.rows == len(ROWS)
    assert hasher.fingerprint(tokenizer, "completion_only") == fingerprint_paths([path], tokenizer)
