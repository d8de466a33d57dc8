"""Record formats: check one raw row (a dict from JSONL or Parquet), normalise it into an Example.

Three formats, plus ``auto`` which picks one per row from its keys:

- ``instruction``: ``instruction``, optional ``input``, ``output``
  -> [user: instruction (+ "\\n\\n" + input when it is not blank), assistant: output]
- ``chat``: ``messages``, OpenAI style ``[{role, content}, ...]`` ending with an assistant turn
- ``task``: ``prompt``, ``completion``, optional ``label`` -> [user: prompt, assistant: completion]

Every format also allows ``id`` (string or integer), ``task`` (string) and ``meta`` (object of
strings). Any other key is an error. A problem is raised as ``RowError(key, problem)``; the reader
adds the file and line.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from typing import Any

from hybridft.data.records import ROLES, Example, Message

FORMATS = ("auto", "instruction", "chat", "task")
META_KEYS = ("id", "task", "meta")
FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "input", "output", *META_KEYS),
    "chat": ("messages", *META_KEYS),
    "task": ("prompt", "completion", "label", *META_KEYS),
}
# The key that identifies each format when the format is `auto`.
MARKERS = {"instruction": "instruction", "messages": "chat", "prompt": "task"}
MESSAGE_KEYS = ("role", "content")


class RowError(Exception):
    """One problem with one row: the key it concerns ("" for the whole row) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def describe(value: Any) -> str:
    """A short, user-facing rendering of a value for "got ..." messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 40 else text[:36] + '..."'
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return f"a {type(value).__name__}"


def _quoted(keys: Iterable[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys)


def _check_keys(row: dict[str, Any], allowed: tuple[str, ...], what: str, prefix: str = "") -> None:
    for key in row:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"{what} allows {_quoted(allowed)}"
            name = f"{prefix}.{key}" if prefix else key  # nested keys by path: messages[1].rol
            raise RowError("", f"unknown key '{name}' ({hint})")


def _required(row: dict[str, Any], key: str, name: str = "") -> str:
    """A string that must be present and not blank (whitespace only counts as empty)."""
    if key not in row:
        raise RowError(name or key, "required key is missing")
    value = _optional(row, key, name)
    if value is None:
        raise RowError(name or key, "expected a string, got null")
    if not value.strip():
        raise RowError(name or key, f"expected a non-empty string, got {describe(value)}")
    return value


def _optional(row: dict[str, Any], key: str, name: str = "") -> str | None:
    """A string that may be absent (or null)."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise RowError(name or key, f"expected a string, got {describe(value)}")
    return value


def _metadata(row: dict[str, Any]) -> tuple[str | None, str | None, dict[str, str]]:
    """The optional ``id``, ``task`` and ``meta`` keys, checked."""
    row_id = row.get("id")
    if row_id is not None:
        if isinstance(row_id, bool) or not isinstance(row_id, str | int):
            raise RowError("id", f"expected a string or an integer, got {describe(row_id)}")
        row_id = str(row_id)
    task = row.get("task")
    if task is not None and (not isinstance(task, str) or not task.strip()):
        raise RowError("task", f"expected a non-empty string, got {describe(task)}")
    meta = row.get("meta")
    if meta is None:
        return row_id, task, {}
    if not isinstance(meta, dict):
        raise RowError("meta", f"expected an object of strings, got {describe(meta)}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise RowError(f"meta.{key}", f"expected a string, got {describe(value)}")
    return row_id, task, dict(meta)


def _instruction(row: dict[str, Any]) -> tuple[tuple[Message, ...], str | None]:
    _check_keys(row, FORMAT_KEYS["instruction"], "format 'instruction'")
    instruction = _required(row, "instruction")
    extra = _optional(row, "input")
    output = _required(row, "output")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return (Message("user", prompt), Message("assistant", output)), None


def _chat(row: dict[str, Any]) -> tuple[tuple[Message, ...], str | None]:
    _check_keys(row, FORMAT_KEYS["chat"], "format 'chat'")
    messages = row.get("messages")
    if messages is None and "messages" not in row:
        raise RowError("messages", "required key is missing")
    if not isinstance(messages, list) or not messages:
        got = describe(messages)
        raise RowError("messages", f"expected a non-empty list of messages, got {got}")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            got = describe(message)
            raise RowError(where, f"expected an object with role and content, got {got}")
        _check_keys(message, MESSAGE_KEYS, "a message", prefix=where)
        role = _required(message, "role", f"{where}.role")
        if role not in ROLES:
            expected = ", ".join(ROLES)
            raise RowError(f"{where}.role", f"expected one of {expected}, got {describe(role)}")
        out.append(Message(role, _required(message, "content", f"{where}.content")))
    if out[-1].role != "assistant":
        last = out[-1].role
        raise RowError("messages", f"expected the last message to be the assistant's, got {last}")
    if out[0].role == "assistant":
        # A template needs a prompt to condition the first answer on (and most reject this order).
        raise RowError("messages[0].role", "expected system or user before the first answer")
    return tuple(out), None


def _task(
    row: dict[str, Any], labels: frozenset[str] | None
) -> tuple[tuple[Message, ...], str | None]:
    _check_keys(row, FORMAT_KEYS["task"], "format 'task'")
    prompt = _required(row, "prompt")
    completion = _required(row, "completion")
    # A declared label set makes the label required: an unlabelled row cannot be scored.
    label = _optional(row, "label") if labels is None else _required(row, "label")
    if labels is not None and label not in labels:
        allowed = ", ".join(f'"{x}"' for x in sorted(labels))
        got = describe(label)
        raise RowError("label", f"expected one of the source's labels ({allowed}), got {got}")
    return (Message("user", prompt), Message("assistant", completion)), label


def detect_format(row: dict[str, Any]) -> str:
    """The format of a row from its marker key: ``instruction``, ``messages`` or ``prompt``."""
    found = [key for key in MARKERS if key in row]
    if len(found) == 1:
        return MARKERS[found[0]]
    if found:
        raise RowError("", f"ambiguous record: it has both {' and '.join(map(repr, found))} keys")
    expected = "'instruction' (instruction), 'messages' (chat) or 'prompt' (task)"
    hints = [
        f"did you mean '{close[0]}'?"
        for key in row
        if (close := difflib.get_close_matches(str(key), list(MARKERS), n=1, cutoff=0.6))
    ]
    got = _quoted(map(str, row)) if row else "no keys"
    suffix = f" ({hints[0]})" if hints else ""
    raise RowError("", f"expected a record with a key {expected}, got {got}{suffix}")


_PARSERS: dict[str, Callable[..., tuple[tuple[Message, ...], str | None]]] = {
    "instruction": lambda row, labels: _instruction(row),
    "chat": lambda row, labels: _chat(row),
    "task": _task,
}


def parse_row(
    row: Any,
    fmt: str,
    *,
    source: str = "",
    file: str = "",
    line: int = 0,
    labels: frozenset[str] | None = None,
) -> Example:
    """Check one raw row and normalise it into an Example.

    Args:
        row: The decoded row (a JSON object or a Parquet row as a dict).
        fmt: ``auto``, ``instruction``, ``chat`` or ``task``.
        source: The source name recorded on the Example.
        file: The file the row came from (recorded, not used in messages).
        line: The row's 1-based line (JSONL) or row number (Parquet).
        labels: The source's label set; task rows must then carry a label in it.

    Returns:
        The normalised Example.

    Raises:
        RowError: The first problem found, as (key, problem).
    """
    if not isinstance(row, dict):
        raise RowError("", f"expected a JSON object, got {describe(row)}")
    kind = detect_format(row) if fmt == "auto" else fmt
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ValueError(f"unknown record format {fmt!r}; expected one of {', '.join(FORMATS)}")
    messages, label = parser(row, labels)
    row_id, task, meta = _metadata(row)
    return Example(
        messages=messages,
        source=source,
        file=file,
        line=line,
        label=label,
        task=task,
        meta=meta,
        id=row_id,
    )
