"""The audit log: concurrent appends never lose or interleave lines; filters; corrupt lines."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from hybridft.errors import UserError
from hybridft.registry.audit import AuditRecord, append_audit, default_audit_path, read_audit

WRITERS, PER_WRITER = 6, 40


def _writer(path: str, index: int) -> None:
    # 20 KB reasons: far above PIPE_BUF, so unsynchronised writes could tear.
    for seq in range(PER_WRITER):
        reason = f"{index}:{seq}:" + "x" * 20_000
        append_audit(AuditRecord(who=f"w{index}", action="gate", outcome="ok", reason=reason), path)


def test_concurrent_appends_are_whole_and_complete(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, i)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == WRITERS * PER_WRITER
    for index in range(WRITERS):
        mine = [json.loads(line)["reason"] for line in lines if f'"who": "w{index}"' in line]
        # every record present, each process's records in the order it wrote them
        assert [int(r.split(":")[1]) for r in mine] == list(range(PER_WRITER))


def test_read_audit_filters(tmp_path):
    path = tmp_path / "sub" / "audit.jsonl"
    append_audit(AuditRecord(who="dave", action="promote", outcome="ok", model="a"), path)
    append_audit(AuditRecord(who="dave", action="promote", outcome="refused", model="b"), path)
    middle = read_audit(path)[1].when
    append_audit(
        AuditRecord(who="carol", action="approve", outcome="ok", model="a", to_version="2"), path
    )
    assert len(read_audit(path)) == 3
    assert [r.model for r in read_audit(path, action="promote")] == ["a", "b"]
    assert [r.action for r in read_audit(path, model="a")] == ["promote", "approve"]
    assert [r.who for r in read_audit(path, outcome="refused")] == ["dave"]
    assert [r.who for r in read_audit(path, since=middle)] == ["dave", "carol"]
    assert read_audit(tmp_path / "missing.jsonl") == []
    record = read_audit(path, who="carol")[0]
    assert record.when.endswith("+00:00") and record.to_version == "2"


def test_corrupt_line_is_a_located_error(tmp_path):
    path = tmp_path / "audit.jsonl"
    append_audit(AuditRecord(who="dave", action="promote", outcome="ok"), path)
    with open(path, "a") as fh:
        fh.write('{"who": "half a rec\n')
    with pytest.raises(UserError, match=r"audit.jsonl:2: not an audit record"):
        read_audit(path)


def test_default_path_sits_beside_the_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("HYBRIDFT_AUDIT_LOG", raising=False)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert default_audit_path(uri) == tmp_path / "store" / "audit.jsonl"
    assert str(default_audit_path("http://mlflow:5000")) == ".hybridft/audit.jsonl"
    monkeypatch.setenv("HYBRIDFT_AUDIT_LOG", str(tmp_path / "elsewhere.jsonl"))
    assert default_audit_path(uri) == tmp_path / "elsewhere.jsonl"
