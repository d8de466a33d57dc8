"""A client nobody here wrote: lm-eval-harness runs its own tasks against the live endpoint.

The demo model (the tiny base fine-tuned by ``hybridft train`` on the small demo data's it_desk
rows) is served on each engine, hf and vllm, behind the HTTP door with an API key from the endpoint's key store, which lm-eval
reads from ``OPENAI_API_KEY``. lm-eval's tasks are its own (task configs with the keys of its
YAML files, on a local data file; the tokenizer is the model's directory: nothing from the hub):

- generation (``local-chat-completions``, ``generate_until``): the 20 tickets as chat turns,
  greedy, stopped at the first newline, exact match ignoring case and surrounding spaces. That is
  ``hybridft eval``'s label accuracy (the answer's first line against the label; its
  ``exact_match`` takes the whole answer, past a newline too: not compared). The endpoint decodes
  in float32, evaluation under bf16 autocast: each row's lm-eval answer is checked to be the
  first line of evaluation's answer before the scores are compared.
- log-likelihood (``local-completions``, ``multiple_choice``; lm-eval renders the chat template
  with the model's tokenizer and sends token ids with ``echo`` + ``logprobs``). lm-eval scores
  ``target_delimiter + choice`` (the delimiter is empty under a chat template) after the
  context, and moves the context's trailing whitespace into the continuation: here the newline
  that ends the generation prompt, whose log-prob is one constant per row. Evaluation's label
  scorer scores the label *and the end of turn* after the whole prompt. So:

  * choices written as whole answers (label + the template's end of turn): every score is
    evaluation's plus that row constant, so the argmax is the same and lm-eval's accuracy must
    equal evaluation's ``prob_accuracy``: asserted equal;
  * bare labels (lm-eval's usual convention): the scores leave out the end of turn, whose
    log-prob depends on the label, so the argmax may differ and no equality with
    ``prob_accuracy`` is claimed; checked instead: each score is evaluation's scorer on the
    label alone plus the row constant, and never below the whole-answer score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import lm_eval
import numpy as np
import pytest
from helpers import free_port, job_dict, write_job
from lm_eval.tasks import TaskManager

from hybridft.data.reader import read_examples
from hybridft.data.records import Example
from hybridft.evaluate.generate import chat_prompt, generate_answers
from hybridft.evaluate.run import EvalResult, TaskScore, evaluate_model
from hybridft.evaluate.scoring import (
    chat_label_texts,
    encode_continuations,
    label_logprobs,
    score_continuations,
)
from hybridft.model.device import load_model_on
from hybridft.model.hf import load_tokenizer
from hybridft.serve import deploy
from hybridft.serve.canary import ServePaths
from hybridft.serve.keys import KeyStore
from hybridft.specs import load_job
from hybridft.train.run import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NAME, VERSION = "demo", "1"
N_ROWS, MAX_NEW_TOKENS = 20, 8
TOL = 1e-4  # float32 log-probs: one full forward (endpoint) vs a cached prefix (scorer)

GENERATION_TASK: dict[str, Any] = {
    "task": "it_desk_route",
    "dataset_path": "json",
    "test_split": "test",
    "output_type": "generate_until",
    "doc_to_text": "{{prompt}}",
    "doc_to_target": "{{label}}",
    "generation_kwargs": {
        "until": ["\n"],
        "max_gen_toks": MAX_NEW_TOKENS,
        "do_sample": False,
        "temperature": 0.0,
    },
    "filter_list": [
        {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
    ],
    "metric_list": [
        {
            "metric": "exact_match",
            "aggregation": "mean",
            "higher_is_better": True,
            "ignore_case": True,
        }
    ],
}
# The choices are filled in per label set: whole answers or bare labels.
CHOICE_TASK: dict[str, Any] = {
    "dataset_path": "json",
    "test_split": "test",
    "output_type": "multiple_choice",
    "doc_to_text": "{{prompt}}",
    "doc_to_target": "gold",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}


@pytest.fixture(scope="module")
def demo_model(ray_session, small_demo_data, tmp_path_factory) -> Path:
    """The tiny base fine-tuned on it_desk by ``hybridft train`` (300 steps of 8 rows); two
    attention heads of 32 (the suite's usual four of 16 are a head size vLLM's CPU attention
    does not run)."""
    tmp = tmp_path_factory.mktemp("lm-eval-train")
    stage = {
        "name": "sft",
        "mix": [{"source": "it_desk", "weight": 1}],
        "budget": {"steps": 300},
        "lr": 3e-3,
        "warmup_steps": 2,
    }
    one_worker = {"num_workers": 1, "resources_per_worker": {"CPU": 1}}
    spec = job_dict(tmp, small_demo_data, stages=[stage], scaling=one_worker)
    spec["model"]["tiny"].update(heads=2, kv_heads=2)
    spec["training"].update(
        {"batch_size": 8, "precision": "fp32", "checkpoint_every": 1000, "log_every": 100}
    )
    return run(load_job(write_job(tmp, spec)), in_process=True).model_dir


@pytest.fixture(scope="module")
def rows(small_demo_data) -> list[Example]:
    path = str(small_demo_data / "sft/it_desk/test.jsonl")
    return list(read_examples([path], fmt="task", source="it_desk"))[:N_ROWS]


@pytest.fixture(scope="module")
def labels(small_demo_data) -> list[str]:
    """The task's label set (from its training split), in one order for both harnesses."""
    path = str(small_demo_data / "sft/it_desk/train.jsonl")
    return sorted({e.label for e in read_examples([path], fmt="task") if e.label})


@pytest.fixture(scope="module", params=["hf", "vllm"])
def endpoint(request, demo_model, tmp_path_factory):
    """The model behind the HTTP door on each engine in turn (every lm-eval run is repeated)."""
    from ray import serve

    serve_dir = tmp_path_factory.mktemp("serve-lm-eval")
    key = KeyStore(ServePaths(serve_dir).keys).create("lm-eval")
    url = deploy(
        str(demo_model),
        NAME,
        VERSION,
        port=free_port(),
        app_name="test-lm-eval",
        serve_dir=serve_dir,
        engine=request.param,
    )
    yield url, key
    serve.shutdown()


@pytest.fixture(scope="module")
def docs(rows, labels, tmp_path_factory) -> dict[str, Any]:
    """The rows as lm-eval reads them: a local JSON-lines file (its ``json`` dataset builder)."""
    tmp = tmp_path_factory.mktemp("lm-eval-docs")
    path = tmp / "it_desk.jsonl"
    lines = [
        {"prompt": e.prompt_messages[-1].content, "label": e.label, "gold": labels.index(e.label)}
        for e in rows
    ]
    assert [e.prompt_messages[-1].role for e in rows] == ["user"] * len(rows)
    assert all(len(e.prompt_messages) == 1 for e in rows)  # no system turn to carry over
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"data_files": {"test": str(path)}, "cache_dir": str(tmp / "datasets-cache")}


def _lm_eval(model: str, model_args: dict[str, Any], tasks: list[dict], key: str) -> dict:
    """lm-eval's own entry point; the key reaches it the documented way (``OPENAI_API_KEY``)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", key)
        results = lm_eval.simple_evaluate(
            model=model,
            model_args={"model": NAME, "max_retries": 2, **model_args},
            tasks=tasks,
            task_manager=TaskManager(include_defaults=False),
            apply_chat_template=True,
            log_samples=True,
            bootstrap_iters=0,
            # greedy requests, no few-shot draws: leave the process's RNGs alone
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    assert results is not None
    return results


def _samples(results: dict, task: str) -> list[dict]:
    return sorted(results["samples"][task], key=lambda s: s["doc_id"])


@pytest.fixture(scope="module")
def lm_eval_generation(endpoint, docs) -> dict:
    url, key = endpoint
    task = {**GENERATION_TASK, "dataset_kwargs": docs}
    args = {"base_url": f"{url}/chat/completions"}
    return _lm_eval("local-chat-completions", args, [task], key)


def _end_of_turn(tokenizer: Any) -> str:
    """What the chat template writes after an answer: evaluation scores it after the label."""
    turns = [{"role": "user", "content": "q"}]
    prompt, (full,) = chat_label_texts(tokenizer, turns, ["A"], "end_of_turn")
    assert full.startswith(prompt + "A")
    return full[len(prompt) + 1 :]


@pytest.fixture(scope="module")
def lm_eval_choice(endpoint, docs, labels, demo_model) -> dict:
    url, key = endpoint
    end = _end_of_turn(load_tokenizer(demo_model))
    assert end.strip()  # the template does end a turn
    choices = {"it_desk_answer": [label + end for label in labels], "it_desk_label": list(labels)}
    tasks = [
        {**CHOICE_TASK, "task": task, "doc_to_choice": texts, "dataset_kwargs": docs}
        for task, texts in choices.items()
    ]
    args = {
        "base_url": f"{url}/completions",
        "tokenizer_backend": "huggingface",
        "tokenizer": str(demo_model),
        "batch_size": len(labels),  # a list of token-id prompts per request
    }
    return _lm_eval("local-completions", args, tasks, key)


@pytest.fixture(scope="module")
def evaluation(demo_model, rows, labels) -> EvalResult:
    """What ``hybridft eval`` computes for these rows (``evaluate_model``)."""
    return evaluate_model(
        demo_model,
        {"it_desk": rows},
        max_new_tokens=MAX_NEW_TOKENS,
        labels={"it_desk": labels},
        device="cpu",
    )


@pytest.fixture(scope="module")
def evaluated(evaluation, labels) -> TaskScore:
    score = evaluation.tasks["it_desk"]
    assert score.calibration is not None and score.calibration["labels"] == labels
    return score


@pytest.fixture(scope="module")
def offline(demo_model, rows, labels, evaluation) -> dict[str, Any]:
    """Evaluation's own functions on the model as ``evaluate_model`` loads it: every row's
    answer, label scores, bare-label scores and the log-prob of the prompt's final newline."""
    model, tokenizer = load_model_on(demo_model, "cpu"), load_tokenizer(demo_model)
    prompts = [chat_prompt(tokenizer, e) for e in rows]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)
    # the same answers evaluate_model scored (it keeps the first five as samples)
    assert [s["answer"] for s in evaluation.samples["it_desk"]] == answers[:5]
    bare, newline = [], []
    for prompt in prompts:
        head = prompt.rstrip()
        assert prompt[len(head) :] == "\n"
        newline += score_continuations(model, encode_continuations(tokenizer, head, [prompt]))
        texts = [prompt + label for label in labels]
        bare.append(score_continuations(model, encode_continuations(tokenizer, prompt, texts)))
    return {
        "answers": answers,
        "scores": label_logprobs(model, tokenizer, rows, labels),
        "bare": np.array(bare),
        "newline": np.array(newline)[:, None],
    }


def _loglikelihoods(results: dict, task: str) -> np.ndarray:
    return np.array([[ll for ll, _ in s["filtered_resps"]] for s in _samples(results, task)])


def test_the_endpoint_wants_the_key_lm_eval_sent(endpoint):
    url, key = endpoint
    body = {"model": NAME, "prompt": "Ticket: my VPN is down", "max_tokens": 1}
    for headers in ({}, {"authorization": "Bearer not-a-key"}):
        assert httpx.post(f"{url}/completions", json=body, headers=headers).status_code == 401
    ok = httpx.post(f"{url}/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert ok.status_code == 200


def test_generation_exact_match_is_hybridft_label_accuracy(lm_eval_generation, evaluated, offline):
    samples = _samples(lm_eval_generation, "it_desk_route")
    assert len(samples) == N_ROWS
    assert evaluated.accuracy is not None
    assert 0 < evaluated.accuracy < 1, "right on some rows, wrong on others: or the match is moot"
    # each row: lm-eval's answer (cut at the newline by the endpoint) is the first line of the
    # answer evaluation generated: the same greedy tokens (evaluation decodes under bf16
    # autocast, the endpoint in float32: a near tie could split them, and this would say so)
    for sample, answer in zip(samples, offline["answers"], strict=True):
        assert sample["resps"][0][0] == answer.split("\n", 1)[0], sample["doc"]
    assert [s["exact_match"] for s in samples] == evaluated.per_example
    em = lm_eval_generation["results"]["it_desk_route"]["exact_match,strip"]
    assert em == pytest.approx(evaluated.accuracy, abs=1e-12)


def test_whole_answer_choice_accuracy_is_hybridft_prob_accuracy(
    lm_eval_choice, evaluated, offline, labels
):
    assert evaluated.calibration is not None
    prob_accuracy = evaluated.calibration["prob_accuracy"]
    assert 0 < prob_accuracy < 1, "right on some rows, wrong on others: or the match is moot"
    ll = _loglikelihoods(lm_eval_choice, "it_desk_answer")
    assert ll.shape == (N_ROWS, len(labels))
    # evaluation's label scores plus the newline lm-eval moved into the continuation
    np.testing.assert_allclose(ll, offline["scores"] + offline["newline"], rtol=0, atol=TOL)
    gold = np.array([s["doc"]["gold"] for s in _samples(lm_eval_choice, "it_desk_answer")])
    assert np.array_equal(ll.argmax(1) == gold, offline["scores"].argmax(1) == gold)
    acc = lm_eval_choice["results"]["it_desk_answer"]["acc,none"]
    assert acc == pytest.approx(prob_accuracy, abs=1e-12)


def test_bare_label_choices_leave_out_the_end_of_turn(lm_eval_choice, offline):
    """lm-eval's usual convention: not evaluation's quantity, so no accuracy equality."""
    bare = _loglikelihoods(lm_eval_choice, "it_desk_label")
    np.testing.assert_allclose(bare, offline["bare"] + offline["newline"], rtol=0, atol=TOL)
    whole = _loglikelihoods(lm_eval_choice, "it_desk_answer")
    assert (whole <= bare + TOL).all()  # the end of turn only adds log-probs <= 0
