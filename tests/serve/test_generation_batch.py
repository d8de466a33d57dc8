"""Batched decoding and label probabilities of the generation engine, checked as invariants.

Every row of ``generate_batch`` must be the answer ``generate`` gives it alone: left padding, the
mask, the positions, rows leaving the batch and per-row RNGs may change nothing. No Ray here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hybridft.errors import UserError
from hybridft.model.hf import load_model, load_tokenizer
from hybridft.serve.generation import Completion, GenerationEngine, SamplingParams

# Very different lengths: padding runs from none to hundreds of tokens in one batch.
TEXTS = [
    "a",
    "Ticket 3",
    "Rewrite politely",
    "Ticket 41: my laptop cannot reach the VPN, the Wi-Fi works but nothing internal loads",
    "Could you please help me? " * 12,
    "Ticket 7: my laptop cannot reach the VPN. " * 25,
]
MAX_TOKENS = [9, 14, 6, 11, 16, 12]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> GenerationEngine:
    model = load_model(tiny_model_dir)
    # The saved tiny model (init std 0.02, tied embeddings) answers almost only from the last
    # token, which would hide a masking or position bug; wider weights make all context matter.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
    return GenerationEngine(model, load_tokenizer(tiny_model_dir))


def _alone(engine: GenerationEngine, requests) -> list[Completion]:
    return [engine.generate(ids, params) for ids, params in requests]


def _with_stop_cutting(engine: GenerationEngine, ids: list[int], params: SamplingParams):
    """``params`` plus a stop string taken from the middle of its own unstopped answer."""
    full = engine.generate(ids, params).text
    assert len(full) >= 4, "the tiny model should say something to cut"
    return replace(params, stop=("@@never@@", full[len(full) // 2 :][:2]))


def test_greedy_batch_matches_each_request_alone(engine):
    ids = [engine.text_prompt_ids(t) for t in TEXTS]
    requests = [(i, SamplingParams(max_tokens=m)) for i, m in zip(ids, MAX_TOKENS, strict=True)]
    # Rows 1 and 4 end on a stop string mid-answer; the others at their own max_tokens.
    for r in (1, 4):
        requests[r] = (ids[r], _with_stop_cutting(engine, *requests[r]))
    # A prompt 3 tokens short of the context: its budget is clipped to 3.
    near_end = (ids[3] * 60)[: engine.max_position - 3]
    requests.append((near_end, SamplingParams(max_tokens=10)))
    requests.append((ids[2], SamplingParams(max_tokens=0)))

    batched = engine.generate_batch(requests)
    alone = _alone(engine, requests)
    assert batched == alone
    assert alone[-2].completion_tokens == 3 and alone[-2].finish_reason == "length"
    assert alone[-1] == Completion("", "length", len(ids[2]), 0)
    assert alone[1].finish_reason == alone[4].finish_reason == "stop"
    assert len({c.completion_tokens for c in alone}) > 3, "rows should leave at different steps"


def test_eos_finishes_only_its_row(engine):
    ids = [engine.text_prompt_ids(t) for t in TEXTS]
    requests = [(i, SamplingParams(max_tokens=12)) for i in ids]
    # Make the long prompt's 4th greedy token an end of sequence: a real eos stop mid-batch.
    prompt = list(ids[5])
    with torch.inference_mode():
        for _ in range(4):
            prompt.append(
                int(engine.model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
            )
    answer = prompt[len(ids[5]) :]
    stopping = GenerationEngine(engine.model, engine.tokenizer)
    stopping.eos_ids = engine.eos_ids | {answer[3]}

    batched = stopping.generate_batch(requests)
    assert batched == _alone(stopping, requests)
    stop_at = answer.index(answer[3])
    assert batched[5].finish_reason == "stop" and batched[5].completion_tokens == stop_at + 1
    assert batched[5].text == engine.tokenizer.decode(answer[:stop_at], skip_special_tokens=True)


def test_seeded_sampling_batch_matches_alone(engine):
    texts = TEXTS[:5]
    requests = [
        (engine.text_prompt_ids(t), SamplingParams(max_tokens=10, temperature=1.5, seed=s))
        for s, t in enumerate(texts)
    ]
    requests[1] = (requests[1][0], replace(requests[1][1], top_p=0.8))
    requests[3] = (requests[3][0], SamplingParams(max_tokens=7))  # a greedy row among them
    batched = engine.generate_batch(requests)
    assert batched == _alone(engine, requests)
    # The seed matters: the same prompt under another seed answers differently somewhere.
    reseeded = [(i, replace(p, seed=100 + (p.seed or 0))) for i, p in requests]
    assert engine.generate_batch(reseeded) != batched


def test_bad_requests_get_an_error_in_their_slot(engine):
    good = [engine.text_prompt_ids(t) for t in TEXTS[1:4]]
    params = SamplingParams(max_tokens=8)
    requests = [
        (good[0], params),
        ([], params),
        (good[1], params),
        ([5] * engine.max_position, params),
        ([engine.model.config.vocab_size + 3], params),
        (good[2], params),
    ]
    batched = engine.generate_batch(requests)
    for slot in (1, 3, 4):
        assert isinstance(batched[slot], UserError)
    assert "empty" in str(batched[1]) and "context" in str(batched[3])
    assert "vocabulary" in str(batched[4])
    assert [batched[s] for s in (0, 2, 5)] == _alone(engine, [requests[s] for s in (0, 2, 5)])
    assert isinstance(engine.generate_batch([([], params)])[0], UserError)


def test_batch_of_one_is_generate(engine):
    request = (engine.text_prompt_ids(TEXTS[3]), SamplingParams(max_tokens=9))
    assert engine.generate_batch([request]) == _alone(engine, [request])
    assert engine.generate_batch([]) == []


def _assert_close(a: Completion, b: Completion, tol: float = 1e-5) -> None:
    """Same answer and tokens; logprobs equal to ``tol`` (padding changes float sums a little)."""
    assert (a.text, a.finish_reason, a.completion_tokens) == (
        b.text,
        b.finish_reason,
        b.completion_tokens,
    )
    for field in ("logprobs", "prompt_logprobs"):
        mine, theirs = getattr(a, field), getattr(b, field)
        assert (mine is None) == (theirs is None)
        for x, y in zip(mine or (), theirs or (), strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                assert (x.token_id, [i for i, _ in x.top]) == (y.token_id, [i for i, _ in y.top])
                assert [x.logprob, *dict(x.top).values()] == pytest.approx(
                    [y.logprob, *dict(y.top).values()], abs=tol
                )


def test_logprobs_in_a_batch_match_each_row_alone_and_a_forward_pass(engine):
    ids = [engine.text_prompt_ids(t) for t in TEXTS[:5]]
    requests = [
        (ids[0], SamplingParams(max_tokens=7, logprobs=3)),
        (ids[1], SamplingParams(max_tokens=9, temperature=1.3, seed=4, logprobs=0)),
        (ids[2], SamplingParams(max_tokens=5, logprobs=2, prompt_logprobs=2)),
        (ids[3], SamplingParams(max_tokens=0, prompt_logprobs=1)),  # scores its prompt only
        (ids[4], SamplingParams(max_tokens=6)),  # no logprobs among rows that have them
    ]
    batched = engine.generate_batch(requests)
    alone = _alone(engine, requests)
    for b, a in zip(batched, alone, strict=True):
        _assert_close(b, a)
    assert batched[4].logprobs is None and batched[3].completion_tokens == 0
    assert len(batched[1].logprobs) == batched[1].completion_tokens  # eos/stop tokens included
    # Generated and prompt logprobs are the model's distribution at temperature 1.
    for out, (prompt, _) in zip(batched[:3], requests[:3], strict=True):
        new = [e.token_id for e in out.logprobs]
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([prompt + new])).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        for j, e in enumerate(out.logprobs):
            assert e.logprob == pytest.approx(
                float(logp[len(prompt) - 1 + j, e.token_id]), abs=1e-5
            )
    scored = batched[3].prompt_logprobs
    with torch.inference_mode():
        logp = torch.log_softmax(engine.model(input_ids=torch.tensor([ids[3]])).logits[0], -1)
    assert scored[0] is None and len(scored) == len(ids[3])
    want = [float(logp[t - 1, ids[3][t]]) for t in range(1, len(ids[3]))]
    assert [e.logprob for e in scored[1:]] == pytest.approx(want, abs=1e-5)
    assert [i for i, _ in scored[1].top] == logp[0].topk(1).indices.tolist()


def test_streamed_logprobs_add_up_to_the_whole_answer(engine):
    ids = engine.text_prompt_ids(TEXTS[3])
    params = _with_stop_cutting(engine, ids, SamplingParams(max_tokens=14, logprobs=2))
    whole = engine.generate(ids, params)
    steps = list(engine.stream(ids, params))
    assert [e for s in steps for e in s.logprobs] == list(whole.logprobs)
    assert whole.finish_reason == "stop" and len(whole.logprobs) == whole.completion_tokens


LABELS = ["network", "hardware failure", "a", "billing question about invoices"]


def _direct_label_probs(engine, prompt, labels, temperature=1.0) -> dict[str, float]:
    """One uncached forward of prompt + label (tokenised as one string) per label: log-softmax,
    summed over the tokens ending past the prompt (``evaluate.scoring``'s convention)."""
    scores = []
    for label in labels:
        enc = engine.tokenizer(prompt + label, return_offsets_mapping=True)
        ids = enc["input_ids"]
        first = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prompt))
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(first, len(ids))))
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    return {label: w / sum(weights) for label, w in zip(labels, weights, strict=True)}


def test_label_probs_match_a_full_forward_pass(engine):
    prompt = TEXTS[3]
    tokenise = engine.tokenizer
    assert any(len(tokenise(label, add_special_tokens=False)["input_ids"]) > 2 for label in LABELS)
    for temperature in (1.0, 2.5):
        probs = engine.label_probs(prompt, LABELS, temperature=temperature)
        assert list(probs) == LABELS
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-9)
        direct = _direct_label_probs(engine, prompt, LABELS, temperature)
        assert probs == pytest.approx(direct, abs=1e-5)


def test_label_probs_ignore_label_order_and_flatten_with_temperature(engine):
    prompt = TEXTS[1]
    probs = engine.label_probs(prompt, LABELS)
    assert engine.label_probs(prompt, LABELS[::-1]) == pytest.approx(probs, abs=1e-6)
    hot = engine.label_probs(prompt, LABELS, temperature=4.0)

    def entropy(p: dict[str, float]) -> float:
        return -sum(v * math.log(v) for v in p.values())

    assert entropy(hot) > entropy(probs)
    assert max(hot.values()) < max(probs.values()) and min(hot.values()) > min(probs.values())


@pytest.mark.parametrize(
    ("labels", "temperature", "message"),
    [
        ([], 1.0, "non-empty list"),
        ("network", 1.0, "non-empty list"),
        (["network", ""], 1.0, "non-empty strings"),
        (["network", "a", "network"], 1.0, "duplicates"),
        (["network", "a"], 0.0, "temperature"),
    ],
)
def test_label_probs_reject_bad_arguments(engine, labels, temperature, message):
    with pytest.raises(UserError, match=message):
        engine.label_probs("Ticket 3", labels, temperature=temperature)


# --- the engine's device ----------------------------------------------------------------------


def test_every_input_and_sampling_rng_is_made_on_the_models_device(tiny_model_dir, monkeypatch):
    """A model on ``meta`` (the one device besides the CPU a CPU-only torch has): the first
    forward of each path shows where its inputs were made, and each request's RNG is asked for
    on that device."""
    from helpers import first_forward_devices

    model = load_model(tiny_model_dir).to("meta")
    engine = GenerationEngine(model, load_tokenizer(tiny_model_dir))
    assert engine.device == torch.device("meta")
    rng_devices: list[str] = []
    real_generator = torch.Generator

    def generator(device="cpu"):  # meta has no RNG: note where it was asked for, use the CPU's
        rng_devices.append(torch.device(device).type)
        return real_generator()

    monkeypatch.setattr(torch, "Generator", generator)
    ids = [5, 6, 7]
    sampled = SamplingParams(max_tokens=2, temperature=1.0, seed=3)
    runs = {
        "stream": lambda: engine.generate(ids, sampled),
        "batch": lambda: engine.generate_batch([(ids, sampled), ([5, 6], sampled)]),
        "label_probs": lambda: engine.label_probs("Ticket 3", ["a b", "c"]),
    }
    for name, run in runs.items():
        devices = first_forward_devices(model, run)
        assert devices and set(devices.values()) == {"meta"}, (name, devices)
    assert rng_devices == ["meta"] * 3


def test_from_dir_on_an_explicit_cpu_equals_the_default_and_rejects_meta(tiny_model_dir):
    default = GenerationEngine.from_dir(tiny_model_dir)
    on_cpu = GenerationEngine.from_dir(tiny_model_dir, device="cpu", dtype="auto")
    assert default.device == on_cpu.device == torch.device("cpu")
    assert next(on_cpu.model.parameters()).dtype == torch.float32
    ids = default.text_prompt_ids(TEXTS[3])
    for params in (SamplingParams(max_tokens=6), SamplingParams(6, temperature=1.0, seed=7)):
        assert on_cpu.generate(ids, params) == default.generate(ids, params)
    with pytest.raises(UserError, match="device: .*got 'meta'"):
        GenerationEngine.from_dir(tiny_model_dir, device="meta")
    with pytest.raises(UserError, match="dtype: expected one of auto, bfloat16, float32"):
        GenerationEngine.from_dir(tiny_model_dir, dtype="float16")
