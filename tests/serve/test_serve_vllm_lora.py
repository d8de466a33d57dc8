"""LoRA adapters on the vllm engine (vLLM's multi-LoRA), driven by the official ``openai`` client
over real HTTP as ``MODEL:ADAPTER``, checked against the hf engine with each adapter merged into
the base: greedy text equal, logprobs, echo and label probabilities within 1e-4.

vLLM 0.32 with LoRA enabled dies on a batch holding a request with prompt logprobs
(vllm-project/vllm#16668), so the engine scores prompts by forced one-token decodes there
(``VLLMEngine.forced_scoring``); the last test sends the traffic that killed it (label
probabilities and echo beside generations on several adapters, all at once) and checks every
answer and the server's life.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
from pathlib import Path

import httpx
import openai
import pytest
from helpers import free_port, lora_adapters, merged_engine

from hybridft.serve import deploy
from hybridft.serve.canary import ServePaths
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.keys import KeyStore

NAME, VERSION = "tiny-lora", "3"
ADAPTERS = ("billing", "hr")
MESSAGES = [{"role": "user", "content": "Ticket 3: my laptop cannot reach the VPN"}]
PROMPT = "Rewrite politely"
LABELS = ["network", "hardware", "access"]
TOL = 1e-4


@pytest.fixture(scope="module")
def adapter_dirs(vllm_model_dir, tmp_path_factory) -> dict[str, str]:
    """Two LoRA adapters with random (non-zero) weights, saved as peft writes them."""
    return lora_adapters(vllm_model_dir, tmp_path_factory.mktemp("vllm-adapters"), ADAPTERS, 200)


@pytest.fixture(scope="module")
def merged(vllm_model_dir, adapter_dirs) -> dict[str | None, GenerationEngine]:
    """The reference per model id: the hf engine on the base, and on the base with each adapter
    merged into it."""
    return {a: merged_engine(vllm_model_dir, adapter_dirs.get(a or "")) for a in [None, *ADAPTERS]}


@pytest.fixture(scope="module")
def served(ray_session, vllm_model_dir, adapter_dirs, tmp_path_factory):
    from ray import serve

    serve_dir = tmp_path_factory.mktemp("serve-vllm-lora")
    key = KeyStore(ServePaths(serve_dir).keys).create("tests")
    url = deploy(str(vllm_model_dir), NAME, VERSION, port=free_port(), app_name="test-vllm-lora",
                 serve_dir=serve_dir, engine="vllm", adapters=adapter_dirs)  # fmt: skip
    yield url, key
    serve.shutdown()


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key=served[1], max_retries=0, timeout=120)


def _model(adapter: str | None) -> str:
    return NAME if adapter is None else f"{NAME}:{adapter}"


def _log(probs: dict[str, float]) -> list[float]:
    """Label probabilities as logs: the wide random model's are near 0 and 1, where an absolute
    tolerance on the probabilities themselves would pass anything."""
    return [math.log(max(probs[label], 1e-300)) for label in LABELS]


def _label_probs(client: openai.OpenAI, adapter: str | None) -> list[float]:
    """The served label probabilities' logs."""
    chat = client.chat.completions.create(
        model=_model(adapter), messages=MESSAGES, max_tokens=1, extra_body={"labels": LABELS}
    )
    return _log(chat.model_extra["hybridft"]["label_probs"])


def _echo(client: openai.OpenAI, adapter: str | None, ids: list[int]) -> list[float | None]:
    scored = client.completions.create(
        model=_model(adapter), prompt=ids, max_tokens=0, echo=True, logprobs=2
    )
    return list(scored.choices[0].logprobs.token_logprobs)


@pytest.mark.ray
def test_the_adapters_are_served_models_on_the_vllm_engine(client, served):
    ids = sorted(m.id for m in client.models.list().data)
    assert ids == sorted([NAME, *(f"{NAME}:{a}" for a in ADAPTERS)])
    health = httpx.get(served[0].removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model=f"{NAME}:legal", messages=MESSAGES, max_tokens=2)


@pytest.mark.ray
def test_each_adapter_answers_and_scores_as_its_merged_model(client, merged):
    texts = set()
    for adapter, reference in merged.items():
        ids = reference.chat_prompt_ids(MESSAGES)
        want = reference.generate(ids, SamplingParams(max_tokens=8, temperature=0, logprobs=2))
        got = client.chat.completions.create(
            model=_model(adapter), messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True,
            top_logprobs=2,
        )  # fmt: skip
        assert got.choices[0].message.content == want.text, adapter
        assert want.logprobs is not None
        content = got.choices[0].logprobs.content
        assert [c.logprob for c in content] == pytest.approx(
            [e.logprob for e in want.logprobs], abs=TOL
        )
        assert [t.logprob for c in content for t in c.top_logprobs] == pytest.approx(
            [v for e in want.logprobs for _, v in e.top], abs=TOL
        )
        texts.add(want.text)
        # label probabilities: evaluation's scorer on the merged model
        expected = _log(reference.label_probs(MESSAGES, LABELS))
        assert _label_probs(client, adapter) == pytest.approx(expected, abs=TOL)
        # echo: every prompt token's logprob and its top 2 (lm-eval's log-likelihood request)
        prompt = reference.text_prompt_ids(PROMPT)
        scored = reference.generate(prompt, SamplingParams(max_tokens=0, prompt_logprobs=2))
        assert scored.prompt_logprobs is not None
        echoed = _echo(client, adapter, prompt)
        assert echoed[0] is None
        assert echoed[1:] == pytest.approx(
            [e.logprob for e in scored.prompt_logprobs[1:] if e], abs=TOL
        )
    assert len(texts) == 3  # the adapters do change the answers


@pytest.mark.ray
def test_prompt_scoring_beside_other_requests_keeps_the_server_up(client, merged, served):
    """The batch that killed vLLM 0.32's LoRA engine core: prompt scoring (label probabilities,
    echo) at once with generations with logprobs, on the base and both adapters."""
    prompt = merged[None].text_prompt_ids(PROMPT)
    expected_probs = {a: _label_probs(client, a) for a in merged}
    expected_echo = {a: _echo(client, a, prompt) for a in merged}

    def one(i: int) -> tuple[str, str | None, object]:
        adapter = [None, *ADAPTERS][i % 3]
        kind = ["labels", "echo", "generate"][(i // 3) % 3]
        if kind == "labels":
            return kind, adapter, _label_probs(client, adapter)
        if kind == "echo":
            return kind, adapter, _echo(client, adapter, prompt)
        out = client.completions.create(
            model=_model(adapter), prompt=PROMPT, max_tokens=6, temperature=1.0, seed=i,
            logprobs=2,
        )  # fmt: skip
        return kind, adapter, out.choices[0].text

    with cf.ThreadPoolExecutor(18) as pool:
        results = list(pool.map(one, range(36)))
    for kind, adapter, value in results:
        if kind == "labels":
            assert value == pytest.approx(expected_probs[adapter], abs=TOL)
        elif kind == "echo":
            assert value[0] is None  # type: ignore[index]
            assert value[1:] == pytest.approx(expected_echo[adapter][1:], abs=TOL)  # type: ignore[index]
    health = httpx.get(served[0].removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    assert _label_probs(client, "hr") == pytest.approx(expected_probs["hr"], abs=TOL)


def test_forced_scoring_is_on_exactly_when_lora_is(vllm_model_dir: Path, adapter_dirs):
    """The server spec decides it: a LoRA-enabled server is never sent prompt logprobs."""
    from hybridft.serve.decoding import load_chat_tokenizer
    from hybridft.serve.vllm_engine import VLLMEngine
    from hybridft.serve.vllm_process import VLLMServerSpec

    class _Server:
        def __init__(self, adapters: tuple[tuple[str, str], ...]) -> None:
            self.spec = VLLMServerSpec(model_dir=str(vllm_model_dir), dtype="float32", threads=1,
                                       served_name="model", device="cpu", adapters=adapters)  # fmt: skip
            self.url, self.headers = "http://127.0.0.1:9", {}

        def close(self, keep_log: bool = False) -> None:
            pass

    tokenizer = load_chat_tokenizer(vllm_model_dir)
    config = {"vocab_size": 400}
    params = SamplingParams(max_tokens=0, prompt_logprobs=1)
    plain = VLLMEngine(tokenizer, config, _Server(()))  # type: ignore[arg-type]
    lora = VLLMEngine(tokenizer, config, _Server(tuple(adapter_dirs.items())))  # type: ignore[arg-type]
    assert not plain.forced_scoring and lora.forced_scoring
    assert plain._body([1, 2, 3], params)["prompt_logprobs"] == 1
    assert "prompt_logprobs" not in lora._body([1, 2, 3], params, "hr")
    plain.close()
    lora.close()


def test_auto_serves_adapters_on_hf_on_a_cpu_and_says_why(
    vllm_model_dir, adapter_dirs, monkeypatch, caplog
):
    """vllm runs this model, but with adapters on a CPU `auto` picks hf (measured faster for
    the label probabilities, benchmarks/serve_adapters.py) and the replica's log says so."""
    from hybridft.serve.engines import ENGINE_ENV, VLLM_CPU_LORA, load_engine, vllm_cpu_refusal

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert vllm_cpu_refusal(vllm_model_dir) is None
    with caplog.at_level("WARNING", logger="hybridft.serve.engines"):
        engine = load_engine("auto", str(vllm_model_dir), adapters=adapter_dirs)
    assert isinstance(engine, GenerationEngine) and VLLM_CPU_LORA in caplog.text
