"""The normalised record every format becomes: a chat with an answer, and where it came from.

Instruction rows (instruction / input / output), chat rows (OpenAI-style messages) and labelled task
rows (prompt / completion / label) all become an ``Example``: a list of messages whose assistant
turns are the completions. One shape downstream means one renderer and one fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Example:
    messages: tuple[Message, ...]
    source: str = ""  # the job's source name (or the file stem when read stand-alone)
    file: str = ""  # the file the row came from
    line: int = 0  # 1-based line (JSONL) or row number (Parquet)
    label: str | None = None  # for labelled task rows: the gold label
    task: str | None = None  # optional task name (instruction suites carry several)
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    id: str | None = field(default=None, compare=False)  # the row's own `id`, when it has one

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Everything before the final assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return self.messages[:last]

    @property
    def completion(self) -> str:
        """The final assistant turn's text (the target)."""
        return [m for m in self.messages if m.role == "assistant"][-1].content
