"""The skeleton end to end on real parts: synth data -> Ray Train (2 workers, DDP over gloo) ->
eval -> MLflow run + model version -> Ray Serve -> the real openai client gets an answer."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from helpers import job_dict, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_data(small_demo_data) -> Path:
    """The demo's generator at the suite's small size (tests/conftest.py): 16 test rows are
    evaluated either way (tests/helpers.py), and the full size costs ~10 s to write."""
    return small_demo_data


def write_spec(tmp: Path, data: Path, steps: int = 12) -> Path:
    """The shared tiny job (tests/helpers.py), narrowed to the one SFT task of the skeleton."""
    spec = job_dict(
        tmp,
        data,
        name="e2e",
        stages=[
            {
                "name": "sft",
                "mix": [{"source": "it_desk", "weight": 1}],
                "budget": {"steps": steps},
                "lr": 2e-3,
                "warmup_steps": 2,
            }
        ],
        training={"batch_size": 4, "log_every": 4, "checkpoint_every": 6},
    )
    del spec["data"]["sources"]["instr"]
    # the pretrained base (a short recipe): its corpus is the first link of the lineage
    spec["model"].update(base="pretrained", pretrain={"steps": 4, "batch_size": 2, "seq_len": 64})
    return write_job(tmp, spec)


def test_skeleton_train_eval_register_serve_answer(ray_session, demo_data, tmp_path) -> None:
    import openai
    from ray import serve

    from hybridft.model import read_base_info
    from hybridft.pipeline import train_and_log
    from hybridft.registry.client import Registry
    from hybridft.registry.registration import evaluate_run
    from hybridft.registry.tracking import RunRecord, register_run
    from hybridft.serve.keys import KeyStore
    from hybridft.serve.launch import serve_version

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = train_and_log(write_spec(tmp_path, demo_data), tracking_uri=uri)

    # the trained model is a standard HF directory
    model_dir = Path(record.model_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    mixture = json.loads((Path(record.run_dir) / "mixture.json").read_text())
    assert mixture["sft"]["sources"]["it_desk"]["realised_share"] == pytest.approx(1.0)
    assert RunRecord.load(record.run_dir).mlflow_run_id == record.mlflow_run_id

    result = evaluate_run(record.run_dir, tracking_uri=uri)
    assert result.tasks["it_desk"].n == 16
    assert 0.0 <= result.headline <= 1.0

    registry = Registry(uri)
    run = registry.client.get_run(record.mlflow_run_id)
    assert run.data.params["stages.0.lr"] == "0.002"
    assert "eval/score" in run.data.metrics and "loss" in run.data.metrics
    assert run.data.tags["hybridft.fingerprint.it_desk"] == record.fingerprints["it_desk"]
    history = registry.client.get_metric_history(record.mlflow_run_id, "loss")
    assert [m.step for m in history] == [4, 8, 12]

    version = register_run(registry, record, "e2e-model")
    assert version.tags["hybridft.fingerprint.it_desk"] == record.fingerprints["it_desk"]
    assert registry.resolve(f"e2e-model@{version.version}").run_id == record.mlflow_run_id

    # lineage: alias -> version -> run -> stages -> dataset fingerprints, via the real CLI
    import subprocess
    import sys

    from hybridft.registry.lineage import describe_lineage

    registry.set_alias("e2e-model", "candidate", version.version)
    info = describe_lineage(registry, "e2e-model@candidate")
    assert info["version"] == version.version and info["aliases"] == ["candidate"]
    assert [c["name"] for c in info["chain"]] == ["base", "sft"]
    corpus = info["chain"][0]["corpus"]  # corpus -> base -> stages -> version
    assert corpus["name"] == "python-stdlib-docstrings"
    assert corpus["fingerprint"] == read_base_info(record.base_dir)["corpus"]["fingerprint"]
    assert info["chain"][1]["sources"]["it_desk"] == record.fingerprints["it_desk"]
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridft.cli",
            "lineage",
            "e2e-model@candidate",
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert record.fingerprints["it_desk"] in shown.stdout
    assert record.run_name in shown.stdout and "@candidate" in shown.stdout
    lines = shown.stdout.splitlines()
    order = [
        next(i for i, ln in enumerate(lines) if needle in ln)
        for needle in ("e2e-model@", "run ", "sft ", "base ", corpus["fingerprint"])
    ]
    assert order == sorted(order)  # version -> run -> stage -> base -> corpus, as a tree

    port = free_port()
    key = KeyStore(tmp_path / "serve" / "keys.db").create("e2e")  # the door: the router's keys
    url = serve_version(f"e2e-model@{version.version}", port=port, tracking_uri=uri,
                        cache=tmp_path / "served", serve_dir=tmp_path / "serve")  # fmt: skip
    try:
        client = openai.OpenAI(base_url=url, api_key=key)
        ticket = json.loads((demo_data / "sft/it_desk/test.jsonl").read_text().splitlines()[0])
        reply = client.chat.completions.create(
            model="e2e-model",
            messages=[{"role": "user", "content": ticket["prompt"]}],
            max_tokens=8,
            temperature=0,
        )
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage.completion_tokens <= 8
        assert f"e2e-model/{version.version}" in (reply.system_fingerprint or "")
    finally:
        serve.shutdown()
