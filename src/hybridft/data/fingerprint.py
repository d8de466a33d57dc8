"""The one dataset fingerprint: what was trained on, independent of where the rows were stored.

``sha256:<hex>`` over

- the multiset of normalised rows (each row's messages, label and task; not its file, line, id or
  meta): the sum of per-row sha256 digests mod 2**256 plus the row count, so re-ordering,
  re-splitting or renaming files changes nothing while any change to any row changes it;
- the tokenizer's identity (sha256 of its ``tokenizer.json`` serialisation, i.e. vocab, merges,
  normalisation and added tokens);
- the chat template text rendering uses, and the loss-masking mode.

Streaming and constant memory: one pass, one running sum.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from hybridft.data.reader import read_examples
from hybridft.data.records import Example
from hybridft.data.render import LOSS_MODES, chat_template_of
from hybridft.errors import UserError

FINGERPRINT_VERSION = 1  # bump when the row encoding below changes
_MOD = 1 << 256


def row_digest(example: Example) -> bytes:
    """sha256 of a row's training content: its messages, label and task (JSON, canonical)."""
    content = [[[m.role, m.content] for m in example.messages], example.label, example.task]
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full serialisation (fast tokenizers) or of its vocab (others)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        vocab = sorted(tokenizer.get_vocab().items())
        text = json.dumps([vocab, sorted(map(str, tokenizer.all_special_tokens))])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ExampleHasher:
    """An order-independent running hash of rows: ``add`` them in any order, any number of times.

    ``tap`` passes Examples through while hashing them, so one read can feed both the renderer and
    the fingerprint.
    """

    def __init__(self) -> None:
        self.rows = 0
        self._sum = 0

    def add(self, example: Example) -> None:
        self._sum = (self._sum + int.from_bytes(row_digest(example), "big")) % _MOD
        self.rows += 1

    def tap(self, examples: Iterable[Example]) -> Iterator[Example]:
        for example in examples:
            self.add(example)
            yield example

    def fingerprint(self, tokenizer: Any, loss: str) -> str:
        """The fingerprint of the rows added so far, with this tokenizer and masking mode."""
        if loss not in LOSS_MODES:
            raise UserError(f"loss: expected one of {', '.join(LOSS_MODES)}, got {loss!r}")
        header = {
            "version": FINGERPRINT_VERSION,
            "rows": self.rows,
            "rows_sum": f"{self._sum:064x}",
            "tokenizer": tokenizer_identity(tokenizer),
            "chat_template": chat_template_of(tokenizer),
            "loss": loss,
        }
        text = json.dumps(header, sort_keys=True, ensure_ascii=False)
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint_examples(examples: Iterable[Example], tokenizer: Any, loss: str) -> str:
    """Fingerprint rows as rendered by ``tokenizer`` with masking mode ``loss``.

    Args:
        examples: Normalised Examples, in any order (the order does not change the result).
        tokenizer: The tokenizer rendering uses (its identity and chat template are hashed).
        loss: ``completion_only`` or ``all``.

    Returns:
        ``"sha256:"`` followed by 64 hex digits.
    """
    hasher = ExampleHasher()
    for example in examples:
        hasher.add(example)
    return hasher.fingerprint(tokenizer, loss)


def fingerprint_paths(
    paths: list[str],
    tokenizer: Any,
    loss: str = "completion_only",
    fmt: str = "auto",
    labels: list[str] | None = None,
) -> str:
    """Fingerprint the rows of files / globs (read with ``read_examples``; a bad row is an error).

    Args:
        paths: Files or globs, as for ``read_examples``.
        tokenizer: The tokenizer rendering uses.
        loss: ``completion_only`` or ``all``.
        fmt: Record format, as for ``read_examples``.
        labels: The source's label set, checked per row when given.

    Returns:
        ``"sha256:"`` followed by 64 hex digits.
    """
    return fingerprint_examples(read_examples(paths, fmt=fmt, labels=labels), tokenizer, loss)
