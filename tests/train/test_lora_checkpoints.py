"""LoRA checkpoints hold the adapter, not the model: while the frozen weights are the base's own,
a checkpoint is the adapter, its optimizer and the loop state (a size test), no HF export is
written between stage ends, and a killed run resumes from such a checkpoint to exactly the
uninterrupted weights. Once an adapter is merged, the merged weights are written in full."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import job_dict, write_job
from safetensors.torch import load_file

from hybridft.specs import load_job
from hybridft.train.checkpoint import MODEL_STATE_FILE
from hybridft.train.in_process import INDEX_FILE
from hybridft.train.run import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec(tmp: Path, data: Path) -> dict:
    spec = job_dict(
        tmp,
        data,
        name="lora-ckpt",
        method={"type": "lora", "lora": {"r": 4}},
        stages=[
            {"name": "instruction", "mix": [{"source": "instr", "weight": 1}],
             "budget": {"steps": 4}, "lr": 3e-3},
            {"name": "sft", "mix": [{"source": "it_desk", "weight": 1}],
             "budget": {"steps": 4}, "lr": 3e-3, "adapter": "merge_and_new"},
        ],
        scaling={"num_workers": 1, "resources_per_worker": {"CPU": 1}},
    )  # fmt: skip
    spec["training"].update(
        {"precision": "fp32", "checkpoint_every": 2, "log_every": 1, "keep_checkpoints": None}
    )
    return spec


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def lora_run(ray_session, small_demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    return run(load_job(write_job(tmp, _spec(tmp, small_demo_data))), in_process=True)


def _checkpoints(result) -> dict[tuple[str, int], Path]:
    storage = result.run_dir.parent / "ray" / result.run_name
    index = json.loads((storage / INDEX_FILE).read_text())
    return {(e["metrics"]["stage"], e["metrics"]["step"]): storage / e["dir"] for e in index}


def test_a_lora_checkpoint_is_the_adapter_and_its_optimizer(lora_run) -> None:
    ckpts = _checkpoints(lora_run)
    model_bytes = (lora_run.model_dir / "model.safetensors").stat().st_size
    mid = ckpts[("instruction", 2)]
    blob = torch.load(mid / MODEL_STATE_FILE, weights_only=True)
    assert blob["adapter_only"] and blob["state"]
    assert all("lora_" in k for k in blob["state"])
    assert not (mid / "model").exists()  # no HF export between stage ends
    # adapter + its AdamW moments + loop state: a small fraction of the model's own weights
    assert _bytes(mid) < 0.25 * model_bytes, (_bytes(mid), model_bytes)
    end = ckpts[("instruction", 4)]  # a stage's end: the exported stage model, still no base copy
    assert (end / "model" / "model.safetensors").is_file() and (end / "adapter").is_dir()
    assert torch.load(end / MODEL_STATE_FILE, weights_only=True)["adapter_only"]


def test_after_a_merge_the_merged_weights_are_written_in_full(lora_run) -> None:
    blob = torch.load(_checkpoints(lora_run)[("sft", 2)] / MODEL_STATE_FILE, weights_only=True)
    assert not blob["adapter_only"]
    assert any("lora_" not in k for k in blob["state"])  # the merged frozen weights too


KILLED_RUN = """
import sys
from hybridft.specs import load_job
from hybridft.train.run import run
run(load_job(sys.argv[1]), run_name="killed", in_process=True)
"""


def test_a_run_resumes_from_an_adapter_only_checkpoint_to_the_same_weights(
    lora_run, small_demo_data, tmp_path, capfd
) -> None:
    spec_path = write_job(tmp_path, _spec(tmp_path, small_demo_data))
    marker = tmp_path / "killed.txt"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HYBRIDFT_FAULT"] = f"0:0:3:{marker}"  # killed after instruction step 3; last: step 2
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    capfd.readouterr()
    resumed = run(load_job(spec_path), run_name="killed", resume=True, in_process=True)
    assert "resuming at stage 0 step 2" in capfd.readouterr().out
    a = load_file(str(resumed.model_dir / "model.safetensors"))
    b = load_file(str(lora_run.model_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
