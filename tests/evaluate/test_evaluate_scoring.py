"""Label scoring and the eval suite on a real (tiny, random) HF model directory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hybridft.data.records import Example, Message
from hybridft.evaluate.generate import chat_prompt
from hybridft.evaluate.scoring import label_logprobs, rephrase
from hybridft.model.hf import load_model, load_tokenizer

LABELS = ["network low", "network high", "hardware", "identity medium"]


def _example(prompt: str, completion: str, label: str | None, i: int = 0, **meta: str) -> Example:
    return Example(
        messages=(Message("user", prompt), Message("assistant", completion)),
        source="t",
        file="t.jsonl",
        line=i + 1,
        label=label,
        task="t",
        meta=dict(meta),
        id=f"t-{i}",
    )


def _brute_force(model, tokenizer, example: Example, label: str) -> float:
    """Sum of the label continuation's log-probs from one uncached forward of the whole text."""
    prompt = chat_prompt(tokenizer, example)
    if "\n" in example.completion.strip():
        text = prompt + label + "\n"
    else:
        msgs = [{"role": m.role, "content": m.content} for m in example.prompt_messages]
        text = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": label}], tokenize=False
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    first = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prompt))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(first, len(ids))))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


def test_cached_label_scores_equal_a_full_forward_per_label(tiny):
    model, tokenizer = tiny
    examples = [
        _example("Ticket: my laptop cannot reach the VPN", "network low", "network low", 0),
        _example("Customer: refund please", "network high\nWe refunded you.", "network high", 1),
    ]
    got = label_logprobs(model, tokenizer, examples, LABELS)
    want = np.array([[_brute_force(model, tokenizer, e, c) for c in LABELS] for e in examples])
    # both run in the model's own dtype (float32 here): only the summation order differs
    assert np.allclose(got, want, rtol=0, atol=1e-4), (got, want)
    assert np.isfinite(got).all()
    # the two continuation shapes differ: with a reply after the label a newline ends it,
    # alone the label ends the turn; the scores are not the same numbers
    assert not np.allclose(got[0], got[1])


def test_rephrase_rewrites_the_last_user_message_only():
    e = _example("route this", "network low", "network low")
    r = rephrase(e, "Please: {prompt}!")
    assert r.prompt_messages[-1].content == "Please: route this!"
    assert r.completion == e.completion and r.label == e.label
    assert rephrase(e, "{prompt}") is e


def test_graph_scores_know_a_single_task_source_by_its_rows_task(small_demo_data, tmp_path):
    """A source holding one instruction task is scored under the source's name; the task graph
    still finds it through the rows' task (held-out cluster here: extraction was not trained)."""
    from helpers import job_dict, write_job

    from hybridft.evaluate.job import graph_scores
    from hybridft.evaluate.run import EvalResult, TaskScore
    from hybridft.specs import load_job

    spec_dict = job_dict(tmp_path, small_demo_data)
    spec_dict["eval"]["task_graph"] = str(small_demo_data / "task_graph.yaml")
    spec = load_job(write_job(tmp_path, spec_dict))
    result = EvalResult(
        "m",
        {
            "it_desk": TaskScore(n=1, exact_match=1.0, f1=1.0, accuracy=1.0, task="it_desk"),
            "instr_x": TaskScore(n=1, exact_match=0.25, f1=0.5, accuracy=None, task="extract_date"),
        },
        1.0,
    )
    train = [_example("t", "network low", "network low", 0)]
    train = [replace(train[0], task="it_desk")]
    graph = graph_scores(spec, {}, result, train)
    assert graph["heldout_tasks"] == ["extract_date"] and graph["heldout_score"] == 0.25


# --- the device evaluation runs on ------------------------------------------------------------

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="here 'auto' would be CUDA")


@NO_CUDA
def test_device_resolution_auto_is_cpu_here_and_bad_devices_are_user_errors():
    from hybridft.errors import UserError
    from hybridft.model.device import model_dtype, resolve_device

    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert model_dtype(torch.device("cpu")) == torch.float32
    assert model_dtype(torch.device("cuda")) == torch.bfloat16
    with pytest.raises(UserError, match="device: 'cuda' asked for, but torch sees no CUDA"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="device: expected 'auto', 'cpu', 'cuda'.*got 'meta'"):
        resolve_device("meta")
    with pytest.raises(UserError, match="device: expected .*got 'gpu0'"):
        resolve_device("gpu0")


def _labelled(n: int) -> list[Example]:
    labels = ["network low", "network high"]
    return [
        _example(f"Ticket {i}: my laptop cannot reach the VPN", labels[i % 2], labels[i % 2], i)
        for i in range(n)
    ]


@NO_CUDA
def test_evaluate_model_on_an_explicit_cpu_equals_the_default(tiny_model_dir):
    from hybridft.errors import UserError
    from hybridft.evaluate.run import evaluate_model

    sets = {"t": _labelled(4)}

    def scores(**device: str) -> dict:
        doc = evaluate_model(tiny_model_dir, sets, max_new_tokens=4, **device).to_json()
        doc.pop("examples_per_s")
        return doc

    default = scores()
    assert default["tasks"]["t"]["calibration"] is not None  # label scoring ran as well
    assert scores(device="cpu") == default
    with pytest.raises(UserError, match="device: .*got 'meta'"):
        evaluate_model(tiny_model_dir, sets, device="meta")


def test_generation_and_scoring_put_inputs_and_autocast_on_the_models_device(
    tiny_model_dir, monkeypatch
):
    """On ``meta`` (the one device besides the CPU a CPU-only torch has) the model's first call
    shows where the inputs were made; generation asks autocast for the model's device type,
    label scoring asks for none (it runs in the model's dtype, as serving does)."""
    from contextlib import nullcontext

    from helpers import FirstForward, first_forward_devices

    from hybridft.evaluate.generate import generate_answers

    model, tokenizer = load_model(tiny_model_dir).eval().to("meta"), load_tokenizer(tiny_model_dir)
    autocast: list[str] = []
    monkeypatch.setattr(torch, "autocast", lambda kind, **_: autocast.append(kind) or nullcontext())
    generated: dict[str, str] = {}

    def generate(**kwargs):  # HF generate itself cannot run on meta: look at what it is given
        generated.update({k: v.device.type for k, v in kwargs.items() if torch.is_tensor(v)})
        raise FirstForward

    monkeypatch.setattr(model, "generate", generate)
    with pytest.raises(FirstForward):
        generate_answers(model, tokenizer, ["Ticket 1: VPN"], max_new_tokens=2)
    assert generated == {"input_ids": "meta", "attention_mask": "meta"}
    scored = first_forward_devices(
        model, lambda: label_logprobs(model, tokenizer, _labelled(1), LABELS)
    )
    assert scored == {"input_ids": "meta"}
    assert autocast == ["meta"]


def test_a_gpu_jobs_evaluation_runs_in_a_ray_task_holding_one_gpu(monkeypatch):
    """``scaling.use_gpu``: a Ray task with ``num_gpus=1`` scores on CUDA (the driver may be a
    GPU-less head); a CPU job is scored in this process, with the progress callback."""
    import ray

    import hybridft.evaluate.run as run
    from hybridft.evaluate.job import evaluate_on_job_hardware
    from hybridft.specs import ScalingSpec

    local: list[dict] = []
    monkeypatch.setattr(run, "evaluate_model", lambda *a, **kw: local.append(kw) or "here")
    remote: dict = {}

    def fake_remote(**options):
        class Task:
            @staticmethod
            def remote(*args, **kwargs):
                remote.update(options=options, args=args, kwargs=kwargs)
                return "ref"

        return lambda fn: remote.update(fn=fn) or Task()

    monkeypatch.setattr(ray, "remote", fake_remote)
    monkeypatch.setattr(ray, "get", lambda ref: f"got {ref}")
    monkeypatch.setattr("hybridft.runtime.ensure_ray", lambda: None)
    progress = print

    cpu = evaluate_on_job_hardware(ScalingSpec(), "m", {}, max_examples=3, on_progress=progress)
    assert cpu == "here" and local == [{"max_examples": 3, "on_progress": progress}]
    assert not remote

    gpu = ScalingSpec(use_gpu=True)
    assert evaluate_on_job_hardware(gpu, "m", {}, max_examples=3, on_progress=progress) == "got ref"
    assert remote["options"] == {"num_gpus": 1} and remote["fn"] is run.evaluate_model
    assert remote["args"] == ("m", {})
    assert remote["kwargs"] == {"device": "cuda", "max_examples": 3}
    assert len(local) == 1
