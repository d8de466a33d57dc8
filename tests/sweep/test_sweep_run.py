"""A real sweep on local Ray (2 CPUs): Train V2 inside Tune trials, ASHA on relayed validation
losses, the Optuna study in sqlite, nested MLflow runs, and resume after a SIGKILLed driver."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from sweep_helpers import BUDGET, space_dict, write_hybrid, write_space

from hybridft.sweep.params import sample_sequence
from hybridft.sweep.space import load_space
from hybridft.sweep.trial import ATTEMPTS_FILE, OUTCOME_FILE
from hybridft.sweep.tune import max_concurrent_trials, run_sweep, trial_resources
from hybridft.train.in_process import INDEX_FILE

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_concurrency_fits_the_cluster() -> None:
    from hybridft.specs import ScalingSpec

    two_half = ScalingSpec(num_workers=2, resources_per_worker={"CPU": 0.5})
    assert max_concurrent_trials(two_half, {"CPU": 2.0}) == 1  # 0.1 + 2 x 0.5 = 1.1 each
    one_half = ScalingSpec(num_workers=1, resources_per_worker={"CPU": 0.5})
    assert max_concurrent_trials(one_half, {"CPU": 2.0}) == 3
    assert max_concurrent_trials(one_half, {"CPU": 2.0}, cap=2) == 2
    whole = ScalingSpec(num_workers=2, resources_per_worker={"CPU": 1})
    assert max_concurrent_trials(whole, {"CPU": 2.0}) == 0  # run_sweep refuses it up front
    gpu = ScalingSpec(num_workers=2, use_gpu=True, resources_per_worker={"CPU": 1})
    assert max_concurrent_trials(gpu, {"CPU": 16.0, "GPU": 4.0}) == 2
    # in process a trial holds its one worker's resources and nothing more
    assert max_concurrent_trials(one_half, {"CPU": 2.0}, in_process=True) == 4
    one_gpu = ScalingSpec(num_workers=1, use_gpu=True, resources_per_worker={"CPU": 2})
    assert max_concurrent_trials(one_gpu, {"CPU": 16.0, "GPU": 4.0}, in_process=True) == 4
    assert trial_resources(one_half, in_process=True) == {"CPU": 0.5}
    assert trial_resources(one_half) == {"CPU": 0.6}


@pytest.mark.parametrize("runner", ["auto", "worker_group"])
def test_sweep_trains_trials_and_asha_sees_intermediate_results(
    ray_session, small_demo_data, tmp_path, runner
) -> None:
    job = write_hybrid(tmp_path, small_demo_data)
    spec = space_dict(job, trial_runner=runner)
    if runner == "auto":  # one worker: in process; 2 at a time, so a trial actor is reused
        spec["budget"]["max_concurrent"] = 2
    else:  # a worker group per trial costs ~20 s here: one trial shows the path
        spec["budget"]["trials"] = 1
    n = spec["budget"]["trials"]
    space_path = write_space(tmp_path, spec)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(
        space_path, storage_dir=tmp_path / "sweeps", tracking_uri=tracking, verbose=0
    )

    if runner == "auto":
        assert result.max_concurrent == 2
    else:
        # 2 CPUs / (0.1 trial + 0.5 worker) = 3, capped at the number of trials
        assert result.max_concurrent == min(3, n) == 1
    trials = json.loads((result.sweep_dir / "trials.json").read_text())
    assert len(trials) == n and {t["status"] for t in trials} <= {"completed", "stopped"}
    for t in trials:
        # ASHA got the loop's validation losses while the trial trained, on the token axis
        points = t["intermediate"]
        assert points and [p["iteration"] for p in points] == list(range(1, len(points) + 1))
        tokens = [p["sweep_tokens"] for p in points]
        assert tokens == sorted(tokens) and all("val_loss" in p for p in points)
        outcome = result.sweep_dir / "runs" / f"{t['trial_id']}-seed0" / OUTCOME_FILE
        if t["status"] == "completed":
            measured = json.loads(outcome.read_text())
            assert measured["in_process"] is (runner == "auto")
            assert t["objectives"] == {"val_loss": measured["objectives"]["val_loss"]}
            assert measured["trained_tokens"] >= BUDGET  # rounded up to whole steps
            assert len(points) > 1  # several results reached Tune while it trained
        else:  # stopped early by ASHA: killed before its run finished
            assert not t["objectives"] and not outcome.exists()
    assert any(t["status"] == "completed" for t in trials)
    if runner == "auto":  # 3 trials on 2 trial actors: one actor trained twice
        pids = [json.loads(x)["pid"] for x in (result.sweep_dir / ATTEMPTS_FILE).open()]
        assert len(pids) == 3 and len(set(pids)) == 2
        # each trial says whether it was its process's first: the benchmark times those from
        # the process's start (Tune's trial start comes after the actor is up)
        by_start = sorted(trials, key=lambda t: t["started_at"])
        assert [t["process"]["fresh"] for t in by_start] == [True, True, False]
        assert all(t["process"]["started_at"] <= t["started_at"] for t in trials)
    # same seed -> same sequence: the trials are the space's first sampled points, in order
    expected = sample_sequence(load_space(space_path), n)
    assert [t["params"] for t in sorted(trials, key=lambda t: t["optuna_number"])] == expected

    # the Optuna study lives in sqlite in the sweep directory
    import optuna

    study = optuna.load_study(study_name=result.study_name, storage=result.study_storage)
    states = sorted(s.state.name for s in study.trials)
    assert len(states) == n and set(states) <= {"COMPLETE", "PRUNED"}
    assert [t["trial_id"] for t in result.best]
    # its intermediate values are the relayed validation losses, stepped by tokens trained
    # (ASHA's axis), not by Tune's iteration count
    # (Tune tells the searcher every result but the one ASHA stops a trial on)
    by_number = {t["optuna_number"]: t for t in trials}
    for frozen in study.trials:
        trial = by_number[frozen.number]
        relayed = {p["sweep_tokens"]: p["val_loss"] for p in trial["intermediate"]}
        if trial["status"] == "completed":
            assert frozen.intermediate_values == relayed
        else:
            assert frozen.intermediate_values.items() <= relayed.items()
            assert len(relayed) - len(frozen.intermediate_values) <= 1
    # every trial is an MLflow run nested under the sweep's run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    for t in trials:
        run = client.get_run(t["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
        assert run.data.tags["hybridft.trial_status"] == t["status"]
        assert run.info.status == "FINISHED"
        assert client.get_metric_history(t["mlflow_run_id"], "val_loss")
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"


DRIVER = """
import sys
from hybridft.sweep.tune import run_sweep
run_sweep(sys.argv[1], sweep_name="drv", storage_dir=sys.argv[2], tracking_uri=sys.argv[3],
          verbose=0)
"""


def _attempts(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / ATTEMPTS_FILE
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _tune_knows(sweep_dir: Path, trial_id: str) -> bool:
    states = sorted((sweep_dir / "tune").glob("experiment_state-*.json"))
    return bool(states) and trial_id in states[-1].read_text()


def test_killed_driver_resumes_without_rerunning_finished_trials(
    ray_session, small_demo_data, tmp_path
) -> None:
    job = write_hybrid(tmp_path, small_demo_data)
    spec = space_dict(job)
    # three times the usual budget: trial 2 runs long enough to be killed mid-way, after Tune's
    # saved state lists it (saved about every second, later on a busy machine)
    spec["budget"] = {"trials": 2, "tokens": 3 * BUDGET, "seeds": [0], "max_concurrent": 1}
    spec["job_overrides"] = {"training": {"checkpoint_every": 2, "validate_every": 2}}
    spec.pop("asha")  # no early stopping: the kill lands in a trial that would finish
    space_path = write_space(tmp_path, spec)
    storage = tmp_path / "sweeps"
    sweep_dir = storage / "drv"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(space_path), str(storage), tracking],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # kill the driver (and the Ray it started) once trial 1 finished and trial 2 has a
        # checkpoint of its own, and Tune's saved experiment state lists trial 2 (Tune saves
        # it every second during a sweep: a trial younger than that would start afresh)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            started = _attempts(sweep_dir)
            if len(started) == 2:
                first, second = (a["run_name"] for a in started)
                done = (sweep_dir / "runs" / first / OUTCOME_FILE).is_file()
                ckpts = list(
                    (sweep_dir / "runs" / "ray" / second).glob("checkpoint_*/train_state.pt")
                )
                # a second one written: the first is complete
                if done and len(ckpts) >= 2 and _tune_knows(sweep_dir, started[1]["trial_id"]):
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        # the Ray it started dies with it: its trial process too (a Ray worker is not always in
        # the driver's process group, and an orphan would go on training until it noticed)
        for attempt in _attempts(sweep_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(attempt["pid"], signal.SIGKILL)
        proc.wait()
    second_id = started[1]["trial_id"]
    # the kill must land mid-run: a run whose last checkpoint is its final one has nothing left
    # to resume (the resumed sweep would only measure it), and this test would prove nothing
    index = sweep_dir / "runs" / "ray" / started[1]["run_name"] / INDEX_FILE
    last = json.loads(index.read_text())[-1]["metrics"]
    assert not last.get("done"), "killed too late: trial 2 had finished training"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_sweep(
            space_path,
            sweep_name="drv",
            resume=True,
            storage_dir=storage,
            tracking_uri=tracking,
            verbose=0,
        )
    # the resumed trial re-reports validations its killed run had reported: Optuna gets
    # each step once (it would warn, and ignore the value, on a repeated step)
    assert not [w for w in caught if "already reported" in str(w.message)]
    attempts = _attempts(sweep_dir)
    runs = [a["run_name"] for a in attempts]
    # the finished trial trained once; the unfinished one was resumed, not restarted
    assert runs.count(started[0]["run_name"]) == 1
    assert [a["resume"] for a in attempts if a["run_name"] == started[1]["run_name"]] == [
        False,
        True,
    ]
    assert len(attempts) == 3
    trials = {t["trial_id"]: t for t in result.trials}
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials.values())
    # Tune restarts the trial function (iteration 1 again); its Train run continues from a
    # checkpoint (step >= 1): its first validation is past global step 2, where a fresh run's
    # first one is (validate_every 2, or the instruction stage's end before that)
    points = trials[second_id]["intermediate"]
    resumed = [p for p in points if p["iteration"] == 1][-1]
    assert resumed["sweep_steps"] > 2, [
        {k: p.get(k) for k in ("iteration", "sweep_steps", "trial/fresh_process")} for p in points
    ]
    import optuna

    study = optuna.load_study(study_name="drv", storage=result.study_storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]


def test_killed_trial_process_is_restarted_and_resumes(
    ray_session, small_demo_data, tmp_path
) -> None:
    """An in-process trial whose process dies (SIGKILL, as the OOM killer would) is started
    again on a fresh actor (``scaling.max_failures``); its run resumes from its last checkpoint
    and ends where an uninterrupted trial ends."""
    job = write_hybrid(tmp_path, small_demo_data)
    spec = space_dict(job)
    spec["budget"] = {"trials": 1, "tokens": 2 * BUDGET, "seeds": [0]}
    spec["job_overrides"] = {
        "training": {"checkpoint_every": 2, "validate_every": 2},
        "scaling": {"max_failures": 1},
    }
    spec.pop("asha")
    space_path = write_space(tmp_path, spec)
    assert load_space(space_path).in_process
    storage = tmp_path / "sweeps"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed: dict = {}

    def kill_once_checkpointed() -> None:  # the trial's process, once a checkpoint is complete
        deadline = time.time() + 240
        while time.time() < deadline:
            started = _attempts(storage / "killed")
            if started:
                run_dir = storage / "killed" / "runs" / "ray" / started[0]["run_name"]
                if len(list(run_dir.glob("checkpoint_*/train_state.pt"))) >= 2:
                    os.kill(started[0]["pid"], signal.SIGKILL)
                    killed.update(started[0])
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once_checkpointed, daemon=True)
    killer.start()
    result = run_sweep(
        space_path, sweep_name="killed", storage_dir=storage, tracking_uri=tracking, verbose=0
    )
    killer.join(timeout=5)
    assert killed, "the trial finished before its process could be killed"
    attempts = _attempts(storage / "killed")
    assert [a["resume"] for a in attempts] == [False, True]  # resumed, not trained afresh
    assert attempts[1]["pid"] != killed["pid"]
    (trial,) = result.trials
    assert trial["status"] == "completed"
    assert (trial["starts"], trial["failures"]) == (2, 1)  # the record says it was restarted

    clean = run_sweep(
        space_path, sweep_name="clean", storage_dir=storage, tracking_uri=tracking, verbose=0
    )
    (ref,) = clean.trials
    assert trial["params"] == ref["params"]
    assert trial["trained_tokens"] == ref["trained_tokens"]
    assert trial["objectives"]["val_loss"] == pytest.approx(ref["objectives"]["val_loss"], rel=1e-5)


def test_same_seed_same_trials_and_same_metrics(ray_session, small_demo_data, tmp_path) -> None:
    """Two sweeps of one space with one seed: the same configurations, in the same order, and
    the same measured objectives (within float tolerance). Sampling is fixed for the first
    ``startup_trials`` points (here: all of them); after that TPE also sees which trials have
    finished, which concurrent trials may reach in a different order."""
    job = write_hybrid(tmp_path, small_demo_data)
    spec = space_dict(job)
    spec.pop("asha")  # ASHA's decisions depend on arrival order, not only on the seed
    spec["sampler"] = {"type": "tpe", "startup_trials": 2}
    spec["budget"]["trials"] = 2
    space_path = write_space(tmp_path, spec)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = [
        run_sweep(space_path, sweep_name=name, storage_dir=tmp_path / "sweeps",
                  tracking_uri=tracking, verbose=0)
        for name in ("first", "second")
    ]  # fmt: skip
    a, b = (sorted(r.trials, key=lambda t: t["optuna_number"]) for r in runs)
    assert [t["params"] for t in a] == [t["params"] for t in b]
    assert [t["status"] for t in a] == [t["status"] for t in b] == ["completed"] * 2
    for x, y in zip(a, b, strict=True):
        assert x["objectives"]["val_loss"] == pytest.approx(y["objectives"]["val_loss"], rel=1e-5)
        assert x["trained_tokens"] == y["trained_tokens"]
    # and the trials did differ from one another: equal metrics are not a constant
    assert len({round(t["objectives"]["val_loss"], 6) for t in a}) == 2
