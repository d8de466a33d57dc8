"""The traffic log: every answer, feedback and review outcome, appended to Parquet.

Layout: ``ROOT/model=M/day=YYYY-MM-DD/version=V/part-<ns>-<id>.parquet``, one file per flush and
partition. Files are written under a temporary name and renamed, so a reader never sees half a
file from a live writer; a file that is still corrupt (a crash mid-copy, a truncated sync, a
stray file) is reported and skipped, and the other partitions are read as usual.

Events share one schema (``kind`` = ``request`` | ``feedback`` | ``review``); feedback and review
rows arrive after the answer they refer to and are joined to it by ``request_id`` at read time.
The log is PII-free by default: the prompt and answer text are dropped (their lengths are kept);
``text: mask`` keeps the text with e-mails, phone numbers, card-like digit runs, IP addresses and
the policy's own patterns replaced; ``text: keep`` keeps it as is.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hybridft.errors import UserError

logger = logging.getLogger(__name__)

EVENT_KINDS = ("request", "feedback", "review")
TextMode = Literal["drop", "mask", "keep"]

_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("kind", pa.string()),
    ("request_id", pa.string()),
    ("ts", pa.float64()),
    ("model", pa.string()),
    ("version", pa.string()),
    ("arm", pa.string()),
    ("status_code", pa.int32()),
    ("latency_s", pa.float64()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("prompt_chars", pa.int32()),
    ("completion_chars", pa.int32()),
    ("task", pa.string()),
    ("predicted_label", pa.string()),
    ("confidence", pa.float64()),
    ("label_probs", pa.map_(pa.string(), pa.float64())),
    ("flagged", pa.bool_()),
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("success", pa.bool_()),
    ("feedback_source", pa.string()),
    ("review_label", pa.string()),
    ("reviewer", pa.string()),
]
SCHEMA = pa.schema(_COLUMNS)
REQUIRED = ("kind", "request_id", "ts", "model", "version")

# Masked by ``text: mask`` (in this order: a card number is not also a phone number).
MASKS = (
    ("[EMAIL]", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("[IP]", re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")),
    ("[NUMBER]", re.compile(r"\b(?:\d[ -]?){12,19}\b")),
    ("[PHONE]", re.compile(r"(?<!\w)\+?\d[\d ().-]{6,}\d\b")),
)


@dataclass(frozen=True)
class Redaction:
    """How text enters the log: ``drop`` (default), ``mask`` or ``keep``."""

    text: TextMode = "drop"
    patterns: tuple[str, ...] = ()  # extra regexes, replaced by [REDACTED] under ``mask``

    def __post_init__(self) -> None:
        if self.text not in ("drop", "mask", "keep"):
            raise UserError(f"traffic_log.text: expected drop, mask or keep, got {self.text!r}")
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise UserError(f"traffic_log.mask_patterns: {p!r} is not a regex: {exc}") from None

    def apply(self, text: str | None) -> str | None:
        if text is None or self.text == "drop":
            return None
        if self.text == "keep":
            return text
        for token, pattern in MASKS:
            text = pattern.sub(token, text)
        for p in self.patterns:
            text = re.sub(p, "[REDACTED]", text)
        return text


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def message(self) -> str:
        return f"skipped {self.path}: {self.reason} (the other partitions were read)"


@dataclass
class TrafficRead:
    """Rows read (a pyarrow table in the log's schema) and the files that could not be."""

    table: pa.Table
    files: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return self.table.to_pylist()


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def _safe(value: str) -> str:
    """A partition value usable as a directory name (model names may hold '/' or spaces)."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", value) or "_"


class AppendFailed(Exception):
    """Some events could not be written; ``events`` are exactly those (nothing else was lost)."""

    def __init__(self, events: list[dict[str, Any]], cause: Exception) -> None:
        super().__init__(f"{len(events)} traffic events not written: {cause}")
        self.events = events


class TrafficLog:
    """Append and read the Parquet traffic log under ``root``."""

    def __init__(
        self,
        root: str | Path,
        redaction: Redaction | None = None,
        retention_days: float | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.redaction = redaction or Redaction()
        if retention_days is not None and retention_days <= 0:
            raise UserError(f"traffic_log.retention_days: expected > 0, got {retention_days}")
        self.retention_days = retention_days

    # --- writing ------------------------------------------------------------------------------

    def event(self, kind: str, **values: Any) -> dict[str, Any]:
        """One event in the log's schema, text redacted and lengths filled from the text."""
        if kind not in EVENT_KINDS:
            raise UserError(f"traffic event kind: expected one of {EVENT_KINDS}, got {kind!r}")
        unknown = set(values) - set(SCHEMA.names)
        if unknown:
            raise UserError(f"traffic event: unknown field(s) {', '.join(sorted(unknown))}")
        row: dict[str, Any] = dict.fromkeys(SCHEMA.names)
        row.update(values, kind=kind)
        row["ts"] = float(time.time() if row["ts"] is None else row["ts"])
        for text, chars in (("prompt", "prompt_chars"), ("completion", "completion_chars")):
            if row[chars] is None and row[text] is not None:
                row[chars] = len(row[text])
            row[text] = self.redaction.apply(row[text])
        if isinstance(row["label_probs"], dict):
            row["label_probs"] = {str(k): float(v) for k, v in row["label_probs"].items()}
        missing = [k for k in REQUIRED if row[k] in (None, "")]
        if missing:
            raise UserError(f"traffic event ({kind}): missing {', '.join(missing)}")
        return row

    def append(self, events: Sequence[dict[str, Any]]) -> list[Path]:
        """Write ``events`` (from :meth:`event`), one new file per (model, day, version).

        Each file appears whole or not at all. When a partition cannot be written the others
        still are, and ``AppendFailed`` carries exactly the events not written (to retry)."""
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for e in events:
            groups.setdefault((e["model"], day_of(e["ts"]), e["version"]), []).append(e)
        written: list[Path] = []
        unwritten: list[dict[str, Any]] = []
        error: Exception | None = None
        for (model, day, version), rows in sorted(groups.items()):
            try:
                written.append(self._write_part(self.partition(model, day, version), rows))
            except Exception as exc:  # the disk, the folder, pyarrow: kept for a retry
                unwritten += rows
                error = error or exc
        if error is not None:
            raise AppendFailed(unwritten, error)
        return written

    def _write_part(self, folder: Path, rows: list[dict[str, Any]]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        return folder / name

    def partition(self, model: str, day: str, version: str) -> Path:
        return self.root / f"model={_safe(model)}" / f"day={day}" / f"version={_safe(version)}"

    def apply_retention(self, now: float | None = None) -> list[Path]:
        """Delete day partitions older than ``retention_days``; returns what was removed."""
        if self.retention_days is None or not self.root.is_dir():
            return []
        now = time.time() if now is None else now
        cutoff = day_of(now - self.retention_days * 86400)
        removed = []
        for folder in sorted(self.root.glob("model=*/day=*")):
            if folder.name.removeprefix("day=") < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    # --- reading ------------------------------------------------------------------------------

    def files(
        self,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        versions: Iterable[str] | None = None,
    ) -> list[Path]:
        """Part files whose partition may hold events in ``[since, until)`` (pruned by day)."""
        if not self.root.is_dir():
            return []
        wanted = None if versions is None else {f"version={_safe(v)}" for v in versions}
        first = day_of(since) if since is not None else ""
        last = day_of(until) if until is not None else "9999"
        out = []
        for model_dir in sorted(self.root.glob(f"model={_safe(model) if model else '*'}")):
            for day_dir in sorted(model_dir.glob("day=*")):
                if not first <= day_dir.name.removeprefix("day=") <= last:
                    continue
                for version_dir in sorted(day_dir.glob("version=*")):
                    if wanted is None or version_dir.name in wanted:
                        out.extend(sorted(version_dir.glob("part-*.parquet")))
        return out

    def read(
        self,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        versions: Iterable[str] | None = None,
        kinds: Iterable[str] | None = None,
    ) -> TrafficRead:
        """Events with ``since <= ts < until``, oldest first; unreadable files are skipped."""
        versions = None if versions is None else list(versions)
        paths = self.files(model, since, until, versions)
        tables, skipped = [], []
        for path in paths:
            try:
                table = pq.read_table(path)
                missing = [c for c in REQUIRED if c not in table.column_names]
                if missing:
                    raise ValueError(f"not a traffic log file (no column {', '.join(missing)})")
                tables.append(_conform(table))
            except Exception as exc:  # a corrupt or foreign file costs only itself
                skip = Skipped(str(path), f"{type(exc).__name__}: {str(exc)[:200]}")
                logger.warning("traffic log: %s", skip.message())
                skipped.append(skip)
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        table = _filter(table, model, since, until, versions, kinds)
        return TrafficRead(table=table, files=len(paths), skipped=skipped)

    def lookup(self, request_id: str) -> TrafficRead:
        """Every event of one request (its answers, shadows, feedback and review)."""
        read = self.read()
        mask = pc.equal(read.table["request_id"], pa.scalar(request_id, pa.string()))
        return TrafficRead(read.table.filter(mask), read.files, read.skipped)


def _conform(table: pa.Table) -> pa.Table:
    """A file's table in the current schema (columns added since it was written are null)."""
    columns = []
    for f in SCHEMA:
        if f.name in table.column_names:
            columns.append(table[f.name].cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _filter(
    table: pa.Table,
    model: str | None,
    since: float | None,
    until: float | None,
    versions: list[str] | None,
    kinds: Iterable[str] | None,
) -> pa.Table:
    mask = pc.is_valid(table["ts"])
    if model is not None:
        mask = pc.and_(mask, pc.equal(table["model"], pa.scalar(model, pa.string())))
    if since is not None:
        mask = pc.and_(mask, pc.greater_equal(table["ts"], pa.scalar(since, pa.float64())))
    if until is not None:
        mask = pc.and_(mask, pc.less(table["ts"], pa.scalar(until, pa.float64())))
    if versions is not None:
        mask = pc.and_(mask, pc.is_in(table["version"], pa.array(versions, pa.string())))
    if kinds is not None:
        mask = pc.and_(mask, pc.is_in(table["kind"], pa.array(list(kinds), pa.string())))
    table = table.filter(mask)
    return table.take(pc.sort_indices(table, [("ts", "ascending")]))


def joined_requests(table: pa.Table) -> list[dict[str, Any]]:
    """Request rows with their feedback (``success``) and review (``review_label``) joined in.

    Feedback counts for the version it names (the log writes the answering version); a review
    outcome applies to the request's answering row.
    """
    rows = table.to_pylist()
    requests = [r for r in rows if r["kind"] == "request"]
    by_key = {(r["request_id"], r["version"]): r for r in requests}
    for r in rows:
        target = by_key.get((r["request_id"], r["version"]))
        if target is None:
            continue
        if r["kind"] == "feedback" and target.get("success") is None:
            target["success"], target["feedback_source"] = r["success"], r["feedback_source"]
        elif r["kind"] == "review":
            target["review_label"], target["reviewer"] = r["review_label"], r["reviewer"]
    return requests
