"""Rendering: ids are exactly apply_chat_template's; the mask is exactly the assistant turns."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hybridft.data.records import Example, Message
from hybridft.data.render import render_examples
from hybridft.errors import UserError

EXAMPLES = [
    Example((Message("user", "Rewrite politely"), Message("assistant", "Could you please help?"))),
    Example(
        (
            Message("system", "You triage tickets."),
            Message("user", "Ticket 4: my laptop cannot reach the VPN"),
            Message("assistant", "network"),
            Message("user", "And printing?"),
            Message("assistant", "hardware 🖨️ ok"),
        )
    ),
    Example((Message("user", "émoji 🎉 in the prompt"), Message("assistant", "  spaced  "))),
]
# A ChatML-like template with no {% generation %} markers: the mask must not depend on them.
CHATML = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def as_dicts(ex: Example) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in ex.messages]


def assistant_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])


def with_template(tokenizer, template):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_ids_and_mask_equal_hf_apply_chat_template(tokenizer):
    rendered = list(render_examples(EXAMPLES, tokenizer, max_len=None))
    for ex, item in zip(EXAMPLES, rendered, strict=True):
        hf = tokenizer.apply_chat_template(
            as_dicts(ex), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert item.input_ids.tolist() == hf["input_ids"]
        assert item.loss_mask.tolist() == hf["assistant_masks"]
        assert item.loss_mask.sum() > 0 and not item.truncated


def test_only_assistant_content_and_end_token_carry_loss(tokenizer):
    rendered = list(render_examples(EXAMPLES, tokenizer, max_len=None))
    for ex, item in zip(EXAMPLES, rendered, strict=True):
        answers = "".join(m.content + "<|end|>" for m in ex.messages if m.role == "assistant")
        assert assistant_text(tokenizer, item.input_ids, item.loss_mask) == answers
        # ...and every prompt token (role tags, user/system text) carries none.
        prompt_ids = item.input_ids[item.loss_mask == 0].tolist()
        for m in ex.messages:
            if m.role != "assistant":
                assert m.content in tokenizer.decode(prompt_ids)
        assert "<|assistant|>" in tokenizer.decode(prompt_ids)


def test_all_mode_masks_every_token_with_the_same_ids(tokenizer):
    only = list(render_examples(EXAMPLES, tokenizer, max_len=None))
    every = list(render_examples(EXAMPLES, tokenizer, loss="all", max_len=None))
    for a, b in zip(only, every, strict=True):
        assert b.input_ids.tolist() == a.input_ids.tolist()
        assert b.loss_mask.tolist() == [1] * len(b.input_ids)
        assert a.loss_mask.sum() < len(a.loss_mask)


def test_template_without_generation_markers_masks_the_same_way(tokenizer):
    tok = with_template(tokenizer, CHATML)
    for ex, item in zip(EXAMPLES, render_examples(EXAMPLES, tok, max_len=None), strict=True):
        assert item.input_ids.tolist() == tok.apply_chat_template(as_dicts(ex), return_dict=False)
        answers = "".join(m.content + "<|end|>" for m in ex.messages if m.role == "assistant")
        assert assistant_text(tok, item.input_ids, item.loss_mask) == answers


def test_prefix_spans_equal_the_templates_own_generation_markers(tokenizer):
    # The same template without its {% generation %} markers takes the prefix-render path.
    plain = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    assert plain != tokenizer.chat_template
    marked = list(render_examples(EXAMPLES, tokenizer, max_len=None))
    derived = list(render_examples(EXAMPLES, with_template(tokenizer, plain), max_len=None))
    for a, b in zip(marked, derived, strict=True):
        assert a.input_ids.tolist() == b.input_ids.tolist()
        assert a.loss_mask.tolist() == b.loss_mask.tolist()


def test_answer_ending_in_a_split_multibyte_character_keeps_all_its_tokens(tokenizer):
    # No end token after the answer: its last character (split into byte tokens) ends the span.
    tok = with_template(tokenizer, "{% for m in messages %}{{ m['content'] + '\n' }}{% endfor %}")
    ex = Example((Message("user", "q"), Message("assistant", "party 🎉")))
    assert len(tok.encode("🎉", add_special_tokens=False)) > 1
    (item,) = render_examples([ex], tok, max_len=None)
    assert assistant_text(tok, item.input_ids, item.loss_mask) == "party 🎉"


def test_tokenizer_without_template_uses_the_default_with_its_eos(tokenizer):
    tok = with_template(tokenizer, None)
    (item,) = render_examples(EXAMPLES[:1], tok, max_len=None)
    assert assistant_text(tok, item.input_ids, item.loss_mask) == "Could you please help?<|end|>"
    assert tok.decode(item.input_ids.tolist()).startswith("<|user|>\nRewrite politely<|end|>")


def test_truncation_keeps_the_first_tokens_and_is_reported(tokenizer):
    full = list(render_examples(EXAMPLES, tokenizer, max_len=None))
    stream = render_examples(EXAMPLES, tokenizer, max_len=12)
    cut = list(stream)
    for a, b in zip(full, cut, strict=True):
        assert b.input_ids.tolist() == a.input_ids.tolist()[:12]
        assert b.loss_mask.tolist() == a.loss_mask.tolist()[:12]
        assert b.truncated == (len(a.input_ids) > 12) and b.full_length == len(a.input_ids)
    report = stream.report
    assert report.truncated == sum(b.truncated for b in cut) > 0
    assert report.tokens == sum(len(b.input_ids) for b in cut)
    assert report.no_loss == sum(int(b.loss_mask.sum()) == 0 for b in cut)


def test_batches_do_not_change_the_result(tokenizer):
    many = [
        Example((Message("user", f"Ticket {i}"), Message("assistant", f"answer {i}")))
        for i in range(11)
    ]
    one = list(render_examples(many, tokenizer, batch_size=512))
    small = list(render_examples(many, tokenizer, batch_size=3))
    assert [x.input_ids.tolist() for x in one] == [x.input_ids.tolist() for x in small]
    assert [x.loss_mask.tolist() for x in one] == [x.loss_mask.tolist() for x in small]
    assert all(x.input_ids.dtype == np.int32 for x in one)


def test_a_template_that_rewrites_earlier_turns_is_a_located_error(tokenizer):
    unstable = (
        "{% for m in messages %}{% if loop.last %}FINAL {% endif %}"
        "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok = with_template(tokenizer, unstable)
    ex = Example(EXAMPLES[0].messages, file="d.jsonl", line=3)
    with pytest.raises(UserError, match=r"^d\.jsonl:3: messages\[1\]: the chat template renders"):
        list(render_examples([ex], tok))
    # `all` needs no answer spans, so the same template renders fine.
    assert len(list(render_examples([ex], tok, loss="all"))) == 1


def test_a_template_rejecting_a_conversation_is_a_located_error(tokenizer):
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('system messages are not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    tok = with_template(tokenizer, strict)
    examples = [Example(EXAMPLES[0].messages, file="a.jsonl", line=1)]
    examples.append(Example(EXAMPLES[1].messages, file="a.jsonl", line=2))
    with pytest.raises(UserError) as info:
        list(render_examples(examples, tok))
    assert str(info.value) == (
        "a.jsonl:2: messages: the chat template rejected this conversation: "
        "system messages are not supported"
    )
    with pytest.raises(UserError, match=r"^<example>: messages: the chat template rejected"):
        list(render_examples([Example(EXAMPLES[1].messages)], tok))


def test_unknown_loss_mode_is_a_user_error(tokenizer):
    with pytest.raises(UserError, match="loss: expected one of completion_only, all"):
        render_examples(EXAMPLES, tokenizer, loss="prompt")  # type: ignore[arg-type]
