"""The Parquet traffic log: partitions, redaction, retention, joins, and damaged files skipped."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybridft.errors import UserError
from hybridft.telemetry.traffic_log import (
    SCHEMA,
    Redaction,
    TrafficLog,
    day_of,
    joined_requests,
)

DAY = 86400.0
T0 = 1_780_000_000.0  # a fixed time: partitions are by UTC day


def _requests(log: TrafficLog, n: int, version: str, t0: float = T0) -> list[dict]:
    return [
        log.event(
            "request", request_id=f"r{version}-{i}", ts=t0 + i, model="m", version=version,
            arm="primary", status_code=200, latency_s=0.01 * i, prompt_tokens=5 + i,
            completion_tokens=2, prompt=f"ticket {i}", completion="network",
            predicted_label="network", confidence=0.9, label_probs={"network": 0.9, "other": 0.1},
        )
        for i in range(n)
    ]  # fmt: skip


def test_append_partitions_by_model_day_version_and_reads_back_in_order(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path, Redaction("keep"))
    events = _requests(log, 3, "1") + _requests(log, 2, "2", t0=T0 + DAY)
    written = log.append(events[::-1])
    parts = {p.parent.relative_to(tmp_path).as_posix() for p in written}
    assert parts == {
        f"model=m/day={day_of(T0)}/version=1",
        f"model=m/day={day_of(T0 + DAY)}/version=2",
    }
    rows = log.read().rows()
    assert [r["request_id"] for r in rows] == [e["request_id"] for e in events]
    assert rows[0]["label_probs"] == [("network", 0.9), ("other", 0.1)]
    assert rows[0]["prompt_chars"] == len("ticket 0")
    assert [r["request_id"] for r in log.read(versions=["2"]).rows()] == ["r2-0", "r2-1"]
    since = log.read(since=T0 + 1, until=T0 + DAY).rows()
    assert [r["request_id"] for r in since] == ["r1-1", "r1-2"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_text_is_dropped_by_default_and_masked_on_request(tmp_path: Path) -> None:
    text = "mail bob@example.com, call +1 415 555 0100, card 4111 1111 1111 1111 from 10.1.2.3"
    dropped = TrafficLog(tmp_path / "a").event(
        "request", request_id="r", ts=T0, model="m", version="1", prompt=text, completion="ok"
    )
    assert dropped["prompt"] is None and dropped["completion"] is None
    assert dropped["prompt_chars"] == len(text) and dropped["completion_chars"] == 2
    masked = TrafficLog(tmp_path / "b", Redaction("mask", patterns=(r"bob",))).event(
        "request", request_id="r", ts=T0, model="m", version="1", prompt=text + " bob"
    )["prompt"]
    for secret in ("bob", "example.com", "415", "4111", "10.1.2.3"):
        assert secret not in masked
    for token in ("[EMAIL]", "[PHONE]", "[NUMBER]", "[IP]", "[REDACTED]"):
        assert token in masked
    with pytest.raises(UserError, match="mask_patterns"):
        Redaction("mask", patterns=("(",))
    with pytest.raises(UserError, match="expected drop, mask or keep"):
        Redaction("hash")  # type: ignore[arg-type]


def test_bad_events_are_refused_with_the_field_named(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path)
    with pytest.raises(UserError, match="unknown field"):
        log.event("request", request_id="r", model="m", version="1", colour="red")
    with pytest.raises(UserError, match="missing version"):
        log.event("request", request_id="r", model="m")
    with pytest.raises(UserError, match="kind"):
        log.event("click", request_id="r", model="m", version="1")


def test_retention_removes_only_old_days(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path, retention_days=2)
    now = T0 + 10 * DAY
    log.append(_requests(log, 1, "1", t0=now - 5 * DAY) + _requests(log, 1, "2", t0=now - DAY))
    removed = log.apply_retention(now=now)
    assert [p.name for p in removed] == [f"day={day_of(now - 5 * DAY)}"]
    assert [r["version"] for r in log.read().rows()] == ["2"]


def test_corrupt_and_partial_partitions_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = TrafficLog(tmp_path)
    good = log.append(_requests(log, 4, "1"))
    bad = log.append(_requests(log, 3, "2"))
    other = log.append(_requests(log, 2, "3"))
    # a truncated file (a crash mid-copy), a file that is not Parquet, a foreign Parquet file
    data = bad[0].read_bytes()
    bad[0].write_bytes(data[: len(data) // 2])
    (other[0].parent / "part-0-junk.parquet").write_text("not parquet")
    pq.write_table(pa.table({"x": [1, 2]}), good[0].parent / "part-1-foreign.parquet")
    # a writer's temporary file is not a part file yet
    (good[0].parent / ".part-2-live.parquet.tmp").write_bytes(data[:10])
    with caplog.at_level(logging.WARNING):
        read = log.read()
    assert read.files == 5
    assert sorted(Path(s.path).name for s in read.skipped) == sorted(
        [bad[0].name, "part-0-junk.parquet", "part-1-foreign.parquet"]
    )
    assert any("no column" in s.reason for s in read.skipped)
    assert all(s.path in caplog.text for s in read.skipped)
    assert sorted(r["version"] for r in read.rows()) == ["1"] * 4 + ["3"] * 2


def test_files_written_before_a_column_existed_still_read(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path)
    event = _requests(log, 1, "1")[0]
    old = SCHEMA.remove(SCHEMA.get_field_index("reviewer"))
    folder = log.partition("m", day_of(T0), "1")
    folder.mkdir(parents=True)
    row = {k: v for k, v in event.items() if k != "reviewer"}
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "part-0-old.parquet")
    rows = log.read().rows()
    assert len(rows) == 1 and rows[0]["reviewer"] is None and rows[0]["request_id"] == "r1-0"


def test_feedback_and_review_join_their_request(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path)
    events = _requests(log, 3, "1")
    events.append(
        log.event("request", request_id="r1-0", ts=T0 + 0.5, model="m", version="2", arm="shadow")
    )
    events.append(
        log.event("feedback", request_id="r1-0", ts=T0 + 9, model="m", version="1", success=False,
                  feedback_source="user")
    )  # fmt: skip
    events.append(
        log.event("review", request_id="r1-2", ts=T0 + 9, model="m", version="1",
                  review_label="hardware", reviewer="carol")
    )  # fmt: skip
    log.append(events)
    joined = {(r["request_id"], r["version"]): r for r in joined_requests(log.read().table)}
    assert len(joined) == 4
    assert joined[("r1-0", "1")]["success"] is False
    assert joined[("r1-0", "2")]["success"] is None  # the shadow's answer was not judged
    assert joined[("r1-2", "1")]["review_label"] == "hardware"
    assert joined[("r1-1", "1")]["success"] is None
    assert [r["kind"] for r in log.lookup("r1-0").rows()] == ["request", "request", "feedback"]


def test_many_flushes_read_back_every_row(tmp_path: Path) -> None:
    log = TrafficLog(tmp_path)
    n = 0
    for batch in range(20):
        log.append(_requests(log, 7, "1", t0=T0 + batch * 100))
        n += 7
    read = log.read()
    assert read.files == 20 and read.table.num_rows == n and not read.skipped


def test_the_routers_writer_logs_each_answer_to_sqlite_and_parquet(tmp_path: Path) -> None:
    """One Answer -> the controller's request-log row and the monitor's Parquet event, written
    off the request path: buffered, then flushed as one file per partition."""
    from hybridft.serve.review import FeedbackStore
    from hybridft.serve.traffic import Answer, RequestLogWriter

    store = FeedbackStore(tmp_path / "traffic.db")
    log = TrafficLog(tmp_path / "traffic", retention_days=30)
    writer = RequestLogWriter(store, None, log, flush_s=3600)  # only an explicit flush writes
    ext = {"label": "network", "confidence": 0.8, "label_probs": {"network": 0.8, "other": 0.2},
           "task": "it_desk", "flagged_for_review": True}  # fmt: skip
    for i in range(3):
        writer.log_answer(
            Answer(f"r{i}", "desk", "2", "canary", 200, 0.1, "my e-mail is a@b.c", "network",
                   prompt_tokens=7, completion_tokens=1, ext=ext)
        )  # fmt: skip
    writer.log_answer(Answer("s0", "desk", "1", "primary", 200, 0.2, "hi", completion_chars=12))
    writer.put_event("feedback", request_id="r0", model="desk", version="2", success=True,
                     feedback_source="user")  # fmt: skip
    time.sleep(0.2)
    assert len(store.window("2", 0)) == 3 and not log.files()  # sqlite now, Parquet buffered
    writer.flush()
    assert len(log.files()) == 2  # one file per version partition
    rows = {(r["kind"], r["request_id"]): r for r in log.read().rows()}
    r0 = rows[("request", "r0")]
    assert (r0["arm"], r0["predicted_label"], r0["flagged"], r0["task"]) == (
        "canary",
        "network",
        True,
        "it_desk",
    )
    assert r0["prompt"] is None and r0["prompt_chars"] == len("my e-mail is a@b.c")
    assert rows[("request", "s0")]["completion_chars"] == 12
    assert rows[("feedback", "r0")]["success"] is True
    writer.close()


def test_a_failed_write_keeps_the_events_and_a_close_writes_them(tmp_path: Path) -> None:
    """A partition that cannot be written (its folder is a file here: a real OSError, as root
    too) keeps its events for the next flush; the others are written at once; closing writes
    what is left. Every answer handed to the writer reaches the log exactly once."""
    from hybridft.serve.review import FeedbackStore
    from hybridft.serve.traffic import Answer, RequestLogWriter

    log = TrafficLog(tmp_path / "traffic", retention_days=30)
    writer = RequestLogWriter(FeedbackStore(tmp_path / "traffic.db"), None, log, flush_s=3600)
    blocked = log.partition("desk", day_of(time.time()), "2")
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")  # version 2's partition cannot be made
    for i in range(5):
        writer.log_answer(Answer(f"a{i}", "desk", "1", "primary", 200, 0.1, "hi"))
        writer.log_answer(Answer(f"b{i}", "desk", "2", "canary", 200, 0.1, "hi"))
    writer.flush()
    assert sorted(r["request_id"] for r in log.read().rows()) == [f"a{i}" for i in range(5)]
    blocked.unlink()  # the fault clears: the kept events go out with the next write
    writer.log_answer(Answer("c0", "desk", "1", "primary", 200, 0.1, "hi"))
    writer.close()  # what a replica's shutdown does (CanaryRouter.__del__)
    ids = sorted(r["request_id"] for r in log.read().rows())
    assert ids == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)] + ["c0"])
