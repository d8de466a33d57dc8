"""The append-only audit log: every alias move and governance action, one JSON line each.

MLflow keeps only the current alias, so the history lives here: a JSONL file next to the sqlite
store (``.hybridft/audit.jsonl`` by default; ``HYBRIDFT_AUDIT_LOG`` overrides). Each record is one
``write`` + ``fsync`` under an exclusive ``fcntl.flock``, so concurrent processes on one machine
never interleave or lose lines. Successful alias moves are also mirrored onto the model version as
a tag (see ``gates.promote``) so the MLflow UI shows who moved it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybridft.errors import UserError

AUDIT_ENV = "HYBRIDFT_AUDIT_LOG"
DEFAULT_AUDIT = Path(".hybridft") / "audit.jsonl"
# Dev mode: one person plays several users on a local store (the demo, tests). Identities and
# roles then come from the environment (``registry.access``); every audit line says so.
DEV_MODE_ENV = "HYBRIDFT_DEV_MODE"


def in_dev_mode() -> bool:
    """Whether ``HYBRIDFT_DEV_MODE`` is on (``1``, ``true`` or ``yes``)."""
    return os.environ.get(DEV_MODE_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass
class AuditRecord:
    """One governance event. ``outcome`` is ``ok`` or ``refused``; ``reason`` says why."""

    who: str
    action: str  # approve | promote | gate | review_dataset | register_dataset | ...
    outcome: str
    reason: str = ""
    model: str = ""
    alias: str = ""
    from_version: str | None = None
    to_version: str | None = None
    roles: list[str] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    when: str = field(default_factory=lambda: utc_now())
    pid: int = field(default_factory=os.getpid)
    # True when written in dev mode: the identity was declared through the environment.
    dev_mode: bool = field(default_factory=in_dev_mode)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def default_audit_path(tracking_uri: str | None = None) -> Path:
    """``HYBRIDFT_AUDIT_LOG``, else ``audit.jsonl`` beside a sqlite store, else ``.hybridft/``."""
    if os.environ.get(AUDIT_ENV):
        return Path(os.environ[AUDIT_ENV])
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "audit.jsonl"
    return DEFAULT_AUDIT


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if absent) for the ``with`` block.

    The lock is per open file description, so it serialises processes and threads alike; it is
    released by the kernel if the holder dies.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append_audit(record: AuditRecord, path: str | Path) -> AuditRecord:
    """Append one record atomically with respect to other writers.

    Args:
        record: The event.
        path: The JSONL audit log (created with its folder if absent).

    Returns:
        The record as written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(record), sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # One write of the whole line, then fsync: a crash leaves whole lines or nothing new.
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"{path}: short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return record


def read_audit(
    path: str | Path,
    *,
    model: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    alias: str | None = None,
    who: str | None = None,
    since: str | None = None,
) -> list[AuditRecord]:
    """Records in the order written, filtered by every argument that is given.

    Args:
        path: The JSONL audit log; a missing file is an empty log.
        model: Only this registered model.
        action: Only this action (``promote``, ``approve``, ...).
        outcome: ``ok`` or ``refused``.
        alias: Only records about this alias.
        who: Only this user.
        since: Only records at or after this UTC ISO time.

    Returns:
        The matching records.

    Raises:
        UserError: A line that is not a JSON audit record (file:line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    wanted = {"model": model, "action": action, "outcome": outcome, "alias": alias, "who": who}
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                record = AuditRecord(**json.loads(line))
            except (ValueError, TypeError) as exc:
                raise UserError(f"{path}:{number}: not an audit record ({exc})") from None
            if any(v is not None and getattr(record, k) != v for k, v in wanted.items()):
                continue
            if since is not None and record.when < since:
                continue
            out.append(record)
    return out
