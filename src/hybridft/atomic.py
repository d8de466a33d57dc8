"""Files others resume from, written whole or not at all.

``write_text`` writes a unique temporary file beside the target (two writers never share one),
flushes it to disk, and renames it over the target: a reader sees the old file or the new one,
never half of one, and a crash leaves at worst a stray ``.<name>.*.tmp``. ``append_line`` appends
under an exclusive lock, so concurrent appenders never interleave or lose lines.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str, mode: int = 0o666) -> None:
    """Replace ``path`` with ``text`` atomically (temp file + fsync + rename). ``mode``: the
    new file's permissions before the umask (0o600 for a secret)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """``write_text`` of ``obj`` as JSON (``default=str`` for paths, timestamps)."""
    write_text(path, json.dumps(obj, indent=indent, default=str))


def append_line(path: str | Path, line: str) -> None:
    """Append one line under an exclusive lock (``fcntl.flock``), flushed to disk."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
