"""The vllm engine under the model deployment, driven by the official ``openai`` client over real
HTTP, checked against the hf engine on the same weights.

One vLLM server for the session (it takes ~30 s to start on 2 cores): the Serve application of
this module. Both engines run the model in float32 (``dtype: auto`` on CPU), so the numbers are
compared as invariants: greedy text is equal, logprobs and label scores agree to 1e-4 (vLLM's
kernels sum in another order: ~1e-6 seen), label probabilities to 1e-4.

The model is ``vllm_model_dir`` (conftest): the tiny Llama with a head size vLLM's CPU attention
supports and wide random weights, so answers and label scores vary with the prompt.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest
from helpers import free_port

from hybridft.errors import UserError
from hybridft.serve import deploy
from hybridft.serve.canary import ServePaths
from hybridft.serve.endpoint import check_serve_config
from hybridft.serve.engines import ENGINE_ENV, resolve_engine
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.keys import KeyStore
from hybridft.serve.launch import ServeModelArgs
from hybridft.serve.vllm_process import VLLM_PYTHON_ENV, vllm_python

NAME, VERSION = "tiny-vllm", "5"
PROMPTS = ["Ticket 3: my laptop cannot reach the VPN", "Rewrite politely", "hello"]
MESSAGES = [{"role": "user", "content": PROMPTS[0]}]
LABELS = ["network", "hardware", "access"]
TOL = 1e-4


@pytest.fixture(scope="module")
def model_dir(vllm_model_dir) -> Path:
    return vllm_model_dir


@pytest.fixture(scope="module")
def hf(model_dir) -> GenerationEngine:
    """The hf engine on the same weights, as a replica loads it: the reference."""
    return GenerationEngine.from_dir(model_dir)


@pytest.fixture(scope="module")
def api_key(tmp_path_factory) -> tuple[Path, str]:
    serve_dir = tmp_path_factory.mktemp("serve-vllm")
    return serve_dir, KeyStore(ServePaths(serve_dir).keys).create("tests")


@pytest.fixture(scope="module")
def base_url(ray_session, model_dir, api_key):
    from ray import serve

    url = deploy(str(model_dir), NAME, VERSION, port=free_port(), app_name="test-vllm",
                 serve_dir=api_key[0], engine="vllm")  # fmt: skip
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def client(base_url, api_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key[1], max_retries=0, timeout=60)


def _chat_ids(hf: GenerationEngine, text: str) -> list[int]:
    return hf.chat_prompt_ids([{"role": "user", "content": text}])


# --- configuration (no server) -------------------------------------------------------------


def test_a_missing_vllm_python_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setenv(VLLM_PYTHON_ENV, "/nonexistent/python")
    with pytest.raises(UserError, match=VLLM_PYTHON_ENV):
        vllm_python()


def test_the_engine_is_checked_where_it_is_configured(tiny_model_dir, tmp_path):
    args = {"model_dir": str(tiny_model_dir), "model_name": "m", "version": "1"}
    assert ServeModelArgs.model_validate({**args, "engine": "vllm"}).threads() == 1
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / name).write_text("{}")
    adapters = {"adapters": {"a": str(tmp_path)}}
    assert ServeModelArgs.model_validate({**args, **adapters, "engine": "vllm"}).adapters
    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n  - name: m\n    import_path: hybridft.serve.endpoint:build_version_app\n"
        "    args:\n      model: m\n      version: champion\n      engine: vlm\n"
    )
    with pytest.raises(UserError, match=r"serve.yaml:7: applications\[0\]\.args\.engine"):
        check_serve_config(config)


def test_auto_is_vllm_where_installed_else_hf_or_as_named(monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert resolve_engine("auto") == "vllm"  # `make venv` built .venv-vllm
    assert resolve_engine("hf") == "hf"
    monkeypatch.setenv(ENGINE_ENV, "hf")
    assert resolve_engine("auto") == "hf" and resolve_engine("vllm") == "vllm"
    monkeypatch.setenv(ENGINE_ENV, "tgi")
    with pytest.raises(UserError, match=ENGINE_ENV):
        resolve_engine("auto")
    monkeypatch.delenv(ENGINE_ENV)
    monkeypatch.setenv(VLLM_PYTHON_ENV, "")
    monkeypatch.setattr("hybridft.serve.engines.vllm_python", _not_installed)
    assert resolve_engine("auto") == "hf"  # the fallback where vLLM is not installed


def test_auto_serves_a_model_vllm_cannot_run_on_hf_and_vllm_fails_on_it(
    tiny_model_dir, monkeypatch, caplog
):
    """The suite's tiny model has head size 16, which vLLM's CPU attention does not run: `auto`
    serves it on hf (and says so); an explicit `vllm` is not swapped behind the user's back."""
    from hybridft.serve.engines import load_engine, vllm_cpu_refusal
    from hybridft.serve.generation import GenerationEngine

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert "head size 16" in (vllm_cpu_refusal(tiny_model_dir) or "")
    with caplog.at_level("WARNING", logger="hybridft.serve.engines"):
        engine = load_engine("auto", str(tiny_model_dir))
    assert isinstance(engine, GenerationEngine) and "head size 16" in caplog.text
    with pytest.raises(UserError):
        load_engine("vllm", str(tiny_model_dir))


def _not_installed() -> str:
    raise UserError("vLLM is not installed here")


# --- the OpenAI surface on the vllm engine ----------------------------------------------------


@pytest.mark.ray
def test_models_and_greedy_chat_equal_the_hf_engine(client, hf):
    assert [m.id for m in client.models.list().data] == [NAME]
    for text in PROMPTS:
        reply = client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": text}], max_tokens=12
        )
        want = hf.generate(_chat_ids(hf, text), SamplingParams(max_tokens=12))
        assert reply.choices[0].message.content == want.text
        assert reply.usage.completion_tokens == want.completion_tokens
        assert reply.system_fingerprint == f"{NAME}/{VERSION}"


@pytest.mark.ray
def test_chat_logprobs_equal_the_hf_engine(client, hf):
    reply = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3
    )
    want = hf.generate(_chat_ids(hf, PROMPTS[0]), SamplingParams(max_tokens=6, logprobs=3))
    assert want.logprobs is not None
    content = reply.choices[0].logprobs.content
    assert [t.token for t in content] == [hf.tokenizer.decode([e.token_id]) for e in want.logprobs]
    for got, entry in zip(content, want.logprobs, strict=True):
        assert got.logprob == pytest.approx(entry.logprob, abs=TOL)
        assert [t.logprob for t in got.top_logprobs] == pytest.approx(
            [v for _, v in entry.top], abs=TOL
        )


@pytest.mark.ray
def test_token_id_prompt_with_echo_and_logprobs_equals_the_hf_engine(client, hf):
    ids = hf.text_prompt_ids(PROMPTS[1])
    got = client.completions.create(model=NAME, prompt=ids, max_tokens=5, echo=True, logprobs=2)
    want = hf.generate(ids, SamplingParams(max_tokens=5, logprobs=2, prompt_logprobs=2))
    choice = got.choices[0]
    assert choice.text == hf.tokenizer.decode(ids) + want.text
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == len(ids) + 5
    assert want.prompt_logprobs is not None and want.logprobs is not None
    expected = [e.logprob for e in want.prompt_logprobs[1:] if e] + [
        e.logprob for e in want.logprobs
    ]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=TOL)
    # lm-eval's log-likelihood request: score the prompt only.
    scored = client.completions.create(model=NAME, prompt=ids, max_tokens=0, echo=True, logprobs=1)
    assert scored.usage.completion_tokens == 0 and scored.choices[0].finish_reason == "length"
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(ids)]


@pytest.mark.ray
def test_n_seed_and_stop(client, hf):
    kw = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 1.0}
    first = client.chat.completions.create(n=2, seed=7, **kw)
    again = client.chat.completions.create(n=2, seed=7, **kw)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert texts == [c.message.content for c in again.choices]  # same seed, same text
    # choice j samples with seed + j, as on the hf engine: choice 1 of seed 7 is choice 0 of 8
    eight = client.chat.completions.create(n=1, seed=8, **kw)
    assert eight.choices[0].message.content == texts[1]

    greedy = hf.generate(_chat_ids(hf, PROMPTS[2]), SamplingParams(max_tokens=12)).text
    stop = greedy[4:6]
    cut = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=12, stop=[stop]
    )
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.ray
def test_streaming_with_usage_adds_up_to_the_whole_answer(client):
    kw = {"model": NAME, "messages": MESSAGES, "max_tokens": 10}
    whole = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@pytest.mark.ray
def test_response_format_gives_json(client):
    rewrite = [{"role": "user", "content": PROMPTS[1]}]
    reply = client.chat.completions.create(
        model=NAME, messages=rewrite, max_tokens=40, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    schema = {
        "name": "route",
        "schema": {
            "type": "object",
            "properties": {"label": {"enum": LABELS}},
            "required": ["label"],
        },
    }
    fmt = {"type": "json_schema", "json_schema": schema}
    answer = client.completions.create(
        model=NAME, prompt=PROMPTS[0], max_tokens=40, extra_body={"response_format": fmt}
    )
    assert json.loads(answer.choices[0].text)["label"] in LABELS


@pytest.mark.ray
def test_an_unknown_field_is_an_openai_400_naming_it(base_url, api_key):
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 3, "logit_bias": {"5": 1}}
    reply = httpx.post(f"{base_url}/chat/completions", json=body, timeout=30,
                       headers={"authorization": f"Bearer {api_key[1]}"})  # fmt: skip
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "logit_bias" and error["message"].startswith("logit_bias: ")


@pytest.mark.ray
def test_label_probs_equal_the_hf_engines(client, hf):
    """The served calibrated probabilities are evaluation's scorer's on both engines."""
    chat = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=1, extra_body={"labels": LABELS}
    )
    want = hf.label_probs(MESSAGES, LABELS)
    got = chat.model_extra["hybridft"]["label_probs"]
    assert [got[label] for label in LABELS] == pytest.approx([want[x] for x in LABELS], abs=TOL)
    text = client.completions.create(
        model=NAME, prompt=PROMPTS[2], max_tokens=1, extra_body={"labels": LABELS}
    )
    want = hf.label_probs(PROMPTS[2], LABELS)
    got = text.model_extra["hybridft"]["label_probs"]
    assert [got[label] for label in LABELS] == pytest.approx([want[x] for x in LABELS], abs=TOL)


def _servers(model_dir: Path) -> dict[int, list[str]]:
    """The vLLM servers of ``model_dir`` running on this machine: pid -> command line."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(model_dir).encode() in cmdline and b"--served-model-name" in cmdline:
            found[int(pid)] = [a.decode() for a in cmdline.split(b"\0")]
    return found


@pytest.mark.ray
def test_the_vllm_server_behind_the_door_refuses_a_caller_without_its_key(base_url, model_dir):
    """Another local user who finds the child's loopback port (its command line is public) gets
    no model: vLLM's /v1 routes want the replica's key, which is in no command line."""
    ((pid, cmdline),) = _servers(model_dir).items()
    port = cmdline[cmdline.index("--port") + 1]
    assert not any("api-key" in arg or "api_key" in arg for arg in cmdline)
    body = {"model": "model", "prompt": [5, 6, 7], "max_tokens": 2}
    url = f"http://127.0.0.1:{port}/v1/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    wrong = {"authorization": "Bearer not-the-key"}
    assert httpx.post(url, json=body, headers=wrong, timeout=30).status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 401


@pytest.mark.ray
def test_deleting_the_application_stops_the_vllm_server(base_url, model_dir):
    """The server is the replica's child: it goes with the replica."""
    from ray import serve

    def servers() -> list[int]:
        return list(_servers(model_dir))

    assert len(servers()) == 1
    serve.delete("test-vllm")
    deadline = time.monotonic() + 30
    while servers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert servers() == []
