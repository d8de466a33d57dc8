"""Review queue and feedback store: concurrent writers, resolve/export, attribution."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from hybridft.data.formats import parse_row
from hybridft.errors import UserError
from hybridft.serve.review import FeedbackStore, ReviewQueue

PER_PROCESS = 40


def _enqueue_many(path: str, tag: str) -> None:
    queue = ReviewQueue(path)
    for i in range(PER_PROCESS):
        queue.enqueue(f"{tag}-{i}", "3", "m", f"prompt {i}", "network", 0.4, 0.6, None, None)


def _enqueue(queue: ReviewQueue, request_id: str, task: str | None = "route") -> None:
    probs = {"network": 0.41, "billing": 0.39}
    queue.enqueue(request_id, "3", "m", f"ticket {request_id}", "network", 0.41, 0.6, probs, task)


def test_concurrent_enqueue_from_two_processes_loses_nothing(tmp_path) -> None:
    path = str(tmp_path / "serve.db")
    queue = ReviewQueue(path)
    _enqueue(queue, "parent")  # the parent holds an open connection across the fork
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_enqueue_many, args=(path, tag)) for tag in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    items = queue.list("all", limit=None)
    ids = {item.request_id for item in items}
    assert len(items) == 2 * PER_PROCESS + 1
    assert ids == {"parent"} | {f"{t}-{i}" for t in "ab" for i in range(PER_PROCESS)}
    assert queue.counts() == {"open": 2 * PER_PROCESS + 1, "resolved": 0}


def test_resolve_and_export_round_trip(tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "serve.db")
    for rid in ("r1", "r2", "r3"):
        _enqueue(queue, rid, task=None if rid == "r2" else "route")
    with pytest.raises(UserError, match="'r1' is already in the queue"):
        _enqueue(queue, "r1")
    item = queue.resolve("r1", "billing", "rita", note="wrong queue")
    assert (item.status, item.label, item.reviewer, item.note) == (
        "resolved",
        "billing",
        "rita",
        "wrong queue",
    )
    assert item.label_probs == {"network": 0.41, "billing": 0.39}
    cut = time.time()
    queue.resolve("r2", "network", "sam")
    with pytest.raises(UserError, match="'r1' is already resolved"):
        queue.resolve("r1", "network", "sam")
    with pytest.raises(UserError, match="'nope'"):
        queue.resolve("nope", "network", "sam")
    with pytest.raises(UserError, match="label"):
        queue.resolve("r3", "", "sam")
    assert queue.counts() == {"open": 1, "resolved": 2}
    assert [i.request_id for i in queue.list()] == ["r3"]
    assert [i.request_id for i in queue.list("resolved")] == ["r1", "r2"]

    out = tmp_path / "export" / "labelled.jsonl"
    assert queue.export_labelled(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {
        "id": "r1",
        "prompt": "ticket r1",
        "completion": "billing",
        "label": "billing",
        "task": "route",
        "meta": {
            "source": "review",
            "request_id": "r1",
            "reviewer": "rita",
            "version": "3",
            "model": "m",
        },
    }
    assert "task" not in rows[1]
    # The rows are what the project's own data reader accepts.
    examples = [parse_row(row, "task", labels=frozenset({"billing", "network"})) for row in rows]
    assert [e.label for e in examples] == ["billing", "network"]
    assert queue.export_labelled(out, since=cut) == 1
    assert json.loads(out.read_text())["id"] == "r2"


def _log(
    store: FeedbackStore,
    rid: str,
    version: str,
    arm: str,
    status: int = 200,
    ts: float | None = None,
) -> None:
    store.log_request(rid, version, arm, status, 0.05, 12, 1, 0.9, "network", 7, ts=ts)


def test_feedback_is_attributed_to_the_answering_version(tmp_path) -> None:
    path = tmp_path / "serve.db"
    ReviewQueue(path)  # the review queue and feedback share one file
    store = FeedbackStore(path)
    _log(store, "q1", "4", "canary")
    _log(store, "q1", "3", "shadow")
    _log(store, "q2", "3", "primary")
    _log(store, "q3", "3", "primary", status=500)
    assert store.record("q1", None, True, "user") == "4"
    assert store.record("q2", None, False, "user") == "3"
    assert store.record("q1", "3", True, "probe", score=0.8) == "3"  # a probe scoring the shadow
    assert store.summary("4") == {"n": 1, "successes": 1}
    assert store.summary("3") == {"n": 2, "successes": 1}
    assert store.summary("3", source="user") == {"n": 1, "successes": 0}
    with pytest.raises(UserError, match="answered by version 3, 4, not '5'"):
        store.record("q1", "5", True, "user")
    with pytest.raises(UserError, match="'q1' is already recorded"):
        store.record("q1", None, False, "user")
    with pytest.raises(UserError, match="'q3' failed"):
        store.record("q3", None, False, "user")
    with pytest.raises(UserError, match="source"):
        store.record("q2", None, True, "robot")


def test_feedback_on_unknown_request_is_rejected(tmp_path) -> None:
    store = FeedbackStore(tmp_path / "serve.db")
    with pytest.raises(UserError, match="unknown request 'ghost'"):
        store.record("ghost", "3", True, "user")
    _log(store, "s1", "3", "shadow")
    with pytest.raises(UserError, match="only shadow answers"):
        store.record("s1", None, True, "user")
    assert store.summary("3") == {"n": 0, "successes": 0}


def test_request_log_window_and_duplicates(tmp_path) -> None:
    store = FeedbackStore(tmp_path / "serve.db")
    for i in range(5):
        _log(store, f"w{i}", "3", "primary", ts=100.0 + i)
    _log(store, "other", "4", "canary", ts=101.0)
    rows = store.window("3", since=101.0, until=104.0)
    assert [r["request_id"] for r in rows] == ["w1", "w2", "w3"]
    assert rows[0]["latency_s"] == 0.05 and rows[0]["predicted_label"] == "network"
    assert len(store.window("3", since=0)) == 5 and len(store.window("3", 0, arm="canary")) == 0
    assert store.summary("3", since=103.0) == {"n": 0, "successes": 0}
    store.record("w4", None, True, "user")
    store.record("w1", None, True, "user")
    assert store.summary("3", since=103.0) == {"n": 1, "successes": 1}  # by answer time
    with pytest.raises(UserError, match="'w1' is already logged"):
        _log(store, "w1", "3", "primary")
    with pytest.raises(UserError, match="arm"):
        _log(store, "x", "3", "sideways")
