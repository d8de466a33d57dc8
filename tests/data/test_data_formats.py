"""Record formats and reading: every format accepted, every bad row one exact file:line: key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridft.data.reader import read_examples
from hybridft.data.records import Example, Message
from hybridft.errors import UserError

GOOD = {"instruction": "Summarise", "output": "Short."}


def read_all(paths, **kwargs) -> list[Example]:
    return list(read_examples(paths if isinstance(paths, list) else [paths], **kwargs))


def first_error(path: str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        read_all(path, **kwargs)
    return str(info.value)


# --- accepted formats -----------------------------------------------------------------------


def test_instruction_rows_become_user_and_assistant_turns(write_jsonl):
    path = write_jsonl(
        "inst.jsonl",
        [
            {"instruction": "Translate", "input": "bonjour", "output": "hello"},
            {"instruction": "Say hi", "output": "hi"},
            {"instruction": "Say hi", "input": "", "output": "hi"},
        ],
    )
    a, b, c = read_all(path, fmt="instruction")
    assert a.messages == (Message("user", "Translate\n\nbonjour"), Message("assistant", "hello"))
    assert b.messages == c.messages == (Message("user", "Say hi"), Message("assistant", "hi"))
    assert (a.file, a.line, a.source) == (path, 1, "inst")


def test_chat_rows_keep_every_turn(write_jsonl):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ]
    path = write_jsonl("chat.jsonl", [{"messages": messages}])
    (ex,) = read_all(path, fmt="chat")
    assert [(m.role, m.content) for m in ex.messages] == [
        (m["role"], m["content"]) for m in messages
    ]
    assert ex.completion == "Bye!"


def test_task_rows_carry_their_label_and_metadata(write_jsonl):
    row = {
        "prompt": "VPN down",
        "completion": "network",
        "label": "network",
        "id": 17,
        "task": "triage",
        "meta": {"team": "it"},
    }
    path = write_jsonl("task.jsonl", [row])
    (ex,) = read_all(path, fmt="task", labels=["network", "billing"], source="tickets")
    assert ex.messages == (Message("user", "VPN down"), Message("assistant", "network"))
    assert (ex.label, ex.task, ex.meta, ex.id, ex.source) == (
        "network",
        "triage",
        {"team": "it"},
        "17",
        "tickets",
    )


def test_auto_detects_the_format_of_each_row(write_jsonl):
    path = write_jsonl(
        "mixed.jsonl",
        [
            GOOD,
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"prompt": "p", "completion": "c"},
        ],
    )
    rows = read_all(path)
    assert [ex.completion for ex in rows] == ["Short.", "b", "c"]


def test_globs_expand_sorted_and_blank_lines_keep_line_numbers(write_jsonl, tmp_path):
    write_jsonl("d/b.jsonl", [{**GOOD, "output": "from b"}])
    (tmp_path / "d" / "a.jsonl").write_text("\n\n" + json.dumps(GOOD) + "\n\n")
    rows = read_all(str(tmp_path / "d" / "*.jsonl"))
    assert [(Path(ex.file).name, ex.line) for ex in rows] == [("a.jsonl", 3), ("b.jsonl", 1)]


# --- bad rows: one exact line each ----------------------------------------------------------


def test_broken_json_on_line_7_names_file_line_and_column(write_jsonl):
    rows = [GOOD] * 6 + ['{"instruction": "a" "output": "b"}', GOOD]
    path = write_jsonl("x.jsonl", rows)
    assert first_error(path) == f"{path}:7: invalid JSON: Expecting ',' delimiter (col 21)"


def test_missing_output_on_line_9_names_the_key(write_jsonl):
    rows = [GOOD] * 8 + [{"instruction": "Summarise"}]
    path = write_jsonl("x.jsonl", rows)
    assert first_error(path) == f"{path}:9: output: required key is missing"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "a", "output": 3}, "output: expected a string, got 3"),
        ({"instruction": "a", "output": None}, "output: expected a string, got null"),
        ({"instruction": ["a"], "output": "b"}, "instruction: expected a string, got a list"),
        ({"instruction": "a", "output": ""}, 'output: expected a non-empty string, got ""'),
        (
            {"instruction": "  ", "output": "b"},
            'instruction: expected a non-empty string, got "  "',
        ),
        ({"instruction": "a", "input": 5, "output": "b"}, "input: expected a string, got 5"),
        (
            {"instruction": "a", "outptu": "b"},
            "unknown key 'outptu' (did you mean 'output'?)",
        ),
        (
            {"instruction": "a", "output": "b", "score": 1},
            "unknown key 'score' (format 'instruction' allows 'instruction', 'input', 'output', "
            "'id', 'task', 'meta')",
        ),
        ({**GOOD, "meta": ["x"]}, "meta: expected an object of strings, got a list"),
        ({**GOOD, "meta": {"team": 1}}, "meta.team: expected a string, got 1"),
        ({**GOOD, "id": True}, "id: expected a string or an integer, got true"),
        ({**GOOD, "task": ""}, 'task: expected a non-empty string, got ""'),
        ('["a", "b"]', "expected a JSON object, got a list"),
        (
            {"question": "q", "answer": "a"},
            "expected a record with a key 'instruction' (instruction), 'messages' (chat) or "
            "'prompt' (task), got 'question', 'answer'",
        ),
        (
            {"instrution": "a", "output": "b"},
            "expected a record with a key 'instruction' (instruction), 'messages' (chat) or "
            "'prompt' (task), got 'instrution', 'output' (did you mean 'instruction'?)",
        ),
        (
            {"instruction": "a", "prompt": "b"},
            "ambiguous record: it has both 'instruction' and 'prompt' keys",
        ),
    ],
)
def test_bad_values_are_one_line_errors(write_jsonl, row, message):
    path = write_jsonl("bad.jsonl", [GOOD, row])
    assert first_error(path) == f"{path}:2: {message}"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}],
            'messages[0].role: expected one of system, user, assistant, got "bot"',
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "messages: expected the last message to be the assistant's, got user",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}],
            'messages[1].content: expected a non-empty string, got ""',
        ),
        (
            [{"role": "user", "content": "a"}, {"rol": "assistant", "content": "b"}],
            "unknown key 'messages[1].rol' (did you mean 'role'?)",
        ),
        (
            [{"role": "assistant", "content": "b"}],
            "messages[0].role: expected system or user before the first answer",
        ),
        ([], "messages: expected a non-empty list of messages, got a list"),
        ("hi", 'messages: expected a non-empty list of messages, got "hi"'),
    ],
)
def test_bad_chats_name_the_message(write_jsonl, messages, message):
    path = write_jsonl("chat.jsonl", [{"messages": messages}])
    assert first_error(path, fmt="chat") == f"{path}:1: {message}"


def test_label_outside_the_label_set_names_the_set(write_jsonl):
    path = write_jsonl(
        "task.jsonl",
        [
            {"prompt": "p", "completion": "c", "label": "network"},
            {"prompt": "p", "completion": "c", "label": "netwrk"},
        ],
    )
    assert first_error(path, fmt="task", labels=["network", "billing"]) == (
        f'{path}:2: label: expected one of the source\'s labels ("billing", "network"), '
        'got "netwrk"'
    )


def test_declared_label_set_makes_the_label_required(write_jsonl):
    path = write_jsonl("task.jsonl", [{"prompt": "p", "completion": "c"}])
    assert first_error(path, labels=["a"]) == f"{path}:1: label: required key is missing"
    assert read_all(path)[0].label is None  # without a label set it stays optional


def test_invalid_utf8_is_a_row_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"instruction": "\xff"}\n')
    assert first_error(str(path)) == f"{path}:2: invalid UTF-8 at byte 18"


def test_a_json_array_file_is_refused_by_name(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([GOOD]))
    with pytest.raises(UserError, match=r"alpaca\.json: expected a file ending in \.jsonl, "):
        read_examples([str(path)])


def test_missing_file_and_empty_glob_are_user_errors(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"^.*nope\.jsonl: no such file$"):
        read_examples([missing])
    with pytest.raises(UserError, match=r"^.*/\*\.parquet: no such file$"):
        read_examples([str(tmp_path / "*.parquet")])


def test_errors_are_raised_lazily_so_reading_streams(write_jsonl):
    # A reader that loaded and checked the whole file first would fail before the first row.
    path = write_jsonl("lazy.jsonl", [GOOD] * 999 + ["{broken"])
    it = iter(read_examples([path]))
    assert next(it).completion == "Short."
    with pytest.raises(UserError, match=":1000: invalid JSON"):
        list(it)


# --- skip policy ----------------------------------------------------------------------------


def test_skip_writes_every_rejected_row_with_its_reason(write_jsonl, tmp_path):
    a = write_jsonl("a.jsonl", [GOOD, "{oops", "", {"instruction": "x"}, GOOD])
    b = write_jsonl("b.jsonl", [{"instruction": "a", "output": 3}, GOOD])
    rejects = tmp_path / "rejects" / "r.jsonl"
    stream = read_examples([a, b], on_bad_rows="skip", rejects_path=str(rejects))
    kept = list(stream)
    report = stream.report
    assert len(kept) == report.accepted == 3
    assert report.rejected == 3 and report.rows == report.accepted + report.rejected == 6
    assert [(f.rows, f.accepted, f.rejected) for f in report.files] == [(4, 2, 2), (2, 1, 1)]
    assert report.rejects_path == str(rejects)
    lines = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in lines] == [
        (a, 2, "invalid JSON: Expecting property name enclosed in double quotes (col 2)"),
        (a, 4, "output: required key is missing"),
        (b, 1, "output: expected a string, got 3"),
    ]
    assert lines[0]["raw"] == "{oops" and json.loads(lines[2]["raw"])["output"] == 3


def test_skip_truncates_stale_rejects_and_needs_a_path(write_jsonl, tmp_path):
    rejects = tmp_path / "r.jsonl"
    rejects.write_text("stale\n")
    path = write_jsonl("ok.jsonl", [GOOD])
    stream = read_examples([path], on_bad_rows="skip", rejects_path=str(rejects))
    assert len(list(stream)) == 1 and stream.report.rejected == 0
    assert rejects.read_text() == ""
    with pytest.raises(ValueError, match="rejects_path"):
        read_examples([path], on_bad_rows="skip")


def test_report_waits_for_the_end_and_a_stream_reads_once(write_jsonl):
    stream = read_examples([write_jsonl("ok.jsonl", [GOOD, GOOD])])
    with pytest.raises(RuntimeError):
        _ = stream.report
    assert len(list(stream)) == 2 and stream.report.accepted == 2
    with pytest.raises(RuntimeError):
        list(stream)


# --- parquet --------------------------------------------------------------------------------


def _write_parquet(path: Path, rows: list[dict], row_group_size: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    assert pq.ParquetFile(path).num_row_groups > 1
    return str(path)


def test_parquet_with_several_row_groups_is_read_batch_by_batch(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from hybridft.data import reader

    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "label": "a"} for i in range(50)]
    path = _write_parquet(tmp_path / "t.parquet", rows, row_group_size=16)
    pulled: list[int] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            pulled.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(reader, "PARQUET_BATCH_ROWS", 8)
    it = iter(read_examples([path], labels=["a"]))
    assert next(it).completion == "c0"
    assert pulled == [8]  # one batch in memory, not the file
    rest = list(it)
    assert [ex.line for ex in rest] == list(range(2, 51))
    assert sum(pulled) == 50


def test_parquet_rows_are_checked_like_jsonl_rows(tmp_path):
    rows = [
        {"instruction": "a", "output": "b", "input": None, "meta": {"k": "v"}},
        {"instruction": "a", "output": None, "input": "x", "meta": None},
    ]
    path = _write_parquet(tmp_path / "i.parquet", rows * 3, row_group_size=2)
    with pytest.raises(UserError) as info:
        read_all(path)
    assert str(info.value) == f"{path}:2: output: required key is missing"
    rejects = tmp_path / "r.jsonl"
    stream = read_examples([path], on_bad_rows="skip", rejects_path=str(rejects))
    kept = list(stream)
    assert [ex.line for ex in kept] == [1, 3, 5] and kept[0].meta == {"k": "v"}
    assert stream.report.rejected == 3
    raw = json.loads(json.loads(rejects.read_text().splitlines()[0])["raw"])
    assert raw == {"instruction": "a", "input": "x"}


def test_parquet_chat_rows_with_nested_messages(tmp_path):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path = _write_parquet(tmp_path / "c.parquet", [{"messages": conv}] * 4, row_group_size=2)
    rows = read_all(path, fmt="chat")
    assert len(rows) == 4 and rows[-1].messages[1] == Message("assistant", "yo")
