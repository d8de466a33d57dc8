"""A one-worker run in process (Ray Train's local mode, checkpoints persisted) trains exactly what
the same run trains on a worker group, and a killed process resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import job_dict, write_job
from safetensors.torch import load_file

from hybridft.errors import UserError
from hybridft.specs import load_job
from hybridft.train.in_process import INDEX_FILE
from hybridft.train.run import run

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec(tmp: Path, data: Path, **scaling) -> dict:
    spec = job_dict(
        tmp,
        data,
        name="inproc",
        stages=[
            {"name": "instruction", "mix": [{"source": "instr", "weight": 1}],
             "budget": {"steps": 4}, "lr": 3e-3},
            {"name": "sft", "mix": [{"source": "it_desk", "weight": 0.8},
                                    {"source": "instr", "weight": 0.2}],
             "budget": {"steps": 6}, "lr": 3e-3},
        ],
        scaling={"num_workers": 1, "resources_per_worker": {"CPU": 1}, **scaling},
    )  # fmt: skip
    spec["data"]["validation"] = {"it_desk": [str(data / "sft/it_desk/validation.jsonl")]}
    spec["training"].update(
        {"precision": "fp32", "checkpoint_every": 2, "log_every": 1, "validate_every": 3}
    )
    return spec


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def _losses(history: list[dict]) -> list[tuple]:
    return [(h["stage"], h["step"], h["loss"], h.get("val_loss")) for h in history]


@pytest.fixture(scope="module")
def worker_group_run(ray_session, small_demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker-group")
    return run(load_job(write_job(tmp, _spec(tmp, small_demo_data))))


@pytest.fixture(scope="module")
def in_process_run(ray_session, small_demo_data, tmp_path_factory):
    import torch

    tmp = tmp_path_factory.mktemp("in-process")
    threads = torch.get_num_threads()
    result = run(load_job(write_job(tmp, _spec(tmp, small_demo_data))), in_process=True)
    assert torch.get_num_threads() == threads  # the loop's thread count is not left behind
    return result


def test_in_process_trains_what_the_worker_group_trains(worker_group_run, in_process_run) -> None:
    assert _max_diff(in_process_run.model_dir, worker_group_run.model_dir) <= 1e-6
    a, b = _losses(in_process_run.history), _losses(worker_group_run.history)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (*_, loss_a, val_a), (*_, loss_b, val_b) in zip(a, b, strict=True):
        assert loss_a == pytest.approx(loss_b, abs=1e-6)
        assert (val_a is None) == (val_b is None)
        if val_a is not None:
            assert val_a == pytest.approx(val_b, abs=1e-6)
    # the stage models come out of the persisted stage-end checkpoints, as from a worker group
    assert (
        set(in_process_run.stage_dirs)
        == set(worker_group_run.stage_dirs)
        == {
            "instruction",
            "sft",
        }
    )
    for stage in in_process_run.stage_dirs:
        got, want = in_process_run.stage_dirs[stage], worker_group_run.stage_dirs[stage]
        assert _max_diff(got, want) <= 1e-6


def test_in_process_checkpoints_are_persisted_in_report_order(in_process_run) -> None:
    storage = in_process_run.run_dir.parent / "ray" / in_process_run.run_name
    index = json.loads((storage / INDEX_FILE).read_text())
    # checkpoint_every 2: steps 2, 4 (instruction end), 2, 4, 6 (sft end); training.keep_checkpoints
    # 2 (the default) keeps both stage ends and the 2 latest others: instruction step 2 is dropped
    steps = [(e["metrics"]["stage"], e["metrics"]["step"]) for e in index]
    assert steps == [("instruction", 4), ("sft", 2), ("sft", 4), ("sft", 6)]
    assert [e["dir"] for e in index] == [f"checkpoint_{i:06d}" for i in range(2, 6)]
    assert not (storage / "checkpoint_000001").exists()
    assert all((storage / e["dir"] / "train_state.pt").is_file() for e in index)
    assert not list(storage.glob(".*partial"))


def test_run_timings_account_for_the_fit(in_process_run, worker_group_run) -> None:
    for result in (in_process_run, worker_group_run):
        t = result.extra["timings"]
        assert t["steps_s"] == pytest.approx(sum(h["window_s"] for h in result.history))
        ours = t["setup_s"] + t["steps_s"] + t["validation_s"] + t["checkpoint_s"]
        assert t["ray_s"] == pytest.approx(t["fit_s"] - ours, abs=1e-9)
        assert t["steps_s"] > 0 and t["validation_s"] > 0 and t["checkpoint_s"] > 0
        assert t["prepare_s"] + t["fit_s"] + t["collect_s"] <= result.wall_s + 1e-6
        # every record carries the running sums, so a report that skips records loses nothing
        running = 0.0
        for h in result.history:
            running += h["window_s"]
            assert h["time/steps_s"] == pytest.approx(running)
        assert result.history[-1]["time/prepare_s"] == pytest.approx(t["prepare_s"], abs=0.5)


KILLED_RUN = """
import sys
from hybridft.specs import load_job
from hybridft.train.run import run
run(load_job(sys.argv[1]), run_name="killed", in_process=True)
"""


def test_killed_in_process_run_resumes_to_the_same_weights(
    ray_session, in_process_run, small_demo_data, tmp_path, capfd
) -> None:
    spec_path = write_job(tmp_path, _spec(tmp_path, small_demo_data))
    marker = tmp_path / "killed.txt"
    # the process SIGKILLs itself after step 3 of the sft stage; its last checkpoint: step 2
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HYBRIDFT_FAULT"] = f"0:1:3:{marker}"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert marker.is_file()
    storage = tmp_path / "runs" / "ray" / "killed"
    index = json.loads((storage / INDEX_FILE).read_text())
    assert (index[-1]["metrics"]["stage"], index[-1]["metrics"]["step"]) == ("sft", 2)

    capfd.readouterr()
    resumed = run(load_job(spec_path), run_name="killed", resume=True, in_process=True)
    assert "resuming at stage 1 step 2" in capfd.readouterr().out
    assert _max_diff(resumed.model_dir, in_process_run.model_dir) <= 1e-5
    assert [(h["stage"], h["step"]) for h in resumed.history] == [
        (h["stage"], h["step"]) for h in in_process_run.history
    ]


def test_in_process_needs_one_worker_and_the_runner_a_run_started_with(
    ray_session, small_demo_data, tmp_path, worker_group_run, in_process_run
) -> None:
    spec = _spec(tmp_path, small_demo_data)
    spec["scaling"] = {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}}
    path = write_job(tmp_path, spec)
    with pytest.raises(UserError) as info:
        run(load_job(path), in_process=True)
    line = next(i for i, x in enumerate(path.read_text().splitlines(), 1) if "num_workers" in x)
    assert str(info.value).startswith(f"{path}:{line}: scaling.num_workers: expected 1")
    assert str(info.value).endswith("got 2")

    job = load_job(write_job(tmp_path, _spec(tmp_path, small_demo_data), "one.yaml"))
    group_out = str(worker_group_run.run_dir.parent)
    with pytest.raises(UserError, match="started with a worker group"):
        run(job, run_name=worker_group_run.run_name, resume=True, output_dir=group_out,
            in_process=True)  # fmt: skip
    own_out = str(in_process_run.run_dir.parent)
    with pytest.raises(UserError, match="started in process"):
        run(job, run_name=in_process_run.run_name, resume=True, output_dir=own_out)
