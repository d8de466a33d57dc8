"""What ``hybridft data validate`` and ``hybridft data stats`` report: data first, then a rich view.

``validate_paths`` and ``dataset_stats`` return plain dataclasses (for tests, JSON, lineage);
``render_validation`` and ``render_stats`` turn them into a ``rich`` Table for the terminal.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from hybridft.data.reader import OnBadRows, ReadReport, read_examples
from hybridft.data.render import render_examples
from hybridft.specs import DEFAULT_MAX_LEN

BAR_WIDTH = 30


def validate_paths(
    paths: list[str],
    fmt: str = "auto",
    on_bad_rows: OnBadRows = "error",
    rejects_path: str | None = None,
    labels: list[str] | None = None,
) -> ReadReport:
    """Read and check every row of some files, keeping nothing in memory.

    Args:
        paths: Files or globs (JSONL / Parquet).
        fmt: ``auto``, ``instruction``, ``chat`` or ``task``.
        on_bad_rows: ``error`` stops at the first bad row; ``skip`` writes each to ``rejects_path``.
        rejects_path: Where rejected rows go (used only with ``skip``).
        labels: The label set task rows must use, when the source declares one.

    Returns:
        The ReadReport: rows read / accepted / rejected per file, and the rejects file.

    Raises:
        UserError: A path matching nothing, or (``error``) the first bad row as file:line: key.
    """
    stream = read_examples(
        paths,
        fmt=fmt,
        labels=labels,
        on_bad_rows=on_bad_rows,
        rejects_path=rejects_path if on_bad_rows == "skip" else None,
    )
    for _ in stream:
        pass
    return stream.report


@dataclass
class DataStats:
    """Token and label statistics of some files, rendered with a tokenizer's chat template."""

    read: ReadReport
    max_len: int
    rows: int = 0
    tokens: int = 0  # full renderings, before truncation
    completion_tokens: int = 0  # tokens of assistant turns (+ end-of-turn), before truncation
    truncated: int = 0  # rows longer than max_len
    lengths: Counter[int] = field(default_factory=Counter)  # tokens per row -> rows
    labels: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)  # a row with no task counts as its source

    def percentile(self, q: float) -> int:
        """The length (tokens) at quantile ``q`` in [0, 1] (0 when there are no rows)."""
        target, seen = q * self.rows, 0
        for length in sorted(self.lengths):
            seen += self.lengths[length]
            if seen >= target and seen > 0:
                return length
        return 0

    def length_histogram(self) -> list[tuple[int, int, int]]:
        """(low, high, rows) with ``low <= length < high``; bins double from 16 tokens up."""
        if not self.lengths:
            return []
        top, edges = max(self.lengths), [0, 16]
        while edges[-1] <= top:
            edges.append(edges[-1] * 2)
        counts = [0] * (len(edges) - 1)
        for length, rows in self.lengths.items():
            counts[next(i for i in range(len(counts)) if length < edges[i + 1])] += rows
        return [(edges[i], edges[i + 1], c) for i, c in enumerate(counts)]


def dataset_stats(
    paths: list[str],
    fmt: str = "auto",
    tokenizer: Any = None,
    labels: list[str] | None = None,
    max_len: int = DEFAULT_MAX_LEN,
) -> DataStats:
    """Rows, tokens, completion tokens, length histogram, label balance and per-task counts.

    Args:
        paths: Files or globs (JSONL / Parquet); a bad row is an error.
        fmt: ``auto``, ``instruction``, ``chat`` or ``task``.
        tokenizer: The HF fast tokenizer (and chat template) the data will be rendered with.
        labels: The label set task rows must use, when the source declares one.
        max_len: Rows longer than this are counted as truncated.

    Returns:
        DataStats, counted in one streaming pass.
    """
    if tokenizer is None:
        raise ValueError("dataset_stats needs the tokenizer the data will be rendered with")
    stream = read_examples(paths, fmt=fmt, labels=labels)
    stats = DataStats(read=ReadReport(), max_len=max_len)
    for item in render_examples(stream, tokenizer, loss="completion_only", max_len=None):
        stats.rows += 1
        stats.tokens += item.full_length
        stats.completion_tokens += int(item.loss_mask.sum())
        stats.truncated += item.full_length > max_len
        stats.lengths[item.full_length] += 1
        if item.label is not None:
            stats.labels[item.label] += 1
        stats.tasks[item.task or item.source] += 1
    stats.read = stream.report
    return stats


def render_stats(stats: DataStats) -> Table:
    """A rich Table of DataStats: totals, length histogram, labels, tasks."""
    table = Table(title="dataset stats", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_column("", style="cyan")
    files = len(stats.read.files)
    table.add_row("rows", f"{stats.rows:,}", f"{files} file{'s' * (files != 1)}")
    table.add_row("tokens", f"{stats.tokens:,}", f"{stats.tokens / max(stats.rows, 1):.1f} / row")
    share = stats.completion_tokens / max(stats.tokens, 1)
    table.add_row("completion tokens", f"{stats.completion_tokens:,}", f"{share:.1%} of tokens")
    p50, p95 = stats.percentile(0.5), stats.percentile(0.95)
    top = max(stats.lengths, default=0)
    table.add_row("length p50 / p95 / max", f"{p50} / {p95} / {top}", "")
    table.add_row(
        f"longer than {stats.max_len}", f"{stats.truncated:,}", f"{_share(stats.truncated, stats)}"
    )
    table.add_section()
    hist = stats.length_histogram()
    peak = max((c for _, _, c in hist), default=0)
    for low, high, count in hist:
        table.add_row(f"length {low}-{high - 1}", f"{count:,}", _bar(count, peak))
    for title, counts in (("label", stats.labels), ("task", stats.tasks)):
        if counts:
            table.add_section()
            peak = max(counts.values())
            for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                table.add_row(
                    f"{title} {name}", f"{count:,}", f"{_bar(count, peak)} {_share(count, stats)}"
                )
    return table


def render_validation(report: ReadReport) -> Table:
    """A rich Table of a ReadReport: per file rows / accepted / rejected, then totals."""
    table = Table(title="data validation", title_justify="left")
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("accepted", justify="right", style="green")
    table.add_column("rejected", justify="right", style="red")
    for f in report.files:
        table.add_row(f.path, f"{f.rows:,}", f"{f.accepted:,}", f"{f.rejected:,}")
    if len(report.files) > 1:
        table.add_section()
        table.add_row("total", f"{report.rows:,}", f"{report.accepted:,}", f"{report.rejected:,}")
    if report.rejects_path is not None:
        table.caption = f"rejected rows and reasons: {report.rejects_path}"
    return table


def _bar(count: int, peak: int) -> str:
    return "█" * round(BAR_WIDTH * count / peak) if peak else ""


def _share(count: int, stats: DataStats) -> str:
    return f"{count / stats.rows:.1%}" if stats.rows else ""
