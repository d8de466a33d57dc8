"""Fault tolerance: a SIGKILLed worker or driver resumes to exactly the uninterrupted weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import job_dict, write_job
from safetensors.torch import load_file

from hybridft.errors import UserError
from hybridft.specs import load_job
from hybridft.train.run import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec(tmp: Path, data: Path, **scaling) -> dict:
    spec = job_dict(
        tmp,
        data,
        name="resume",
        stages=[
            {
                "name": "instruction",
                "mix": [{"source": "instr", "weight": 1}],
                "budget": {"steps": 4},
                "lr": 3e-3,
            },
            {
                "name": "sft",
                "mix": [{"source": "it_desk", "weight": 0.8}, {"source": "instr", "weight": 0.2}],
                "budget": {"steps": 6},
                "lr": 3e-3,
            },
        ],
        scaling={"num_workers": 2, "resources_per_worker": {"CPU": 0.5}, **scaling},
    )
    spec["training"].update({"precision": "fp32", "checkpoint_every": 2, "log_every": 1})
    return spec


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.fixture(scope="module")
def uninterrupted(ray_session, small_demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    return run(load_job(write_job(tmp, _spec(tmp, small_demo_data))))


def test_killed_worker_resumes_to_the_same_weights(
    uninterrupted, small_demo_data, tmp_path, monkeypatch
) -> None:
    marker = tmp_path / "killed.txt"
    # rank 1 SIGKILLs itself after step 3 of stage 2 (the sft stage); last checkpoint: step 2
    monkeypatch.setenv("HYBRIDFT_FAULT", f"1:1:3:{marker}")
    result = run(load_job(write_job(tmp_path, _spec(tmp_path, small_demo_data, max_failures=1))))
    assert marker.is_file(), "the fault drill did not fire"
    assert _max_diff(result.model_dir, uninterrupted.model_dir) <= 1e-5
    # the history continues where the checkpoint was: each (stage, step) logged once
    seen = [(h["stage"], h["step"]) for h in result.history]
    assert seen == [(h["stage"], h["step"]) for h in uninterrupted.history]


def test_killed_driver_resumes_with_the_same_run_name(
    ray_session, uninterrupted, small_demo_data, tmp_path
) -> None:
    spec_path = write_job(tmp_path, _spec(tmp_path, small_demo_data))
    ray_dir = tmp_path / "runs" / "ray" / "drv"
    cmd = [
        sys.executable,
        "-m",
        "hybridft.cli",
        "train",
        str(spec_path),
        "--run-name",
        "drv",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    # the driver joins the session's Ray, as `ray job submit` drivers join a running cluster:
    # killing it ends its job (Ray kills the job's Train controller and workers), not the
    # cluster, and no second Ray starts on 2 cores (the client reads the session's token)
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "token",
    }
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # kill the driver once stage 2 has a checkpoint
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            states = list(ray_dir.glob("checkpoint_*/train_state.pt"))
            if any(_state(p)["stage"] == 1 and _state(p)["step"] > 0 for p in states):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the driver finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # a new start with the same name is refused without --resume: no accidental resume
    with pytest.raises(UserError, match="already exists"):
        run(load_job(spec_path), run_name="drv")
    resumed = subprocess.run(
        cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "resuming at stage 1" in out  # stage 1 (instruction) is not redone
    run_dir = Path(resumed.stdout.strip().splitlines()[-1])
    final = run_dir / "final" / "model"
    assert _max_diff(final, uninterrupted.model_dir) <= 1e-5
    history = [
        json.loads(x) for x in (run_dir / "final" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [(h["stage"], h["step"]) for h in history] == [
        (h["stage"], h["step"]) for h in uninterrupted.history
    ]


def _state(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, weights_only=False)
    except Exception:  # a checkpoint still being written
        return {"stage": -1, "step": 0}


def test_new_runs_get_new_names(uninterrupted, small_demo_data, tmp_path) -> None:
    from hybridft.train.run import new_run_name

    assert new_run_name("x") != new_run_name("x")
    assert uninterrupted.run_name.startswith("resume-")
    with pytest.raises(UserError, match="no such run"):
        run(
            load_job(write_job(tmp_path, _spec(tmp_path, small_demo_data))),
            run_name="never-ran",
            resume=True,
        )


def test_more_workers_than_the_cluster_fails_before_any_worker(
    ray_session, small_demo_data, tmp_path
) -> None:
    spec = _spec(tmp_path, small_demo_data)
    spec["scaling"] = {"num_workers": 5, "resources_per_worker": {"CPU": 1}}
    path = write_job(tmp_path, spec)
    start = time.time()
    with pytest.raises(UserError) as info:
        run(load_job(path))
    assert time.time() - start < 30
    message = str(info.value)
    assert message.startswith(f"{path}:")
    assert "scaling.num_workers: expected at most 2 workers with 1 CPU each" in message
    assert message.endswith("got 5")


def test_tracking_logs_spec_metrics_mixture_and_the_stage_chain(uninterrupted, tmp_path) -> None:
    """MLflow gets the flattened spec, per-step metrics, the realised mixture, fingerprints, the
    commit, package versions, and base -> instruction -> sft with each model's weights digest."""
    from hybridft.registry.client import Registry
    from hybridft.registry.tracking import log_train_run, model_digest

    spec = load_job(Path(uninterrupted.run_dir).parent.parent / "job.yaml")
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    record = log_train_run(registry, spec, uninterrupted)
    client = registry.client
    run = client.get_run(record.mlflow_run_id)
    assert run.data.params["stages.1.mix.0.source"] == "it_desk"
    assert run.data.params["training.precision"] == "fp32"
    assert run.data.tags["hybridft.git_commit"]
    assert run.data.tags["hybridft.stage_chain"] == "base -> instruction -> sft"
    steps = [m.step for m in client.get_metric_history(record.mlflow_run_id, "loss")]
    assert steps == list(range(1, 11))  # log_every 1, 4 + 6 steps, global step numbering
    assert client.get_metric_history(record.mlflow_run_id, "loss/instr")
    assert all(m.value > 0 for m in client.get_metric_history(record.mlflow_run_id, "mfu"))
    arts = {a.path for a in client.list_artifacts(record.mlflow_run_id)}
    assert {
        "mixture.json",
        "fingerprints.json",
        "packages.json",
        "lineage.json",
        "spec.json",
        "model",
        "stages",
    } <= arts
    chain = json.loads(
        Path(
            client.download_artifacts(record.mlflow_run_id, "lineage.json", str(tmp_path))
        ).read_text()
    )
    assert [(c["name"], c["parent"]) for c in chain] == [
        ("base", None),
        ("instruction", "base"),
        ("sft", "instruction"),
    ]
    assert chain[2]["weights_sha256"] == model_digest(uninterrupted.model_dir)
    assert chain[1]["weights_sha256"] not in (
        chain[0]["weights_sha256"],
        chain[2]["weights_sha256"],
    )
    assert chain[2]["sources"]["it_desk"] == uninterrupted.fingerprints["it_desk"]
    sft_mix = chain[2]["realised_mixture"]["sources"]
    assert sft_mix["it_desk"]["requested_share"] == pytest.approx(0.8)
    assert sft_mix["it_desk"]["example_share"] == pytest.approx(0.8, abs=0.1)
