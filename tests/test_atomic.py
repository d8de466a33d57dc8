"""Files others resume from are written whole or not at all, by concurrent writers too; appends
under a lock lose no line."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest

from hybridft import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic.write_json(path, {"v": 1})

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_json(path, {"v": Boom()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_concurrent_writers_never_leave_half_a_file(tmp_path: Path) -> None:
    """Threads rewriting one file with big documents while a reader reads it: every read parses
    and is one writer's whole document (a shared or fixed temp name would mix or lose them)."""
    path = tmp_path / "trials.json"
    atomic.write_json(path, {"writer": -1, "rows": []})
    bad: list[str] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        try:
            for _ in range(30):
                atomic.write_json(path, {"writer": i, "rows": [i] * 20_000})
        except OSError as exc:  # a temp file another writer renamed away
            bad.append(f"writer {i}: {exc}")

    def reader() -> None:
        while not stop.is_set():
            try:
                doc = json.loads(path.read_text())
            except ValueError:
                bad.append("half a file")
                continue
            if doc["rows"] and set(doc["rows"]) != {doc["writer"]}:
                bad.append(f"mixed writers in {doc['writer']}'s file")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert bad == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_secret_is_written_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "channel.json"
    atomic.write_text(path, "token", mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _append(path: str, worker: int) -> None:
    for i in range(200):
        atomic.append_line(path, json.dumps({"worker": worker, "i": i, "pad": "x" * 3000}))


def test_concurrent_appends_lose_and_mix_no_line(tmp_path: Path) -> None:
    """Processes appending lines longer than a pipe buffer: every line arrives whole."""
    path = tmp_path / "history.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 800
    assert sorted((r["worker"], r["i"]) for r in rows) == [
        (w, i) for w in range(4) for i in range(200)
    ]
