"""The human review queue, the request log and feedback: sqlite tables shared by router replicas.

- ``review_items``: answers the router flagged (low confidence) for a person to label. Resolved
  items become training rows via :meth:`ReviewQueue.export_labelled`.
- ``requests``: one row per answer a version gave (``arm`` says how it was routed); the
  controller reads it with :meth:`FeedbackStore.window`.
- ``feedback``: success/failure reports on logged answers, attributed to the version the request
  log says answered, never to one the caller claims.

All may live in one file (each class creates only its own tables). Times are unix seconds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hybridft import atomic
from hybridft.errors import UserError
from hybridft.serve.sqlite_store import SqliteDatabase

REVIEW_STATUSES = ("open", "resolved", "all")
ARMS = ("primary", "canary", "shadow", "forced")
FEEDBACK_SOURCES = ("user", "probe")

_REVIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    request_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    confidence REAL,
    threshold REAL,
    label_probs TEXT,
    task TEXT,
    status TEXT NOT NULL DEFAULT 'open',
    created_at REAL NOT NULL,
    label TEXT,
    reviewer TEXT,
    note TEXT,
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS review_items_status ON review_items(status, created_at)
"""


@dataclass(frozen=True)
class ReviewItem:
    """One flagged answer; ``label``/``reviewer``/``note``/``resolved_at`` once resolved."""

    request_id: str
    version: str
    model: str
    prompt: str
    answer: str
    confidence: float | None
    threshold: float | None
    label_probs: dict[str, float] | None
    task: str | None
    status: str
    created_at: float
    label: str | None = None
    reviewer: str | None = None
    note: str | None = None
    resolved_at: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ReviewItem:
        values = dict(row)
        probs = values.pop("label_probs")
        return cls(**values, label_probs=json.loads(probs) if probs is not None else None)


class ReviewQueue:
    """Flagged answers waiting for, or carrying, a human label."""

    def __init__(self, path: str | Path) -> None:
        self.db = SqliteDatabase(path, _REVIEW_SCHEMA)

    def enqueue(
        self,
        request_id: str,
        version: str,
        model: str,
        prompt: str,
        answer: str,
        confidence: float | None,
        threshold: float | None,
        label_probs: dict[str, float] | None = None,
        task: str | None = None,
    ) -> ReviewItem:
        """Add an open item.

        Raises:
            UserError: ``request_id`` is already in the queue.
        """
        item = ReviewItem(
            request_id,
            version,
            model,
            prompt,
            answer,
            confidence,
            threshold,
            label_probs,
            task,
            status="open",
            created_at=time.time(),
        )
        row = asdict(item)
        row["label_probs"] = (
            json.dumps(label_probs, sort_keys=True) if label_probs is not None else None
        )
        try:
            with self.db.write() as conn:
                _insert(conn, "review_items", row)
        except sqlite3.IntegrityError:
            raise UserError(f"review: request {request_id!r} is already in the queue") from None
        return item

    def get(self, request_id: str) -> ReviewItem:
        """Raises: UserError: ``request_id`` is not in the queue."""
        rows = self.db.read("SELECT * FROM review_items WHERE request_id = ?", (request_id,))
        if not rows:
            raise UserError(f"review: no item for request {request_id!r}")
        return ReviewItem.from_row(rows[0])

    def list(self, status: str = "open", limit: int | None = 100) -> list[ReviewItem]:
        """Items oldest first; ``status`` is ``open``, ``resolved`` or ``all``."""
        if status not in REVIEW_STATUSES:
            raise UserError(
                f"review status: expected one of {', '.join(REVIEW_STATUSES)}, got {status!r}"
            )
        where, params = ("", ()) if status == "all" else (" WHERE status = ?", (status,))
        sql = f"SELECT * FROM review_items{where} ORDER BY created_at, rowid LIMIT ?"
        rows = self.db.read(sql, (*params, -1 if limit is None else limit))
        return [ReviewItem.from_row(row) for row in rows]

    def resolve(self, request_id: str, label: str, reviewer: str, note: str = "") -> ReviewItem:
        """Record a reviewer's label on an open item.

        Raises:
            UserError: An empty label or reviewer, an unknown id, or an item already resolved.
        """
        for key, value in (("label", label), ("reviewer", reviewer)):
            if not value or not value.strip():
                raise UserError(f"review {key}: expected a non-empty string, got {value!r}")
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT status, reviewer FROM review_items WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is None:
                raise UserError(f"review: no item for request {request_id!r}")
            if row["status"] != "open":
                raise UserError(
                    f"review: request {request_id!r} is already resolved by {row['reviewer']!r}"
                )
            conn.execute(
                "UPDATE review_items SET status = 'resolved', label = ?, reviewer = ?, note = ?,"
                " resolved_at = ? WHERE request_id = ?",
                (label, reviewer, note, time.time(), request_id),
            )
        return self.get(request_id)

    def export_labelled(self, path_jsonl: str | Path, since: float | None = None) -> int:
        """Write resolved items (resolved at or after ``since``) as ``task``-format training rows.

        Each line is ``{"id", "prompt", "completion": label, "label", "task", "meta": {"source":
        "review", "request_id", "reviewer", "version", "model"}}``: the keys the data reader
        accepts (provenance goes in ``meta``; ``task`` only when known). The file is replaced
        atomically.

        Returns:
            The number of rows written.
        """
        sql = "SELECT * FROM review_items WHERE status = 'resolved'"
        params: tuple[Any, ...] = ()
        if since is not None:
            sql, params = sql + " AND resolved_at >= ?", (since,)
        items = [
            ReviewItem.from_row(r) for r in self.db.read(sql + " ORDER BY resolved_at", params)
        ]
        rows = [json.dumps(training_row(item), ensure_ascii=False) + "\n" for item in items]
        atomic.write_text(Path(path_jsonl), "".join(rows))
        return len(items)

    def counts(self) -> dict[str, int]:
        """``{"open": n, "resolved": n}``."""
        rows = self.db.read("SELECT status, COUNT(*) AS n FROM review_items GROUP BY status")
        out = {"open": 0, "resolved": 0}
        out.update({row["status"]: row["n"] for row in rows})
        return out


def training_row(item: ReviewItem) -> dict[str, Any]:
    """A resolved item as a ``task``-format row (see :meth:`ReviewQueue.export_labelled`)."""
    meta = {"source": "review", "request_id": item.request_id, "reviewer": item.reviewer or ""}
    meta |= {"version": item.version, "model": item.model}
    row: dict[str, Any] = {"id": item.request_id, "prompt": item.prompt}
    row |= {"completion": item.label, "label": item.label}
    if item.task:
        row["task"] = item.task
    return row | {"meta": meta}


_FEEDBACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL,
    version TEXT NOT NULL,
    arm TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    confidence REAL,
    predicted_label TEXT,
    completion_chars INTEGER NOT NULL,
    ts REAL NOT NULL
);
-- one answering (non-shadow) row per request; shadows may add one row per version
CREATE UNIQUE INDEX IF NOT EXISTS requests_answer ON requests(request_id) WHERE arm != 'shadow';
CREATE UNIQUE INDEX IF NOT EXISTS requests_shadow ON requests(request_id, version)
    WHERE arm = 'shadow';
CREATE INDEX IF NOT EXISTS requests_version_ts ON requests(version, ts);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    version TEXT NOT NULL,
    success INTEGER NOT NULL,
    source TEXT NOT NULL,
    score REAL,
    request_ts REAL NOT NULL,
    ts REAL NOT NULL,
    UNIQUE (request_id, version, source)
);
CREATE INDEX IF NOT EXISTS feedback_version_ts ON feedback(version, request_ts)
"""

WINDOW_COLUMNS = (
    "request_id", "version", "arm", "status_code", "latency_s", "prompt_tokens",
    "completion_tokens", "confidence", "predicted_label", "completion_chars", "ts",
)  # fmt: skip


class FeedbackStore:
    """The request log and the feedback on it."""

    def __init__(self, path: str | Path) -> None:
        self.db = SqliteDatabase(path, _FEEDBACK_SCHEMA)

    def log_request(
        self,
        request_id: str,
        version: str,
        arm: str,
        status_code: int,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int,
        confidence: float | None,
        predicted_label: str | None,
        completion_chars: int,
        ts: float | None = None,
    ) -> None:
        """Log one answer. ``ts`` defaults to now.

        Raises:
            UserError: An unknown arm, or the request already logged for this arm/version.
        """
        if arm not in ARMS:
            raise UserError(f"request log arm: expected one of {', '.join(ARMS)}, got {arm!r}")
        values = {
            "request_id": request_id, "version": version, "arm": arm,
            "status_code": int(status_code), "latency_s": float(latency_s),
            "prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
            "confidence": confidence, "predicted_label": predicted_label,
            "completion_chars": int(completion_chars), "ts": time.time() if ts is None else ts,
        }  # fmt: skip
        try:
            with self.db.write() as conn:
                _insert(conn, "requests", values)
        except sqlite3.IntegrityError:
            raise UserError(f"request log: request {request_id!r} is already logged") from None

    def record(
        self,
        request_id: str,
        version: str | None,
        success: bool,
        source: str,
        score: float | None = None,
    ) -> str:
        """Record feedback on a logged, successful answer; returns the version it is counted for.

        The version comes from the request log: ``version`` may be None (the answering, non-shadow
        version) or must name a version that answered this request (a shadow, for probes).

        Raises:
            UserError: An unknown source or request, a version that did not answer it, a failed
                answer (status >= 400), or feedback from this source already recorded.
        """
        if source not in FEEDBACK_SOURCES:
            raise UserError(
                f"feedback source: expected one of {', '.join(FEEDBACK_SOURCES)}, got {source!r}"
            )
        with self.db.write() as conn:
            rows = conn.execute(
                "SELECT version, arm, status_code, ts FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchall()
            row = _answering_row(request_id, version, rows)
            try:
                conn.execute(
                    "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        request_id,
                        row["version"],
                        int(bool(success)),
                        source,
                        score,
                        row["ts"],
                        time.time(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise UserError(
                    f"feedback: {source} feedback on request {request_id!r} is already recorded"
                ) from None
        return str(row["version"])

    def summary(
        self, version: str, since: float | None = None, source: str | None = None
    ) -> dict[str, int]:
        """``{"n", "successes"}`` over feedback on ``version``'s answers given at or after ``since``."""
        sql = "SELECT COUNT(*) AS n, COALESCE(SUM(success), 0) AS successes FROM feedback"
        sql += " WHERE version = ? AND request_ts >= ?"
        params: tuple[Any, ...] = (version, float("-inf") if since is None else since)
        if source is not None:
            sql, params = sql + " AND source = ?", (*params, source)
        row = self.db.read(sql, params)[0]
        return {"n": int(row["n"]), "successes": int(row["successes"])}

    def window(
        self, version: str, since: float, until: float | None = None, arm: str | None = None
    ) -> list[dict[str, Any]]:
        """Logged answers of ``version`` with ``since <= ts < until``, oldest first.

        Each dict has the keys in :data:`WINDOW_COLUMNS`.
        """
        sql = f"SELECT {', '.join(WINDOW_COLUMNS)} FROM requests WHERE version = ? AND ts >= ?"
        params: tuple[Any, ...] = (version, since)
        if until is not None:
            sql, params = sql + " AND ts < ?", (*params, until)
        if arm is not None:
            sql, params = sql + " AND arm = ?", (*params, arm)
        return [dict(row) for row in self.db.read(sql + " ORDER BY ts, rowid", params)]


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    names = ", ".join(row)
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + k for k in row)})", row)


def _answering_row(request_id: str, version: str | None, rows: list[sqlite3.Row]) -> sqlite3.Row:
    """The logged answer that feedback on ``request_id`` (optionally for ``version``) refers to."""
    if not rows:
        raise UserError(f"feedback: unknown request {request_id!r} (no logged answer)")
    if version is None:
        matches = [r for r in rows if r["arm"] != "shadow"]
        if not matches:
            raise UserError(
                f"feedback: request {request_id!r} has only shadow answers; name the version"
            )
    else:
        matches = [r for r in rows if r["version"] == version]
        if not matches:
            answered = ", ".join(sorted(r["version"] for r in rows))
            raise UserError(
                f"feedback: request {request_id!r} was answered by version {answered}, not {version!r}"
            )
    row = matches[0]
    if row["status_code"] >= 400:
        raise UserError(
            f"feedback: request {request_id!r} failed (status {row['status_code']}); only answered requests take feedback"
        )
    return row
