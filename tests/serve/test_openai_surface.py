"""The OpenAI surface clients rely on, through the official ``openai`` client against a real Serve
endpoint of the HF engine: logprobs (chat and legacy completions), echo, prompts as token ids or
lists, ``n``, ``response_format``, streaming with usage and logprobs, and clean 400s for what the
engine cannot do.

The numbers are checked as invariants: the logprobs served while generating equal a direct
forward pass of the model and the ``echo`` scoring of prompt + completion (<= 1e-4); lm-eval's
``local-completions`` log-likelihood request is answered as lm-eval reads it. One endpoint for
the module; Serve is shut down in teardown.
"""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from helpers import free_port

from hybridft.model.hf import load_model, load_tokenizer
from hybridft.serve import deploy
from hybridft.serve.canary import ServePaths
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.keys import KeyStore

pytestmark = pytest.mark.ray

NAME, VERSION = "tiny-surface", "3"
MESSAGES = [
    {"role": "system", "content": "You route support tickets."},
    {"role": "user", "content": "Ticket 3: my laptop cannot reach the VPN"},
]
PROMPT = "Ticket 9: my laptop cannot reach the VPN"
TOL = 1e-4


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-surface")


@pytest.fixture(scope="module")
def api_key(serve_dir) -> str:
    return KeyStore(ServePaths(serve_dir).keys).create("tests")


@pytest.fixture(scope="module")
def base_url(ray_session, tiny_model_dir, serve_dir, api_key):
    from ray import serve

    url = deploy(str(tiny_model_dir), NAME, VERSION, port=free_port(),
                 app_name="test-openai-surface", serve_dir=serve_dir, engine="hf")  # fmt: skip
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> GenerationEngine:
    """The same weights in this process (float32 on CPU, like the replica): the reference."""
    return GenerationEngine(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir))


def _post(base_url: str, api_key: str, path: str, body: dict) -> httpx.Response:
    headers = {"authorization": f"Bearer {api_key}"}
    return httpx.post(f"{base_url}{path}", json=body, headers=headers, timeout=60)


def _direct_logprobs(engine: GenerationEngine, ids: list[int]) -> torch.Tensor:
    """Row ``t``: log-softmax of one uncached forward pass's logits at ``t`` (predicts ``t+1``)."""
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def _local_ids(engine: GenerationEngine, prompt: list[int], params: SamplingParams) -> list[int]:
    out = engine.generate(prompt, params)
    assert out.logprobs is not None
    return [e.token_id for e in out.logprobs]


def _token_texts(engine: GenerationEngine, ids: list[int]) -> list[str]:
    return [engine.tokenizer.decode([i]) for i in ids]


# --- logprobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.5, "top_p": 0.9, "seed": 5}])
def test_chat_logprobs_equal_a_direct_forward_pass(client, engine, sampling):
    reply = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3, **sampling
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert len(content) == reply.usage.completion_tokens
    prompt = engine.chat_prompt_ids(MESSAGES)
    ids = _local_ids(engine, prompt, SamplingParams(max_tokens=6, logprobs=0, **sampling))
    assert [t.token for t in content] == _token_texts(engine, ids)  # the same tokens were picked
    direct = _direct_logprobs(engine, prompt + ids)
    for j, (entry, token) in enumerate(zip(content, ids, strict=True)):
        # The model's own distribution (temperature 1, before top_p), whatever sampled it.
        row = direct[len(prompt) - 1 + j]
        assert entry.logprob == pytest.approx(float(row[token]), abs=TOL)
        assert entry.bytes == list(entry.token.encode("utf-8"))
        top_values, top_ids = row.topk(3)
        assert [t.token for t in entry.top_logprobs] == _token_texts(engine, top_ids.tolist())
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            top_values.tolist(), abs=TOL
        )
    if not sampling:  # greedy: the token is the top alternative
        assert all(e.token == e.top_logprobs[0].token for e in content)


def test_echo_scores_prompt_and_completion_as_generation_reported_them(client, engine):
    made = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, logprobs=2)
    generated = made.choices[0].logprobs
    prompt = engine.text_prompt_ids(PROMPT)
    ids = _local_ids(engine, prompt, SamplingParams(max_tokens=6, logprobs=0))
    assert generated.tokens == _token_texts(engine, ids)
    assert generated.text_offset[0] == 0  # offsets index the choice's text

    # Score prompt + completion only (lm-eval's max_tokens: 0 + echo), prompt given as token ids.
    scored = client.completions.create(
        model=NAME, prompt=prompt + ids, max_tokens=0, echo=True, logprobs=2
    )
    choice = scored.choices[0]
    assert scored.usage.completion_tokens == 0 and choice.finish_reason == "length"
    assert choice.text == engine.tokenizer.decode(prompt + ids)
    lp = choice.logprobs
    assert lp.tokens == _token_texts(engine, prompt + ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    tail = lp.token_logprobs[len(prompt) :]
    assert tail == pytest.approx(generated.token_logprobs, abs=TOL)
    for mine, theirs in zip(lp.top_logprobs[len(prompt) :], generated.top_logprobs, strict=True):
        assert mine.keys() == theirs.keys()
        assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=TOL)
    direct = _direct_logprobs(engine, prompt + ids)
    want = [float(direct[t - 1, tok]) for t, tok in enumerate(prompt + ids) if t > 0]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=TOL)
    offsets = lp.text_offset
    assert offsets == sorted(offsets) and offsets[1] == len(lp.tokens[0])

    # echo + generation: the prompt's text and tokens come first.
    both = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, echo=True, logprobs=2)
    echoed = both.choices[0]
    assert echoed.text == PROMPT + made.choices[0].text
    assert echoed.logprobs.tokens == _token_texts(engine, prompt) + generated.tokens
    assert echoed.logprobs.text_offset[len(prompt)] == len(PROMPT)
    assert echoed.logprobs.token_logprobs[len(prompt) :] == pytest.approx(
        generated.token_logprobs, abs=TOL
    )
    plain = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=3, echo=True)
    assert plain.choices[0].text.startswith(PROMPT) and plain.choices[0].logprobs is None


def test_lm_eval_loglikelihood_request(base_url, api_key, engine):
    """lm-eval ``local-completions``: token-id prompts (context + continuation), echo, logprobs 1,
    max_tokens 1; it sums ``token_logprobs[ctxlen:-1]`` and checks greediness on the top-1."""
    context = engine.text_prompt_ids("Ticket 4: my laptop cannot reach the")
    continuations = [engine.text_prompt_ids(" VPN"), engine.text_prompt_ids(" printer")]
    prompts = [context + c for c in continuations]
    body = {"model": NAME, "prompt": prompts, "temperature": 0, "max_tokens": 1,
            "logprobs": 1, "seed": 1234, "echo": True}  # fmt: skip
    reply = _post(base_url, api_key, "/completions", body)
    assert reply.status_code == 200, reply.text
    choices = sorted(reply.json()["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1]
    for choice, ids in zip(choices, prompts, strict=True):
        token_logprobs = choice["logprobs"]["token_logprobs"]
        top = choice["logprobs"]["top_logprobs"]
        assert len(token_logprobs) == len(ids) + 1  # the prompt + the one generated token
        direct = _direct_logprobs(engine, ids)
        want = sum(float(direct[t - 1, ids[t]]) for t in range(len(context), len(ids)))
        assert sum(token_logprobs[len(context) : -1]) == pytest.approx(want, abs=TOL)
        greedy = all(
            lp == max(t.values())
            for lp, t in zip(token_logprobs[len(context) : -1], top[len(context) : -1], strict=True)
        )
        argmax = [int(direct[t - 1].argmax()) for t in range(len(context), len(ids))]
        assert greedy == (argmax == ids[len(context) :])


# --- prompts, n, seeds ------------------------------------------------------------------------


def test_token_id_prompts_answer_as_their_text(client, engine):
    ids = engine.text_prompt_ids(PROMPT)
    kw = {"model": NAME, "max_tokens": 5, "logprobs": 1}
    as_text = client.completions.create(prompt=PROMPT, **kw).choices[0]
    as_ids = client.completions.create(prompt=ids, **kw).choices[0]
    assert as_ids.model_dump() == as_text.model_dump()

    other = "Rewrite politely"
    listed = client.completions.create(prompt=[PROMPT, other], **kw)
    nested = client.completions.create(prompt=[ids, engine.text_prompt_ids(other)], **kw)
    alone = client.completions.create(prompt=other, **kw).choices[0]
    for reply in (listed, nested):
        assert [c.index for c in reply.choices] == [0, 1]
        assert reply.choices[0].text == as_text.text and reply.choices[1].text == alone.text
        assert reply.usage.prompt_tokens == len(ids) + len(engine.text_prompt_ids(other))


def test_n_choices_sample_with_seed_plus_index(client):
    kw = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0}
    reply = client.chat.completions.create(n=3, seed=7, **kw)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    for j, text in enumerate(texts):
        assert text == client.chat.completions.create(seed=7 + j, **kw).choices[0].message.content
    assert len(set(texts)) > 1, "independent seeds should not all agree"
    single = client.chat.completions.create(seed=7, **kw)
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert reply.usage.completion_tokens == sum(
        client.chat.completions.create(seed=7 + j, **kw).usage.completion_tokens for j in range(3)
    )
    greedy = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=4, n=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content

    both = client.completions.create(
        model=NAME, prompt=[PROMPT, "Rewrite politely"], n=2, max_tokens=4, temperature=1.0, seed=3
    )
    assert [c.index for c in both.choices] == [0, 1, 2, 3]  # prompt-major, n per prompt
    first = client.completions.create(
        model=NAME, prompt="Rewrite politely", n=2, max_tokens=4, temperature=1.0, seed=3
    )
    assert [c.text for c in both.choices[2:]] == [c.text for c in first.choices]


def test_stop_seed_and_top_p_still_hold(client):
    kw = {"model": NAME, "prompt": "Rewrite politely", "max_tokens": 10, "temperature": 0.9}
    once = client.completions.create(seed=11, top_p=0.5, **kw).choices[0].text
    assert client.completions.create(seed=11, top_p=0.5, **kw).choices[0].text == once
    full = client.completions.create(model=NAME, prompt="Rewrite politely", max_tokens=12)
    text = full.choices[0].text
    stop = text[len(text) // 2 :][:2]
    cut = client.completions.create(
        model=NAME, prompt="Rewrite politely", max_tokens=12, stop=[stop], n=2
    )
    assert [c.text for c in cut.choices] == [text[: text.find(stop)]] * 2
    assert [m.id for m in client.models.list().data] == [NAME]


# --- streaming ----------------------------------------------------------------------------------


def test_streamed_logprobs_and_usage_add_up_to_the_whole_answer(client):
    kw = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kw
    )
    text, entries, usage = "", [], None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            entries += choice.logprobs.content if choice.logprobs else []
        usage = chunk.usage or usage
    assert text == whole.choices[0].message.content
    assert [e.model_dump() for e in entries] == [
        e.model_dump() for e in whole.choices[0].logprobs.content
    ]
    assert usage.model_dump() == whole.usage.model_dump()

    legacy = {"model": NAME, "prompt": PROMPT, "max_tokens": 8, "logprobs": 2}
    whole_legacy = client.completions.create(**legacy).choices[0].logprobs
    tokens, offsets = [], []
    for chunk in client.completions.create(stream=True, **legacy):
        for choice in chunk.choices:
            if choice.logprobs:
                tokens += choice.logprobs.tokens
                offsets += choice.logprobs.text_offset
    assert tokens == whole_legacy.tokens and offsets == whole_legacy.text_offset


# --- what the engine cannot do: a 400 naming the field ------------------------------------------


def test_response_format_text_is_accepted_structured_output_is_refused(client):
    reply = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=3, response_format={"type": "text"}
    )
    assert isinstance(reply.choices[0].message.content, str)
    schema = {"name": "route", "schema": {"type": "object"}, "strict": True}
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": schema}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model=NAME, messages=MESSAGES, max_tokens=3, response_format=fmt
            )
        assert err.value.param == "response_format"
        assert fmt["type"] in err.value.message and "hf engine" in err.value.message


CHAT, COMPLETIONS = "/chat/completions", "/completions"
CHAT_BODY = {"model": NAME, "messages": MESSAGES, "max_tokens": 3}
TEXT_BODY = {"model": NAME, "prompt": PROMPT, "max_tokens": 3}
REFUSED = [
    pytest.param(CHAT, {"n": 0}, "n", "greater than or equal to 1, got 0", id="n-zero"),
    pytest.param(CHAT, {"n": 500}, "n", "less than or equal to 128, got 500", id="n-over"),
    pytest.param(CHAT, {"n": 2, "stream": True}, "n", "one choice", id="n-streamed"),
    pytest.param(CHAT, {"seed": 2**64}, "seed", "less than or equal to", id="seed-over-int64"),
    pytest.param(CHAT, {"top_logprobs": 2}, "top_logprobs", "logprobs: true", id="top-alone"),
    pytest.param(CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20", id="top-21"),
    pytest.param(
        CHAT, {"frequency_penalty": 0}, "frequency_penalty", "support", id="unknown-field"
    ),
    pytest.param(COMPLETIONS, {"logprobs": 6}, "logprobs", "5", id="legacy-logprobs-6"),
    pytest.param(COMPLETIONS, {"max_tokens": 0}, "max_tokens", "echo", id="zero-without-echo"),
    pytest.param(COMPLETIONS, {"echo": True, "stream": True}, "echo", "stream", id="echo-stream"),
    pytest.param(COMPLETIONS, {"prompt": [1, "a"]}, "prompt", "token ids", id="prompt-mixed"),
    pytest.param(COMPLETIONS, {"prompt": []}, "prompt", "token ids", id="prompt-empty-list"),
    pytest.param(COMPLETIONS, {"prompt": [[1], []]}, "prompt", "token-id lists", id="prompt-empty"),
    pytest.param(COMPLETIONS, {"prompt": [10**6]}, "prompt", "[0, ", id="token-out-of-vocab"),
    pytest.param(
        COMPLETIONS,
        {"prompt": ["a", "b"], "stream": True},
        "prompt",
        "one choice",
        id="prompts-streamed",
    ),  # fmt: skip
    pytest.param(
        COMPLETIONS,
        {"prompt": [1, 2], "labels": ["a", "b"]},
        "prompt",
        "labels",
        id="labels-token-ids",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("path", "fields", "param", "says"), REFUSED)
def test_refusals_name_the_field_in_one_clean_line(base_url, api_key, path, fields, param, says):
    body = {**(CHAT_BODY if path == CHAT else TEXT_BODY), **fields}
    reply = _post(base_url, api_key, path, body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    message = error["message"]
    assert says in message and "\n" not in message
    assert message.count("got") <= 1 and "more" not in message  # no doubled "got", no tail
    if param:
        assert message.startswith(f"{param}: ")


def test_label_probabilities_still_come_with_n_choices(client):
    reply = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=2, n=2, extra_body={"labels": ["network", "billing"]}
    )
    assert len(reply.choices) == 2
    ext = reply.model_extra["hybridft"]
    assert set(ext["label_probs"]) == {"network", "billing"}
    assert sum(ext["label_probs"].values()) == pytest.approx(1.0, abs=1e-6)
