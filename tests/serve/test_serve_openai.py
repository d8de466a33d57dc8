"""The OpenAI-compatible deployment, driven over real HTTP by the official ``openai`` client.

One deployment for the module (on a free port of the shared Ray instance), behind its HTTP door
(an API key from the router's key store); Serve is shut down in teardown, Ray keeps running for
the other tests.
"""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
import torch
from helpers import free_port

from hybridft.errors import UserError
from hybridft.model.hf import load_model, load_tokenizer
from hybridft.serve import deploy
from hybridft.serve.canary import ServePaths
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.keys import KeyStore
from hybridft.serve.openai_http import VERSION_HEADER

pytestmark = pytest.mark.ray

NAME, VERSION = "tiny-chat", "7"
TAG = f"{NAME}/{VERSION}"
MESSAGES = [
    {"role": "system", "content": "You route support tickets."},
    {"role": "user", "content": "Ticket 3: my laptop cannot reach the VPN"},
]


@pytest.fixture(scope="module")
def serve_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def api_key(serve_dir) -> str:
    return KeyStore(ServePaths(serve_dir).keys).create("tests")


@pytest.fixture(scope="module")
def base_url(ray_session, tiny_model_dir, serve_dir, api_key):
    from ray import serve

    url = deploy(str(tiny_model_dir), NAME, VERSION, port=free_port(), app_name="test-openai",
                 serve_dir=serve_dir, engine="hf")  # fmt: skip
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _post(base_url: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {**kwargs.pop("headers", {}), **({"authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{base_url}{path}", timeout=30, headers=headers, **kwargs)


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
    pytest.param(CHAT, {"json": _chat(n=0)}, 400, "n", id="n-below-one"),
    pytest.param(CHAT, {"json": _chat(best_of=3)}, 400, "best_of", id="unknown-field"),
    pytest.param(CHAT, {"json": [1, 2]}, 400, None, id="body-not-object"),
    pytest.param("/completions", TOO_LONG, 400, "prompt", id="prompt-over-context"),
    pytest.param("/chat/complete", {"json": _chat()}, 404, None, id="unknown-path"),
]


@pytest.mark.parametrize(("path", "kwargs", "status", "param"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(base_url, api_key, path, kwargs, status, param):
    reply = _post(base_url, path, api_key, **kwargs)
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


def test_server_still_answers_after_bad_requests(base_url, api_key, client):
    for case in BAD_REQUESTS:
        path, kwargs, _, _ = case.values
        _post(base_url, path, api_key, **kwargs)
    health = httpx.get(base_url.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": NAME, "version": VERSION}
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert isinstance(reply.choices[0].message.content, str)


def test_deploy_rejects_a_directory_without_a_model(ray_session, tmp_path):
    with pytest.raises(UserError, match="model_dir"):
        deploy(str(tmp_path), NAME, VERSION, port=free_port())


# --- the door: the router's API keys, body cap and /metrics (serve.model_door) ---------------


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _requests_counted(base_url: str, route: str, status: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    reply = httpx.get(f"{_root(base_url)}/metrics", timeout=10)  # no key, as on the router
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name == "hybridft_requests_total" and sample.labels == {
                "version": VERSION, "arm": "direct", "route": route, "status": status,
            }:  # fmt: skip
                return sample.value
    return 0.0


def test_requests_without_a_valid_key_get_401(base_url, serve_dir, client):
    for path in ("/chat/completions", "/completions"):
        reply = _post(base_url, path, json=_chat())  # no Authorization header
        assert reply.status_code == 401, reply.text
        assert reply.headers[VERSION_HEADER] == TAG
        assert reply.json()["error"]["type"] == "authentication_error"
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{base_url}/models", timeout=10).status_code == 401
    wrong = openai.OpenAI(base_url=base_url, api_key="hft-" + "x" * 43, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert refused.value.code == "invalid_api_key"
    # a revoked key is refused at once (the key store is the router's, read per request)
    store = KeyStore(ServePaths(serve_dir).keys)
    revoked = openai.OpenAI(base_url=base_url, api_key=store.create("gone"), max_retries=0)
    assert revoked.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2).choices
    store.revoke("gone")
    with pytest.raises(openai.AuthenticationError):
        revoked.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    # the right key gets in; health stays open (deploy's own probe)
    assert client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2).choices
    assert httpx.get(f"{_root(base_url)}/health", timeout=10).status_code == 200


def _status_of_partial_post(base_url: str, api_key: str, head: dict[str, str], part: bytes) -> int:
    """Send the headers and only ``part`` of the body; the door must answer without the rest
    (a server that reads the whole body first waits for it and times out here)."""
    url = httpx.URL(base_url)
    lines = [f"POST {url.path}/completions HTTP/1.1", f"Host: {url.host}:{url.port}",
             f"Authorization: Bearer {api_key}", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in head.items())]  # fmt: skip
    with socket.create_connection((url.host, url.port), timeout=15) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + part)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_a_body_over_the_cap_is_refused_before_it_is_read(base_url, api_key, client):
    part = b'{"model": "tiny-chat", "prompt": "' + b"x" * 1000
    declared = {"Content-Length": str(5_000_000)}  # 5 MB announced, 1 KB sent
    assert _status_of_partial_post(base_url, api_key, declared, part) == 413
    # no length announced (chunked): refused once what arrived passes the cap
    chunk = b"x" * 70_000  # the router's limit is 64 KiB
    chunked = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"  # no last chunk: more to come
    unsized = {"Transfer-Encoding": "chunked"}
    assert _status_of_partial_post(base_url, api_key, unsized, chunked) == 413
    reply = _post(base_url, "/completions", api_key, json={"model": NAME, "prompt": "x" * 70_000})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert "limit is 65536" in reply.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as five_mb:  # the real client, as users meet it
        client.completions.create(model=NAME, prompt="x" * 5_000_000, max_tokens=1)
    assert five_mb.value.status_code == 413
    assert client.completions.create(model=NAME, prompt="still here", max_tokens=2).choices


def test_metrics_count_the_requests_the_door_answered(base_url, client):
    before = _requests_counted(base_url, "chat", "200")
    refused = _requests_counted(base_url, "chat", "401")
    client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    _post(base_url, "/chat/completions", json=_chat())  # no key
    assert _requests_counted(base_url, "chat", "200") == before + 1
    assert _requests_counted(base_url, "chat", "401") == refused + 1


def test_insecure_local_serves_loopback_clients_without_keys(base_url, tiny_model_dir):
    from ray import serve

    port = httpx.URL(base_url).port
    url = deploy(str(tiny_model_dir), NAME, VERSION, port=port, app_name="test-openai-local",
                 route_prefix="/local", insecure_local=True, engine="hf")  # fmt: skip
    try:
        reply = _post(url, "/chat/completions", json=_chat(max_tokens=2))  # no key at all
        assert reply.status_code == 200, reply.text
    finally:
        serve.delete("test-openai-local")


def test_deploy_refuses_an_empty_key_store_and_insecure_local_off_loopback(
    ray_session, tiny_model_dir, tmp_path
):
    with pytest.raises(UserError, match="hybridft keys create NAME"):
        deploy(str(tiny_model_dir), NAME, VERSION, serve_dir=tmp_path / "empty")
    with pytest.raises(UserError, match="loopback host only"):
        deploy(str(tiny_model_dir), NAME, VERSION, host="0.0.0.0", insecure_local=True)
