"""LoRA adapters on one shared base: each adapter (and the bare base) answers exactly as its own
separately loaded model does, whatever order the requests come in; served over HTTP by a
multiplexed deployment and reached through the openai client as ``MODEL:ADAPTER``."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import openai
import pytest
from helpers import free_port, lora_adapters, merged_engine

from hybridft.errors import UserError
from hybridft.serve.adapters import AdapterSet, check_adapter_dir
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.keys import KeyStore

PROMPT = [{"role": "user", "content": "Ticket 3: my laptop cannot reach the VPN"}]


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """Two LoRA adapters with random (non-zero) weights, saved as peft writes them."""
    return lora_adapters(
        tiny_model_dir, tmp_path_factory.mktemp("adapters"), ("billing", "hr"), 100
    )


def _answer(engine: GenerationEngine, n: int = 8) -> str:
    ids = engine.chat_prompt_ids(PROMPT)
    (out,) = engine.generate_batch([(ids, SamplingParams(max_tokens=n, temperature=0))])
    return out.text


def test_one_shared_base_answers_like_each_separate_model(tiny_model_dir, adapter_dirs):
    expected = {None: _answer(merged_engine(tiny_model_dir, None))}
    for name, path in adapter_dirs.items():
        expected[name] = _answer(merged_engine(tiny_model_dir, path))
    assert len(set(expected.values())) == 3  # the adapters do change the answer

    engine = GenerationEngine.from_dir(tiny_model_dir)
    shared = AdapterSet(engine.model, adapter_dirs)
    for name in [None, "hr", "billing", None, "billing", "hr", None]:
        with shared.using(name):
            assert _answer(engine) == expected[name], name
    # a stream advanced one step at a time, with other adapters used between its steps
    ids = engine.chat_prompt_ids(PROMPT)
    stream = shared.stepwise(engine.stream(ids, SamplingParams(max_tokens=8, temperature=0)), "hr")
    text = ""
    for step in stream:
        text += step.text
        with shared.using("billing"):
            assert _answer(engine) == expected["billing"]
    assert text == expected["hr"]
    assert shared.loaded() == ["billing", "hr"]
    # Serve unloads an adapter (LRU): it is deleted, and loaded again when asked for
    shared.evict("billing")
    with shared.using("hr"):
        assert _answer(engine) == expected["hr"]
    assert shared.loaded() == ["hr"]
    with shared.using("billing"):
        assert _answer(engine) == expected["billing"]
    with pytest.raises(UserError, match="not served here"):
        with shared.using("legal"):
            pass


def test_adapter_dirs_need_safetensors_and_a_plain_name(adapter_dirs, tmp_path):
    assert check_adapter_dir("hr", adapter_dirs["hr"]) == str(Path(adapter_dirs["hr"]).resolve())
    bare = tmp_path / "pickled"
    bare.mkdir()
    (bare / "adapter_config.json").write_text("{}")
    (bare / "adapter_model.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="adapter_model.safetensors"):
        check_adapter_dir("x", str(bare))
    with pytest.raises(UserError, match="name"):
        check_adapter_dir("a b", adapter_dirs["hr"])
    with pytest.raises(UserError, match="not a peft adapter"):
        check_adapter_dir("x", str(tmp_path))


@pytest.mark.ray
def test_multiplexed_deployment_serves_each_adapter_by_model_id(
    ray_session, tiny_model_dir, adapter_dirs, tmp_path
):
    from ray import serve

    from hybridft.serve import deploy

    expected = {}
    for model_id, path in (("tiny", None), *((f"tiny:{n}", p) for n, p in adapter_dirs.items())):
        engine = merged_engine(tiny_model_dir, path)
        expected[model_id] = _answer(engine)
    key = KeyStore(tmp_path / "keys.db").create("tests")  # the door: the router's key store
    url = deploy(str(tiny_model_dir), "tiny", "1", port=free_port(), app_name="test-adapters",
                 adapters=adapter_dirs, serve_dir=tmp_path)  # fmt: skip
    try:
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
        assert sorted(m.id for m in client.models.list().data) == sorted(expected)

        def ask(model_id: str) -> tuple[str, str]:
            reply = client.chat.completions.create(
                model=model_id, messages=PROMPT, max_tokens=8, temperature=0
            )
            return model_id, reply.choices[0].message.content

        # concurrent requests for all three share batches: each is answered by its own weights
        order = list(expected) * 4
        with cf.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, order))
        for model_id, text in answers:
            assert text == expected[model_id], model_id
        with pytest.raises(openai.NotFoundError, match="tiny:legal"):
            ask("tiny:legal")
    finally:
        serve.shutdown()
