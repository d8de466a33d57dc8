"""Stage functions the CLI and the demo call: each reads artifacts on disk and writes new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from hybridft.data.records import Example
from hybridft.registry.tracking import RunRecord
from hybridft.specs import DataSpec, JobSpec, load_job


def train_and_log(
    spec_path: str | Path,
    run_name: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    output_dir: str | None = None,
) -> RunRecord:
    """Load the spec, train on Ray Train, log the run (and model) to MLflow."""
    from hybridft.registry.client import Registry
    from hybridft.registry.tracking import log_train_run
    from hybridft.train.run import run

    spec = load_job(spec_path)
    registry = Registry(tracking_uri)  # opened first: a bad URI fails before training
    result = run(spec, run_name=run_name, resume=resume, output_dir=output_dir)
    return log_train_run(registry, spec, result)


def load_eval_sets(data: DataSpec) -> dict[str, list[Example]]:
    """The held-out split of each source named under ``data.eval``, validated like training data."""
    from hybridft.data.reader import read_examples

    sets = {}
    for name, paths in data.eval.items():
        source = data.sources[name]
        sets[name] = list(
            read_examples(paths, fmt=source.format, source=name, labels=source.labels)
        )
    return sets


def evaluate_run(run_dir: str | Path, tracking_uri: str | None = None) -> Any:
    """Score a run's final model on its spec's eval splits; write eval.json and log to MLflow."""
    from rich.progress import Progress

    from hybridft.evaluate.run import evaluate_model, write_eval
    from hybridft.registry.client import Registry
    from hybridft.registry.tracking import log_eval

    record = RunRecord.load(run_dir)
    spec = JobSpec.model_validate_json((Path(run_dir) / "spec.json").read_text())
    sets = load_eval_sets(spec.data)
    total = sum(min(len(v), spec.eval.max_examples) for v in sets.values())
    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=total)
        result = evaluate_model(
            record.model_dir,
            sets,
            max_examples=spec.eval.max_examples,
            max_new_tokens=spec.eval.max_new_tokens,
            on_progress=lambda n: progress.advance(task, n),
        )
    path = write_eval(result, Path(run_dir) / "eval.json")
    log_eval(Registry(tracking_uri or record.tracking_uri), record, result, path)
    return result


def eval_table(result: Any) -> Table:
    table = Table(title=f"eval: {result.model_dir}")
    for col in ("task", "n", "accuracy", "exact match", "F1"):
        table.add_column(col)
    for name, t in result.tasks.items():
        acc = f"{t.accuracy:.3f}" if t.accuracy is not None else "-"
        table.add_row(name, str(t.n), acc, f"{t.exact_match:.3f}", f"{t.f1:.3f}")
    table.add_row("[b]score[/]", "", f"[b]{result.headline:.3f}[/]", "", "")
    return table


def serve_version(
    ref: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tracking_uri: str | None = None,
    cache: str | Path = ".hybridft/served",
) -> str:
    """Resolve a registry reference, fetch its model, deploy it on Ray Serve; returns the base URL."""
    from hybridft.registry.client import Registry
    from hybridft.serve.deployment import deploy
    from hybridft.train.run import ensure_ray

    registry = Registry(tracking_uri)
    version = registry.resolve(ref)
    model_dir = registry.download(version, Path(cache) / version.name / version.version)
    ensure_ray()
    return deploy(str(model_dir.resolve()), version.name, version.version, host=host, port=port)
