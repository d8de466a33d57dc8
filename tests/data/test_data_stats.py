"""`data stats` and `data validate`: counts that add up, and tables that show them."""

from __future__ import annotations

import pytest
from rich.console import Console

from hybridft.data.reader import read_examples
from hybridft.data.render import render_examples
from hybridft.data.stats import dataset_stats, render_stats, render_validation, validate_paths
from hybridft.errors import UserError

ROWS = [
    {"prompt": f"Ticket {i}: VPN down", "completion": "network", "label": "network"}
    for i in range(6)
] + [
    {"prompt": "Refund please", "completion": "billing", "label": "billing", "task": "triage"},
    {"instruction": "Rewrite politely " * 20, "output": "Could you please help me?"},
]


def as_text(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_stats_count_rows_tokens_labels_and_tasks(tokenizer, write_jsonl):
    path = write_jsonl("mix.jsonl", ROWS)
    stats = dataset_stats([path], "auto", tokenizer, max_len=40)
    rendered = list(render_examples(read_examples([path]), tokenizer, max_len=None))
    lengths = [len(r.input_ids) for r in rendered]
    assert stats.rows == stats.read.accepted == len(ROWS)
    assert stats.tokens == sum(lengths)
    assert stats.completion_tokens == sum(int(r.loss_mask.sum()) for r in rendered)
    assert 0 < stats.completion_tokens < stats.tokens
    assert stats.truncated == sum(n > 40 for n in lengths) == 1
    assert dict(stats.labels) == {"network": 6, "billing": 1}
    assert dict(stats.tasks) == {"mix": 7, "triage": 1}  # rows without a task count as the source
    hist = stats.length_histogram()
    assert sum(c for _, _, c in hist) == len(ROWS)
    for low, high, count in hist:
        assert count == sum(low <= n < high for n in lengths)
    assert stats.percentile(1.0) == max(lengths) and stats.percentile(0.0) == min(lengths)


def test_stats_table_shows_the_figures(tokenizer, write_jsonl):
    stats = dataset_stats([write_jsonl("mix.jsonl", ROWS)], "auto", tokenizer)
    text = as_text(render_stats(stats))
    assert f"{stats.tokens:,}" in text and "label network" in text and "75.0%" in text
    assert "task triage" in text


def test_validate_reports_per_file_and_points_at_rejects(write_jsonl, tmp_path):
    good = write_jsonl("good.jsonl", ROWS)
    bad = write_jsonl("bad.jsonl", [ROWS[0], {"prompt": "p"}])
    rejects = str(tmp_path / "rejects.jsonl")
    report = validate_paths([good, bad], "auto", on_bad_rows="skip", rejects_path=rejects)
    assert [(f.rows, f.accepted, f.rejected) for f in report.files] == [(8, 8, 0), (2, 1, 1)]
    text = as_text(render_validation(report))
    assert "bad.jsonl" in text and "total" in text and rejects in text
    with pytest.raises(UserError, match=r"bad\.jsonl:2: completion: required key is missing"):
        validate_paths([good, bad], "auto", on_bad_rows="error", rejects_path=rejects)
