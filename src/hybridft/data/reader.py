"""Stream Examples out of JSONL and Parquet files, checking every row and losing none.

Files are read one line (JSONL) or one record batch (Parquet) at a time, so a file larger than
memory works. A bad row is a one-line ``file:line: key: problem`` UserError (on_bad_rows "error")
or is written with its raw text and reason to a rejects JSONL and counted (on_bad_rows "skip").
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from hybridft.data.formats import FORMATS, RowError, parse_row
from hybridft.data.records import Example
from hybridft.errors import UserError, located

OnBadRows = Literal["error", "skip"]
# Not ".json": that is usually one JSON array, which cannot be streamed row by row.
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_BATCH_ROWS = 1024


@dataclass
class FileReport:
    """What happened to one file's rows: every row read is either accepted or rejected."""

    path: str
    rows: int = 0  # non-blank lines (JSONL) or records (Parquet)
    accepted: int = 0
    rejected: int = 0


@dataclass
class ReadReport:
    """Counts per file, and where the rejected rows went (``None`` unless on_bad_rows is skip)."""

    files: list[FileReport] = field(default_factory=list)
    rejects_path: str | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)


def expand_paths(patterns: list[str]) -> list[str]:
    """Expand globs (sorted, ``**`` allowed) and check that every pattern names at least one file.

    Raises:
        UserError: ``<pattern>: no such file`` for a pattern that matches nothing, or a directory
            or unsupported suffix.
    """
    out: dict[str, None] = {}  # ordered and de-duplicated: a file named twice is read once
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        else:
            matches = [pattern] if os.path.exists(pattern) else []
        if not matches:
            raise UserError(f"{pattern}: no such file")
        for path in matches:
            if os.path.isdir(path):
                raise UserError(f"{path}: expected a data file or a glob, got a directory")
            if not path.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
                expected = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES)
                raise UserError(f"{path}: expected a file ending in {expected}")
            out[path] = None
    return list(out)


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any, str | bytes]]:
    """(line number, decoded row or RowError, raw line) for each non-blank line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue  # blank lines are skipped, but still counted in line numbers
            try:
                row: Any = json.loads(raw)
            except json.JSONDecodeError as exc:
                row = RowError("", f"invalid JSON: {exc.msg} (col {exc.colno})")
            except UnicodeDecodeError as exc:
                row = RowError("", f"invalid UTF-8 at byte {exc.start + 1}")
            yield number, row, raw


def _parquet_rows(path: str) -> Iterator[tuple[int, Any, str | bytes]]:
    """(row number, row, raw) for each record, one record batch in memory at a time."""
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt or foreign file
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
    number = 0
    with reader:
        for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield number, _drop_nulls(row), ""


def _drop_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet columns are schema-wide: a null cell means the key is absent from this row."""
    out = {k: v for k, v in row.items() if v is not None}
    meta = out.get("meta")
    if isinstance(meta, list) and all(isinstance(p, tuple) and len(p) == 2 for p in meta):
        out["meta"] = dict(meta)  # a Parquet map<string, string> arrives as (key, value) pairs
    elif isinstance(meta, dict):
        out["meta"] = {k: v for k, v in meta.items() if v is not None}
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [
            {k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
            for m in messages
        ]
    return out


def _raw_text(raw: str | bytes, row: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return json.dumps(row, ensure_ascii=False, default=str)


class ExampleStream:
    """The accepted Examples of some files, read lazily; ``report`` is complete once exhausted.

    A stream is consumed once: iterating it again raises RuntimeError.
    """

    def __init__(
        self,
        paths: list[str],
        fmt: str,
        source: str,
        labels: list[str] | None,
        on_bad_rows: OnBadRows,
        rejects_path: str | None,
    ) -> None:
        self.paths = paths
        self.fmt = fmt
        self.source = source
        self.labels = frozenset(labels) if labels is not None else None
        self.on_bad_rows = on_bad_rows
        self.rejects_path = rejects_path
        self._report = ReadReport(rejects_path=rejects_path if on_bad_rows == "skip" else None)
        self._started = False
        self._done = False

    @property
    def report(self) -> ReadReport:
        """Rows read, accepted and rejected per file; only available after full iteration."""
        if not self._done:
            raise RuntimeError("ExampleStream.report is only complete once the stream is exhausted")
        return self._report

    def __iter__(self) -> Iterator[Example]:
        if self._started:
            raise RuntimeError("an ExampleStream can be iterated only once; read the files again")
        self._started = True
        return self._examples()

    def _examples(self) -> Iterator[Example]:
        rejects: IO[str] | None = None
        if self.on_bad_rows == "skip":
            assert self.rejects_path is not None
            Path(self.rejects_path).parent.mkdir(parents=True, exist_ok=True)
            # Truncated up front, so an empty file means "no rejects" and never a stale list.
            rejects = open(self.rejects_path, "w", encoding="utf-8")  # noqa: SIM115
        try:
            for path in self.paths:
                yield from self._file_examples(path, rejects)
        finally:
            if rejects is not None:
                rejects.close()
        self._done = True

    def _file_examples(self, path: str, rejects: IO[str] | None) -> Iterator[Example]:
        counts = FileReport(path)
        self._report.files.append(counts)
        source = self.source or _stem(path)
        rows = _parquet_rows(path) if path.endswith(PARQUET_SUFFIXES) else _jsonl_rows(path)
        for number, row, raw in rows:
            counts.rows += 1
            try:
                if isinstance(row, RowError):
                    raise row
                example = parse_row(
                    row, self.fmt, source=source, file=path, line=number, labels=self.labels
                )
            except RowError as exc:
                if rejects is None:
                    raise located(path, number, exc.key, exc.problem) from None
                counts.rejected += 1
                reason = f"{exc.key}: {exc.problem}" if exc.key else exc.problem
                record = {
                    "file": path,
                    "line": number,
                    "reason": reason,
                    "raw": _raw_text(raw, row),
                }
                rejects.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            counts.accepted += 1
            yield example


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def bad_rows_mode(value: str) -> OnBadRows:
    """``value`` as an ``OnBadRows`` (``error`` or ``skip``).

    Raises:
        UserError: Any other value.
    """
    if value == "error":
        return "error"
    if value == "skip":
        return "skip"
    raise UserError(f"on_bad_rows: expected error or skip, got {value!r}")


def read_examples(
    paths: list[str],
    fmt: str = "auto",
    source: str = "",
    labels: list[str] | None = None,
    on_bad_rows: OnBadRows = "error",
    rejects_path: str | None = None,
) -> ExampleStream:
    """Read, check and normalise the rows of JSONL / Parquet files, streaming.

    Globs are expanded and sorted; every pattern must match a file. Nothing is read until the
    stream is iterated.

    Args:
        paths: Files or globs (``.jsonl``, ``.jsonl.gz``, ``.ndjson``, ``.parquet``).
        fmt: Record format: ``auto`` (per row, from its keys), ``instruction``, ``chat``, ``task``.
        source: Source name put on each Example (default: the file's stem).
        labels: The source's label set; task rows must carry a label in it.
        on_bad_rows: ``error`` raises on the first bad row; ``skip`` writes it to ``rejects_path``.
        rejects_path: JSONL receiving ``{file, line, reason, raw}`` per rejected row (skip only).

    Returns:
        An ExampleStream: iterate it for the Examples, then read ``.report``.

    Raises:
        UserError: A pattern matching nothing; then, while iterating, the first bad row as
            ``file:line: key: problem`` when on_bad_rows is ``error``.
    """
    if fmt not in FORMATS:
        raise UserError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    on_bad_rows = bad_rows_mode(on_bad_rows)
    if on_bad_rows == "skip" and not rejects_path:
        raise ValueError("on_bad_rows='skip' needs a rejects_path: no row is dropped silently")
    return ExampleStream(expand_paths(paths), fmt, source, labels, on_bad_rows, rejects_path)
