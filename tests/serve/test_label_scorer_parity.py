"""One label scorer: served label probabilities and calibrated confidence are the evaluated ones.

Evaluation fits a task's temperature on ``evaluate.scoring``'s label scores; serving applies it
to the scores of the same scorer. Checked as an invariant on one model directory: the rows that
``evaluate_model`` scores get, from the serving engine and from a live deployment (the HTTP route
and the handle the canary router calls), the probabilities evaluation computed for them.
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
from helpers import free_port, widen_weights

from hybridft.data.records import Example, Message
from hybridft.evaluate.calibration import apply_temperature
from hybridft.evaluate.run import evaluate_model
from hybridft.evaluate.scoring import label_end_of, label_logprobs
from hybridft.model.device import load_model_on
from hybridft.model.hf import load_model, load_tokenizer, save_model
from hybridft.serve.generation import GenerationEngine
from hybridft.serve.keys import KeyStore

LABELS = ["network low", "network high", "hardware", "identity medium"]
SYSTEM = "You route support tickets."
TICKETS = [
    "Ticket 3: my laptop cannot reach the VPN",
    "Ticket 8: the printer on floor 2 is broken",
    "Ticket 12: I forgot my password again",
    "Ticket 20: Wi-Fi drops every hour",
    "Ticket 31: new badge does not open the door",
    "Ticket 44: screen flickers after the update",
]
TOL = 1e-4


def _row(i: int, ticket: str, label: str, reply: str | None = None) -> Example:
    completion = label if reply is None else f"{label}\n{reply}"
    messages = (
        Message("system", SYSTEM),
        Message("user", ticket),
        Message("assistant", completion),
    )
    return Example(messages, "desk", "desk.jsonl", i + 1, label, "desk", id=f"desk-{i}")


def _turns(example: Example) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in example.prompt_messages]


# Four rows whose label is the whole answer, one where a reply follows it.
ROWS = [_row(i, t, LABELS[i % 4]) for i, t in enumerate(TICKETS[:4])]
ROWS.append(_row(4, TICKETS[4], "identity medium", reply="We reset your badge."))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with wider weights: its label scores differ a lot between labels and
    prompts (the saved init barely looks at the context)."""
    model = load_model(tiny_model_dir)
    widen_weights(model)
    out = tmp_path_factory.mktemp("sharp") / "model"
    return save_model(model, load_tokenizer(tiny_model_dir), out)


def _calibration_rows(model_dir) -> list[Example]:
    """Labelled so the model is right on two rows of three: the fitted temperature is moderate
    rather than at the search bound (which would flatten every probability to 1/4)."""
    drafts = [
        _row(10 + k * 6 + i, f"{t} (case {k})", LABELS[0], reply="Noted." if i % 3 == 0 else None)
        for k in range(2)
        for i, t in enumerate(TICKETS)
    ]
    model, tokenizer = load_model_on(model_dir, "cpu"), load_tokenizer(model_dir)
    top = label_logprobs(model, tokenizer, drafts, LABELS).argmax(1)
    rows = []
    for i, (draft, j) in enumerate(zip(drafts, top, strict=True)):
        label = LABELS[j] if i % 3 else LABELS[(j + 1) % 4]
        reply = "Noted." if label_end_of(draft) == "newline" else None
        rows.append(_row(draft.line, draft.prompt_messages[-1].content, label, reply))
    return rows


@pytest.fixture(scope="module")
def evaluated(model_dir) -> dict:
    """The task's eval.json entry, from the real evaluation (temperature fitted on a split)."""
    result = evaluate_model(
        model_dir,
        {"desk": ROWS},
        max_new_tokens=2,
        labels={"desk": LABELS},
        calibration_sets={"desk": _calibration_rows(model_dir)},
        device="cpu",
    )
    entry = result.to_json()["tasks"]["desk"]
    assert entry["calibration"]["labels"] == LABELS
    assert 0.3 < entry["calibration"]["temperature"] < 30  # a temperature that changes things
    # the rows mix both endings: eval.json names none, and serving keeps its default
    assert {label_end_of(r) for r in ROWS} == {"end_of_turn", "newline"}
    assert entry["calibration"]["label_end"] is None
    return entry


@pytest.fixture(scope="module")
def offline(model_dir) -> np.ndarray:
    """Evaluation's label scores of ``ROWS``: the model loaded as ``evaluate_model`` loads it."""
    model, tokenizer = load_model_on(model_dir, "cpu"), load_tokenizer(model_dir)
    return label_logprobs(model, tokenizer, ROWS, LABELS)


@pytest.fixture(scope="module")
def engine(model_dir) -> GenerationEngine:
    return GenerationEngine.from_dir(model_dir)  # as a serving replica loads it


def _as_row(probs: dict[str, float]) -> np.ndarray:
    return np.array([probs[label] for label in LABELS])


def test_the_engine_serves_evaluations_label_probabilities(engine, offline, evaluated):
    temperature = evaluated["calibration"]["temperature"]
    for i, row in enumerate(ROWS):
        raw = engine.label_probs(_turns(row), LABELS, label_end=label_end_of(row))
        np.testing.assert_allclose(
            _as_row(raw), apply_temperature(offline[i : i + 1], 1.0)[0], atol=TOL
        )
        calibrated = engine.label_probs(_turns(row), LABELS, temperature, label_end_of(row))
        want = apply_temperature(offline[i : i + 1], temperature)[0]
        np.testing.assert_allclose(_as_row(calibrated), want, atol=TOL)
        # the evaluated calibrated probability of the row's gold label, as eval.json holds it
        assert calibrated[row.label] == pytest.approx(evaluated["per_example_prob"][i], abs=TOL)
        assert max(calibrated.values()) == pytest.approx(want.max(), abs=TOL)
    assert not np.allclose(offline[0], offline[1])  # the rows' scores are not all alike


def test_the_prompt_runs_once_for_all_labels(engine):
    """Prompt once, its cache repeated under the labels: two forwards whatever the label count."""
    calls: list[int] = []
    hook = engine.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        engine.label_probs(_turns(ROWS[0]), LABELS)
    finally:
        hook.remove()
    assert len(calls) == 2


def test_an_unknown_label_end_is_a_user_error(engine):
    from hybridft.errors import UserError

    with pytest.raises(UserError, match="label_end: expected one of"):
        engine.label_probs(_turns(ROWS[0]), LABELS, label_end="eot")  # type: ignore[arg-type]


# --- through a live deployment ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(ray_session, model_dir, evaluated, tmp_path_factory):
    """The model behind Serve with the task as ``endpoint.classification_tasks`` reads it from
    eval.json, plus the same task declared with answers that go on past the label."""
    from ray import serve

    from hybridft.serve.launch import ServeModelArgs, build_app

    cal = evaluated["calibration"]
    task = {"labels": cal["labels"], "temperature": cal["temperature"]}
    tasks = {"desk": task, "desk_reply": {**task, "label_end": "newline"}}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve_dir = tmp_path_factory.mktemp("serve")
    key = KeyStore(serve_dir / "keys.db").create("tests")  # the door: the router's key store
    args = ServeModelArgs(
        model_dir=str(model_dir), model_name="m", version="1", tasks=tasks, num_cpus=0.25,
        serve_dir=str(serve_dir), engine="hf",
    )  # fmt: skip
    handle = serve.run(build_app(args), name="test-label-parity", route_prefix="/parity")
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/parity/v1", api_key=key, max_retries=3, timeout=30
    )
    yield client, handle
    serve.shutdown()


@pytest.mark.ray
def test_the_endpoint_serves_the_evaluated_calibrated_confidence(served, offline, evaluated):
    client, handle = served
    temperature = evaluated["calibration"]["temperature"]
    for i, row in enumerate(ROWS):
        task = "desk" if label_end_of(row) == "end_of_turn" else "desk_reply"
        body = {"model": "m", "messages": _turns(row), "max_tokens": 1}
        answer = client.chat.completions.create(**body, extra_body={"task": task})
        over_http = answer.model_extra["hybridft"]
        # the handle's answer(): the canary router's path to the same code
        reply = handle.answer.remote("chat", {**body, "task": task}).result()
        assert reply["status"] == 200
        want = apply_temperature(offline[i : i + 1], temperature)[0]
        for ext in (over_http, reply["body"]["hybridft"]):
            assert ext["calibrated"] and ext["task"] == task
            np.testing.assert_allclose(_as_row(ext["label_probs"]), want, atol=TOL)
            assert ext["confidence"] == pytest.approx(want.max(), abs=TOL)
            assert ext["label"] == LABELS[int(want.argmax())]
            gold = evaluated["per_example_prob"][i]
            assert ext["label_probs"][row.label] == pytest.approx(gold, abs=TOL)
