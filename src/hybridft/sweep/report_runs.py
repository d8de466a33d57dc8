"""Where the decision report's runs train: warm in-process runner actors, or worker groups.

Each report run trains one arm (or one labelled subset) once and is evaluated in full; a run
interrupted with its report resumes by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridft.specs import JobSpec


def train_and_evaluate(job: JobSpec, run_name: str, runs_dir: str, in_process: bool) -> Any:
    """Train one report run (resuming an interrupted one) and evaluate it (writes eval.json)."""
    from hybridft.sweep.objectives import forget_eval, full_eval
    from hybridft.train.run import run

    resume = (Path(runs_dir) / run_name / "run.json").is_file() or (
        Path(runs_dir) / "ray" / run_name
    ).is_dir()
    result = run(job, run_name=run_name, resume=resume, output_dir=runs_dir, in_process=in_process)
    full_eval(job, result)  # writes the run's eval.json
    forget_eval(result)
    return result


class ReportRunners:
    """Where report runs train: ``width`` warm in-process runner actors (as the space's trials
    run), else each run in a zero-CPU task whose Ray Train worker group holds the CPUs.
    ``close()`` frees the actors' CPUs (a failed report must not keep them)."""

    def __init__(self, job: JobSpec, width: int, in_process: bool) -> None:
        import ray

        from hybridft.train.in_process import InProcessRunner, runner_options

        self.idle: list[Any] = []
        self.busy: dict[Any, Any] = {}
        self.task = None
        if in_process:
            scaling = job.scaling
            options = runner_options(
                scaling.resources_per_worker, scaling.use_gpu, scaling.max_failures
            )
            actor = ray.remote(**options)
            self.idle = [actor(InProcessRunner).remote() for _ in range(width)]
        else:
            self.task = ray.remote(num_cpus=0, max_retries=0)(train_and_evaluate)

    def launch(self, job: JobSpec, name: str, runs_dir: str) -> Any:
        if self.task is not None:
            return self.task.remote(job, name, runs_dir, False)
        runner = self.idle.pop()
        ref = runner.call.remote(train_and_evaluate, job, name, runs_dir, True)
        self.busy[ref] = runner
        return ref

    def release(self, ref: Any) -> None:
        if ref in self.busy:
            self.idle.append(self.busy.pop(ref))

    def close(self) -> None:
        import ray

        for runner in [*self.idle, *self.busy.values()]:
            ray.kill(runner)
        self.idle, self.busy = [], {}
