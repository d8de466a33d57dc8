"""The one template renderer: Examples -> token ids + a loss mask, in batches.

How the completion-only mask is found, for any tokenizer with a chat template:

1. Render each conversation to text, as ``tokenizer.apply_chat_template(tokenize=False)`` does.
2. Find the character span of each assistant turn. A template with ``{% generation %}`` markers
   says where its answers are: the spans it reports while rendering (the same render) are used,
   exactly as HF's ``return_assistant_tokens_mask``. Any other template: turn i starts where
   ``messages[:i]`` rendered with ``add_generation_prompt=True`` ends, and ends where
   ``messages[:i+1]`` ends, less the whitespace a template writes between turns; both renders
   must be prefixes of the full text.
3. Tokenize the full text once (offsets on); a token carries loss when its characters overlap an
   assistant span, HF's rule. So the end-of-turn token the template writes after the answer
   (``<|end|>``, ``<|im_end|>``, ...) carries loss too: the model must learn to stop.

The ids are exactly ``apply_chat_template(messages, tokenize=True)``'s. A tokenizer with no chat
template gets ``DEFAULT_CHAT_TEMPLATE`` (role tag line, content, the tokenizer's eos token).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal, cast

import numpy as np
from transformers.utils.chat_template_utils import render_jinja_template

from hybridft.data.records import Example
from hybridft.errors import UserError, located
from hybridft.specs import DEFAULT_MAX_LEN

LossMode = Literal["completion_only", "all"]
LOSS_MODES = ("completion_only", "all")
# per example, the (start, end) character spans of its assistant turns in the rendered text
Spans = list[list[tuple[int, int]]]
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # the test HF itself applies

# Used only when a tokenizer has no chat template of its own. Same shape as the tiny model's.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + (eos_token or '') }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + (eos_token or '') }}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class Rendered:
    """One tokenized example. ``loss_mask[i] == 1`` when token i carries loss."""

    input_ids: np.ndarray  # int32, at most max_len long
    loss_mask: np.ndarray  # int8, same length
    source: str
    label: str | None
    task: str | None
    truncated: bool  # True when the full rendering was longer than max_len
    full_length: int  # tokens before truncation


@dataclass
class RenderReport:
    examples: int = 0
    tokens: int = 0  # after truncation
    loss_tokens: int = 0  # after truncation
    truncated: int = 0
    no_loss: int = 0  # examples left with no loss token (answer cut off by max_len)


def chat_template_of(tokenizer: Any) -> str:
    """The template text rendering uses: the tokenizer's own, else DEFAULT_CHAT_TEMPLATE."""
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.get_chat_template())
    return DEFAULT_CHAT_TEMPLATE


class RenderStream:
    """Rendered examples, produced lazily batch by batch; ``report`` is complete once exhausted."""

    def __init__(self, it: Iterator[Rendered], report: RenderReport) -> None:
        self._it = it
        self._report = report
        self._done = False

    def __iter__(self) -> Iterator[Rendered]:
        return self

    def __next__(self) -> Rendered:
        try:
            return next(self._it)
        except StopIteration:
            self._done = True
            raise

    @property
    def report(self) -> RenderReport:
        if not self._done:
            raise RuntimeError("RenderStream.report is only complete once the stream is exhausted")
        return self._report


def render_examples(
    examples: Iterable[Example],
    tokenizer: Any,
    loss: LossMode = "completion_only",
    max_len: int | None = DEFAULT_MAX_LEN,
    batch_size: int = 512,
) -> RenderStream:
    """Render Examples with the chat template into token ids and a loss mask, streaming.

    Args:
        examples: Normalised Examples (e.g. from ``read_examples``).
        tokenizer: A Hugging Face *fast* tokenizer (offsets are needed for the mask).
        loss: ``completion_only`` (assistant turns and their end-of-turn token carry loss) or
            ``all`` (every token does).
        max_len: Keep the first ``max_len`` tokens (None: no truncation).
        batch_size: Examples per tokenizer call (the Rust tokenizer encodes a batch in parallel).

    Returns:
        A RenderStream of Rendered, in input order; ``.report`` counts tokens and truncations.

    Raises:
        UserError: The tokenizer is not a fast one, or the chat template rejects a conversation
            (located at the Example's file:line).
    """
    if loss not in LOSS_MODES:
        raise UserError(f"loss: expected one of {', '.join(LOSS_MODES)}, got {loss!r}")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{type(tokenizer).__name__}: expected a fast (Rust) tokenizer")
    report = RenderReport()
    template = chat_template_of(tokenizer)
    masked = loss == "completion_only"
    use_markers = masked and bool(GENERATION_TAG.search(template))

    def generate() -> Iterator[Rendered]:
        it = iter(examples)
        # The Rust encoder releases the GIL: batch k is encoded in a worker thread while this
        # thread finishes batch k-1 and reads and templates batch k+1 (two batches in flight).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            while batch := list(islice(it, batch_size)):
                marked = _marked_spans(batch, tokenizer, template) if use_markers else None
                spans: Spans | None
                if marked is not None:
                    texts, spans = marked
                else:
                    convs = [_as_dicts(ex) for ex in batch]
                    texts = _apply(tokenizer, template, convs, batch, False)
                    spans = _assistant_spans(batch, tokenizer, template, texts) if masked else None
                # Same call apply_chat_template(tokenize=True) makes: the template wrote the
                # special tokens, so the tokenizer adds none.
                encoded = pool.submit(backend.encode_batch, texts, add_special_tokens=False)
                if pending is not None:
                    yield from _finish_batch(*pending, max_len, report)
                pending = (batch, spans, encoded)
            if pending is not None:
                yield from _finish_batch(*pending, max_len, report)

    return RenderStream(generate(), report)


def _where(ex: Example) -> tuple[str, int | None]:
    """file and line for an error about an Example (ones built in code have neither)."""
    return ex.file or f"<{ex.source or 'example'}>", ex.line or None


def _as_dicts(example: Example, stop: int | None = None) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in example.messages[:stop]]


def _apply(
    tokenizer: Any,
    template: str,
    convs: list[list[dict[str, str]]],
    batch: list[Example],
    gen: bool,
    owners: list[int] | None = None,
) -> list[str]:
    """Render conversations to text in one call; on a template error, name the example's row.

    ``owners[j]`` is the index in ``batch`` of the example ``convs[j]`` comes from (default j).
    """
    if not convs:
        return []
    try:
        return tokenizer.apply_chat_template(
            convs, chat_template=template, tokenize=False, add_generation_prompt=gen
        )
    except Exception:
        for j, conv in enumerate(convs):  # find the row it failed on
            try:
                tokenizer.apply_chat_template(
                    conv, chat_template=template, tokenize=False, add_generation_prompt=gen
                )
            except Exception as exc:
                ex = batch[owners[j] if owners is not None else j]
                problem = f"the chat template rejected this conversation: {exc}"
                raise located(*_where(ex), "messages", problem) from exc
        raise


def _marked_spans(
    batch: list[Example], tokenizer: Any, template: str
) -> tuple[list[str], Spans] | None:
    """Texts and answer spans from the template's own ``{% generation %}`` blocks, one render.

    The same renderer and variables ``apply_chat_template`` uses, so the text is identical.
    None when rendering fails: the plain path renders again and names the row at fault.
    """
    try:
        # transformers annotates the result as str; with the mask asked for it is (texts, spans)
        texts, indices = cast(
            tuple[list[str], Spans],
            render_jinja_template(
                conversations=[_as_dicts(ex) for ex in batch],
                chat_template=template,
                return_assistant_tokens_mask=True,
                **tokenizer.special_tokens_map,
            ),
        )
    except Exception:
        return None
    return texts, [[(start, end) for start, end in spans] for spans in indices]


def _assistant_spans(
    batch: list[Example], tokenizer: Any, template: str, texts: list[str]
) -> Spans:
    """Character spans of each example's assistant turns in its full rendering."""
    # Renders needed: the prefix before each assistant turn (with the generation prompt), and
    # each assistant turn's end; the last turn ends where the full text does.
    starts: list[tuple[int, int]] = []
    ends: list[tuple[int, int]] = []
    for k, ex in enumerate(batch):
        last = len(ex.messages) - 1
        for i, message in enumerate(ex.messages):
            if message.role == "assistant":
                starts.append((k, i))
                if i != last:
                    ends.append((k, i))
    start_convs = [_as_dicts(batch[k], i) for k, i in starts]
    start_texts = _apply(tokenizer, template, start_convs, batch, True, [k for k, _ in starts])
    end_convs = [_as_dicts(batch[k], i + 1) for k, i in ends]
    end_texts = _apply(tokenizer, template, end_convs, batch, False, [k for k, _ in ends])
    end_of = dict(zip(ends, end_texts, strict=True))
    spans: Spans = [[] for _ in batch]
    for (k, i), start_text in zip(starts, start_texts, strict=True):
        full = texts[k]
        end_text = end_of.get((k, i), full)
        if not (full.startswith(start_text) and full.startswith(end_text)):
            ex = batch[k]
            raise located(
                *_where(ex),
                f"messages[{i}]",
                "the chat template renders earlier turns differently once later ones follow, "
                "so the answer's tokens cannot be located (completion_only needs a template "
                "whose renderings of a conversation's prefixes are prefixes of its rendering)",
            )
        # Whitespace the template writes after a turn (e.g. the newline after <|end|>) is
        # not part of the answer; HF's {% generation %} blocks leave it out too.
        spans[k].append((len(start_text), len(end_text.rstrip())))
    return spans


def _token_range(encoding: Any, start: int, end: int) -> tuple[int, int] | None:
    """Token indices [a, b) of the tokens whose characters overlap [start, end)."""
    # Characters no token covers (trimmed offsets) are skipped; the first probe usually hits.
    covered = (encoding.char_to_token(c) for c in range(start, end))
    a = next((t for t in covered if t is not None), None)
    if a is None:
        return None
    covered = (encoding.char_to_token(c) for c in range(end - 1, start - 1, -1))
    b = next(t for t in covered if t is not None)
    # A character split over several byte tokens maps to its first token: widen to all of them.
    n = len(encoding)
    while a > 0 and (span := encoding.token_to_chars(a - 1)) and span[1] > start:
        a -= 1
    while b + 1 < n and (span := encoding.token_to_chars(b + 1)) and span[0] < end:
        b += 1
    return a, b + 1


def _finish_batch(
    batch: list[Example],
    spans: Spans | None,
    encoded: Future,
    max_len: int | None,
    report: RenderReport,
) -> Iterator[Rendered]:
    """Masks from the answer spans (None: ``all`` mode), truncation, counts."""
    for k, (ex, enc) in enumerate(zip(batch, encoded.result(), strict=True)):
        ids = np.asarray(enc.ids, dtype=np.int32)
        if spans is None:
            mask = np.ones(len(ids), dtype=np.int8)
        else:
            mask = np.zeros(len(ids), dtype=np.int8)
            for start, end in spans[k]:
                tokens = _token_range(enc, start, end)
                if tokens is not None:
                    mask[tokens[0] : tokens[1]] = 1
        full_length = len(ids)
        truncated = max_len is not None and full_length > max_len
        if truncated:
            ids, mask = ids[:max_len], mask[:max_len]
        loss_tokens = int(mask.sum())
        report.examples += 1
        report.tokens += len(ids)
        report.loss_tokens += loss_tokens
        report.truncated += truncated
        report.no_loss += loss_tokens == 0
        yield Rendered(ids, mask, ex.source, ex.label, ex.task, truncated, full_length)
