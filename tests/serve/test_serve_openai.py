"""The OpenAI-compatible deployment, driven over real HTTP by the official ``openai`` client.

One deployment for the module (on a free port of the shared Ray instance); Serve is shut down in
teardown, Ray keeps running for the other tests.
"""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
import torch

from hybridft.errors import UserError
from hybridft.model.hf import load_model, load_tokenizer
from hybridft.serve import deploy
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.openai_http import VERSION_HEADER

pytestmark = pytest.mark.ray

NAME, VERSION = "tiny-chat", "7"
TAG = f"{NAME}/{VERSION}"
MESSAGES = [
    {"role": "system", "content": "You route support tickets."},
    {"role": "user", "content": "Ticket 3: my laptop cannot reach the VPN"},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(ray_session, tiny_model_dir):
    from ray import serve

    url = deploy(str(tiny_model_dir), NAME, VERSION, port=_free_port(), app_name="test-openai")
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _post(base_url: str, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", timeout=30, **kwargs)


def _chat(**overrides):
    return {"model": NAME, "messages": MESSAGES, "max_tokens": 4, **overrides}


def test_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME]
    assert models[0].owned_by == "hybridft"
    assert client.models.retrieve(NAME).id == NAME


def test_chat_completion_counts_tokens_and_names_version(client, tokenizer):
    raw = client.chat.completions.with_raw_response.create(
        model=NAME, messages=MESSAGES, max_tokens=6
    )
    assert raw.headers[VERSION_HEADER] == TAG
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.model == NAME
    assert reply.system_fingerprint == TAG
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.message.role == "assistant"
    templated = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    usage = reply.usage
    assert usage.prompt_tokens == len(templated)
    assert 1 <= usage.completion_tokens <= 6
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 6


def test_greedy_and_seeded_sampling_are_deterministic(client):
    def ask(**kw) -> str:
        reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=8, **kw)
        return reply.choices[0].message.content

    assert ask() == ask()  # temperature defaults to 0: greedy
    assert ask(temperature=1.0, seed=11) == ask(temperature=1.0, seed=11)


def test_cached_decode_matches_transformers_generate(tiny_model_dir):
    engine = GenerationEngine(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir))
    prompt = engine.chat_prompt_ids(MESSAGES)
    ours = engine.generate(prompt, SamplingParams(max_tokens=10))
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        ref = engine.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=sorted(engine.eos_ids),
            pad_token_id=engine.tokenizer.pad_token_id,
        )[0, len(prompt) :]
    assert ours.completion_tokens == len(ref)
    assert ours.text == engine.tokenizer.decode(ref, skip_special_tokens=True)


def test_completions_endpoint(client, tokenizer):
    prompt = "Ticket 9: my laptop cannot reach the VPN"
    raw = client.completions.with_raw_response.create(model=NAME, prompt=prompt, max_tokens=5)
    assert raw.headers[VERSION_HEADER] == TAG
    reply = raw.parse()
    assert reply.object == "text_completion"
    assert reply.model == NAME and reply.system_fingerprint == TAG
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert reply.usage.completion_tokens <= 5


def test_stop_sequence_cuts_the_answer(client):
    def complete(**kw):
        return client.completions.create(model=NAME, prompt="Rewrite politely", **kw).choices[0]

    full = complete(max_tokens=12).text
    assert len(full) >= 2, "the tiny model should say something to cut"
    stop = full[len(full) // 2 :][:2]
    cut = complete(max_tokens=12, stop=[stop])
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason == "stop"


def test_streaming_equals_the_whole_answer(client):
    whole = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=8)
    stream = client.chat.completions.create(
        model=NAME,
        messages=MESSAGES,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        assert chunk.model == NAME and chunk.system_fingerprint == TAG
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.model_dump() == whole.usage.model_dump()


CHAT = "/chat/completions"
MALFORMED = {
    "content": b'{"model": "tiny-chat", "messages": [',
    "headers": {"content-type": "application/json"},
}
TOO_LONG = {"json": {"model": NAME, "prompt": "VPN " * 600}}
BAD_REQUESTS = [
    pytest.param(CHAT, MALFORMED, 400, None, id="malformed-json"),
    pytest.param(CHAT, {"json": _chat(model="gpt-9")}, 404, "model", id="unknown-model"),
    pytest.param(CHAT, {"json": _chat(max_tokens=10**5)}, 400, "max_tokens", id="max-tokens-limit"),
    pytest.param(CHAT, {"json": _chat(max_tokens="ten")}, 400, "max_tokens", id="max-tokens-type"),
    pytest.param(CHAT, {"json": _chat(messages="hi")}, 400, "messages", id="messages-type"),
    pytest.param(CHAT, {"json": _chat(temperature="hot")}, 400, "temperature", id="temp-type"),
    pytest.param(CHAT, {"json": _chat(stream="yes")}, 400, "stream", id="stream-type"),
    pytest.param(CHAT, {"json": {"model": NAME}}, 400, "messages", id="missing-messages"),
    pytest.param(CHAT, {"json": _chat(n=2)}, 400, "n", id="n-above-one"),
    pytest.param(CHAT, {"json": _chat(best_of=3)}, 400, "best_of", id="unknown-field"),
    pytest.param(CHAT, {"json": [1, 2]}, 400, None, id="body-not-object"),
    pytest.param("/completions", TOO_LONG, 400, "prompt", id="prompt-over-context"),
    pytest.param("/chat/complete", {"json": _chat()}, 404, None, id="unknown-path"),
]


@pytest.mark.parametrize(("path", "kwargs", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(base_url, path, kwargs, status, param):
    reply = _post(base_url, path, **kwargs)
    assert reply.status_code == status, reply.text
    assert reply.headers[VERSION_HEADER] == TAG
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=NAME, prompt="VPN " * 600)
    assert too_long.value.code == "context_length_exceeded"


def test_server_still_answers_after_bad_requests(base_url, client):
    for case in BAD_REQUESTS:
        path, kwargs, _, _ = case.values
        _post(base_url, path, **kwargs)
    health = httpx.get(base_url.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": NAME, "version": VERSION}
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert isinstance(reply.choices[0].message.content, str)


def test_deploy_rejects_a_directory_without_a_model(ray_session, tmp_path):
    with pytest.raises(UserError, match="model_dir"):
        deploy(str(tmp_path), NAME, VERSION, port=_free_port())
