"""The decision report's in-process runner actors survive their process dying: with the job's
``scaling.max_failures``, Ray starts the runner again and retries the call it was running (a
training call then resumes its run by name: see test_train_in_process); without, the call fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import hybrid_job

from hybridft.specs import load_job
from hybridft.sweep.report_runs import ReportRunners

pytestmark = [pytest.mark.ray]


def _runner_for(tmp_path: Path, max_failures: int):
    from helpers import write_job

    spec = hybrid_job(tmp_path, tmp_path / "data")
    spec["scaling"] = {
        "num_workers": 1,
        "resources_per_worker": {"CPU": 0.1},
        "max_failures": max_failures,
    }
    runners = ReportRunners(load_job(write_job(tmp_path, spec, f"job{max_failures}.yaml")), 1, True)
    return runners, runners.idle[0]


def die_once():
    """A function that SIGKILLs its process the first time (a real death, as the OOM killer's),
    and returns its pid after. Built here so Ray ships it by value (workers cannot import tests)."""

    def die(marker: str) -> int:
        import os
        import signal
        from pathlib import Path

        if not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    return die


def test_a_runner_whose_process_died_is_restarted_and_the_call_retried(
    ray_session, tmp_path: Path
) -> None:
    import ray

    runners, runner = _runner_for(tmp_path, max_failures=1)
    try:
        marker = tmp_path / "died"
        pid = ray.get(runner.call.remote(die_once(), str(marker)), timeout=120)
        assert marker.is_file() and int(marker.read_text()) != pid  # answered by a new process
    finally:
        runners.close()

    runners, runner = _runner_for(tmp_path, max_failures=0)
    try:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(runner.call.remote(die_once(), str(tmp_path / "died0")), timeout=120)
    finally:
        runners.close()
