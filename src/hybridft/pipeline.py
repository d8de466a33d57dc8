"""Stage functions the CLI and the demo call: each reads artifacts on disk and writes new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from hybridft.data.records import Example
from hybridft.errors import UserError
from hybridft.registry.tracking import RunRecord
from hybridft.specs import DataSpec, JobSpec, ScalingSpec, load_job


def train_and_log(
    spec_path: str | Path,
    run_name: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    output_dir: str | None = None,
    require_approved_data: bool = False,
) -> RunRecord:
    """Load the spec, train on Ray Train, log the run (and model) to MLflow.

    With ``require_approved_data``, every dataset the run would train on is catalogued (as a
    draft when new) and training is refused unless each one is approved in the data catalog.
    """
    from hybridft.registry.client import Registry
    from hybridft.registry.tracking import log_train_run
    from hybridft.train.run import run

    spec = load_job(spec_path)
    registry = Registry(tracking_uri)  # opened first: a bad URI fails before training
    gate = None
    if require_approved_data:
        gate = lambda fps: require_approved(registry, spec, fps)  # noqa: E731
    result = run(spec, run_name=run_name, resume=resume, output_dir=output_dir, data_gate=gate)
    record = log_train_run(registry, spec, result)
    catalog_run_data(registry, spec, record.fingerprints)
    return record


def catalog_run_data(registry: Any, spec: JobSpec, fingerprints: dict[str, str]) -> list[Any]:
    """Record every dataset version a run trained on in the data catalog (as ``draft``).

    Provenance: the source files, rows, format and schema; for generated data, the generator and
    seed from the ``manifest.json`` beside the files. Instruction sources are catalogued as
    ``prompts`` (demonstration sets), task sources as ``dataset``. Entries that exist (the same
    fingerprint) are left as they are, review status included. Training is not role-gated, so the
    entry is registered under the training user's name with the trainer role for this one action.
    """
    from hybridft.registry.access import User, current_user
    from hybridft.registry.catalog import register_dataset

    who = current_user()
    entries = []
    for name, fp in sorted(fingerprints.items()):
        source = spec.data.sources.get(name)
        if source is None:
            continue
        manifest = _manifest_for(source.paths)
        rows = sum(1 for _ in _read_source(spec.data, name, source.paths))
        entries.append(
            register_dataset(
                registry,
                fp,
                kind="prompts" if source.kind == "instruction" else "dataset",
                name=name,
                sources=source.paths,
                generator=str(manifest.get("generator", "user")),
                seed=manifest.get("seed"),
                rows=rows,
                format=source.format or "auto",
                schema={"kind": source.kind, "format": source.format or "auto",
                        "labels": source.labels or [],
                        "manifest": manifest.get("path", "")},
                user=User(who.name, (*who.roles, "trainer")),
            )
        )  # fmt: skip
    return entries


class UnapprovedData(UserError):
    """Training refused: ``blocked`` lists ``{source, fingerprint, status}`` not approved."""

    def __init__(self, blocked: list[dict[str, str]]) -> None:
        self.blocked = blocked
        listed = "; ".join(f"{b['source']} {b['fingerprint']} is {b['status']}" for b in blocked)
        super().__init__(
            f"training refused: unapproved data: {listed}. An approver runs `hybridft catalog "
            "review FINGERPRINT --status approved` (see `hybridft catalog list`)"
        )


def require_approved(registry: Any, spec: JobSpec, fingerprints: dict[str, str]) -> None:
    """Catalogue ``fingerprints`` (drafts when new); raise UnapprovedData unless all approved."""
    from hybridft.registry.catalog import get_dataset

    catalog_run_data(registry, spec, fingerprints)
    blocked = []
    for name, fp in sorted(fingerprints.items()):
        entry = get_dataset(registry, fp)
        status = entry.status if entry is not None else "not catalogued"
        if status != "approved":
            blocked.append({"source": name, "fingerprint": fp, "status": status})
    if blocked:
        raise UnapprovedData(blocked)


def _manifest_for(paths: list[str]) -> dict[str, Any]:
    """The generator manifest that lists the first of ``paths`` (searched upwards), or {}."""
    import json

    first = Path(paths[0]).resolve()
    for parent in list(first.parents)[:4]:
        manifest = parent / "manifest.json"
        if manifest.is_file():
            try:
                doc = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            rel = first.relative_to(parent).as_posix()
            if rel in doc.get("files", {}):
                return {**doc, "path": str(manifest)}
    return {}


def register_version(
    run_dir: str | Path,
    name: str,
    policy_path: str | Path | None = None,
    tracking_uri: str | None = None,
) -> Any:
    """Register a run's model as a new version, with its lineage, eval and model card.

    With a policy whose ``max_contamination`` is set, a run whose measured contamination (the
    leakage shield of ``hybridft eval``) exceeds it is refused, and the refusal is audited.
    """
    from hybridft.registry.access import current_user
    from hybridft.registry.audit import AuditRecord, append_audit, default_audit_path
    from hybridft.registry.client import Registry
    from hybridft.registry.gates import CONTAMINATION
    from hybridft.registry.model_card import log_card
    from hybridft.registry.policy import load_policy
    from hybridft.registry.tracking import register_run

    record = RunRecord.load(run_dir)
    registry = Registry(tracking_uri or record.tracking_uri)
    policy = load_policy(policy_path) if policy_path else None
    if policy is not None and policy.max_contamination is not None:
        value = registry.client.get_run(record.mlflow_run_id).data.metrics.get(CONTAMINATION)
        if value is not None and value > policy.max_contamination:
            reason = (
                f"contamination {value:.4f} > policy {policy.name} max_contamination "
                f"{policy.max_contamination} (leakage shield, {run_dir}/eval.json)"
            )
            who = current_user()
            append_audit(
                AuditRecord(who=who.name, roles=list(who.roles), action="register",
                            outcome="refused", reason=reason, model=name,
                            extra={"run": record.run_name}),
                default_audit_path(registry.tracking_uri),
            )  # fmt: skip
            raise UserError(f"registration refused: {reason}")
    ref = register_run(registry, record, name)
    log_card(registry, ref, policy=policy)
    return ref


def load_eval_sets(data: DataSpec) -> dict[str, list[Example]]:
    """The held-out split of each source named under ``data.eval``, validated like training data."""
    return {name: _read_source(data, name, paths) for name, paths in data.eval.items()}


def _read_source(data: DataSpec, name: str, paths: list[str]) -> list[Example]:
    from hybridft.data.reader import read_examples

    source = data.sources[name]
    return list(read_examples(paths, fmt=source.format, source=name, labels=source.labels))


def training_examples(spec: JobSpec) -> list[Example]:
    """Every row of every source a stage trains on (weight > 0): what the leakage shield checks."""
    used = {m.source for stage in spec.stages for m in stage.mix if m.weight > 0}
    out: list[Example] = []
    for name in sorted(used):
        out += _read_source(spec.data, name, spec.data.sources[name].paths)
    return out


def evaluate_run(run_dir: str | Path, tracking_uri: str | None = None, full: bool = False) -> Any:
    """Score a run's final model on its spec's eval splits; write eval/ + eval.json, log to MLflow.

    The leakage shield runs first (train vs eval overlap, clean and dirty scores); classification
    tasks get calibrated label probabilities and robustness across phrasings; with a task graph,
    held-out-cluster scores and forgetting (instruction tasks before vs after the last stage).
    """
    from hybridft.registry.client import Registry
    from hybridft.registry.tracking import log_eval

    record = RunRecord.load(run_dir)
    spec = JobSpec.model_validate_json((Path(run_dir) / "spec.json").read_text())
    if full:  # whatever the run's spec skipped (label probabilities)
        spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"label_probs": True})})
    result = evaluate_spec(spec, run_dir, record.model_dir, record.stage_dirs, record.fingerprints)
    log_eval(
        Registry(tracking_uri or record.tracking_uri), record, result, Path(run_dir) / "eval.json"
    )
    return result


def evaluate_on_job_hardware(
    scaling: ScalingSpec, model_dir: str | Path, eval_sets: dict[str, list[Example]], **kwargs: Any
) -> Any:
    """``evaluate_model(model_dir, eval_sets, **kwargs)`` on the kind of device the job trains on.

    A GPU job (``scaling.use_gpu``) is scored in a Ray task holding one GPU, on CUDA: on a
    cluster this process is the driver on the head pod, which has no GPU. A CPU job is scored
    here, in this process, as before. ``on_progress`` (a callback into this process) is not sent
    to the task.
    """
    from hybridft.evaluate.run import evaluate_model

    if not scaling.use_gpu:
        return evaluate_model(model_dir, eval_sets, **kwargs)
    import ray

    from hybridft.runtime import ensure_ray

    ensure_ray()
    kwargs.pop("on_progress", None)
    task = ray.remote(num_gpus=1)(evaluate_model)
    return ray.get(task.remote(str(model_dir), eval_sets, device="cuda", **kwargs))


def evaluate_spec(
    spec: JobSpec,
    run_dir: str | Path,
    model_dir: str | Path,
    stage_dirs: dict[str, str],
    fingerprints: dict[str, str],
    progress: bool = True,
) -> Any:
    """``evaluate_run`` without MLflow: score ``model_dir``, write ``run_dir``/eval.json + eval/."""
    from contextlib import nullcontext

    from rich.progress import Progress

    from hybridft.evaluate.model_index import write_model_index
    from hybridft.evaluate.run import task_groups, write_eval

    sets = load_eval_sets(spec.data)
    calibration = {n: _read_source(spec.data, n, p) for n, p in spec.eval.calibration.items()}
    train = training_examples(spec) if spec.eval.leakage else None
    out_dir = Path(run_dir) / "eval"
    total = sum(len(rows) for _, rows in task_groups(sets, spec.eval.max_examples).values())
    # a GPU job is scored in a Ray task (evaluate_on_job_hardware): no bar to advance from here
    bar = Progress(transient=True) if progress and not spec.scaling.use_gpu else None
    with bar or nullcontext():
        task = bar.add_task("evaluating", total=total) if bar else None
        result = evaluate_on_job_hardware(
            spec.scaling,
            model_dir,
            sets,
            max_examples=spec.eval.max_examples,
            max_new_tokens=spec.eval.max_new_tokens,
            on_progress=(lambda n: bar.advance(task, n)) if bar and task is not None else None,
            labels={n: s.labels for n, s in spec.data.sources.items() if s.labels},
            calibration_sets=calibration,
            phrasings=spec.eval.phrasings,
            train_examples=train,
            artifacts_dir=out_dir,
            n_bins=spec.eval.calibration_bins,
            target_sources={n for n in sets if spec.data.sources[n].kind == "task"} or None,
            label_probs=spec.eval.label_probs,
        )
    if spec.eval.task_graph:
        result.graph = graph_scores(spec, stage_dirs, result, train)
    metrics = result.flat_metrics()
    index = write_model_index(out_dir / "model-index.yaml", spec.name, metrics, fingerprints)
    result.artifacts["model_index"] = str(index)
    write_eval(result, Path(run_dir) / "eval.json")
    return result


def graph_scores(
    spec: JobSpec, stage_dirs: dict[str, str], result: Any, train: list[Example] | None
) -> dict[str, Any]:
    """Held-out-cluster score (FLAN: no task of the cluster trained) and forgetting.

    Forgetting compares the instruction tasks' scores of the model before the last stage (the
    previous stage's model) with the final model's; it needs two or more stages.
    """
    from hybridft.evaluate.task_graph import forgetting, heldout_tasks, load_task_graph

    graph = load_task_graph(spec.eval.task_graph or "")
    known = set(graph.tasks)
    rows = train if train is not None else training_examples(spec)
    trained = sorted({e.task or e.source for e in rows} & known)
    # a source holding one task is scored under the source's name: the graph knows the task's
    scores = {
        (t.task or name): t.score for name, t in result.tasks.items() if (t.task or name) in known
    }
    held = [t for t in heldout_tasks(graph, trained) if t in scores]
    out: dict[str, Any] = {
        "task_graph": spec.eval.task_graph,
        "trained_tasks": trained,
        "heldout_tasks": held,
        "heldout_score": sum(scores[t] for t in held) / len(held) if held else None,
        # per-row scores behind the figures (the report's intervals resample them)
        "heldout_rows": [x for t in held for x in _per_example(result, t)],
        "forgetting": None,
    }
    instruction = [t for t in scores if graph.attr(t, "kind") == "instruction"]
    if len(spec.stages) >= 2 and instruction:
        before_dir = stage_dirs.get(spec.stages[-2].name)
        if before_dir:
            sets = {
                t: [e for rows in load_eval_sets(spec.data).values() for e in rows if e.task == t]
                for t in instruction
            }
            before = evaluate_on_job_hardware(
                spec.scaling,
                before_dir,
                sets,
                max_examples=spec.eval.max_examples,
                max_new_tokens=spec.eval.max_new_tokens,
            )
            report = forgetting({t: s.score for t, s in before.tasks.items()}, scores, instruction)
            out["forgetting"] = report["mean_drop"]
            out["forgetting_per_task"] = report["per_task"]
            out["forgetting_before"] = spec.stages[-2].name
            out["forgetting_rows"] = [
                b - a
                for t in instruction
                for b, a in zip(before.tasks[t].per_example, _per_example(result, t), strict=True)
            ]
    return out


def _per_example(result: Any, task: str) -> list[float]:
    """A task's per-row scores, whether it is scored under its own or its source's name."""
    for name, t in result.tasks.items():
        if (t.task or name) == task:
            return list(t.per_example)
    return []


def eval_table(result: Any) -> Table:
    """Per task: scores, calibration (ECE before -> after temperature), robustness, leakage."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    table = Table(title=f"eval: {result.model_dir}")
    for col in ("task", "n", "accuracy", "exact match", "F1", "ECE raw->cal", "Brier", "spread"):
        table.add_column(col)
    table.add_column("clean / dirty")
    for name, t in result.tasks.items():
        cal = t.calibration or {}
        ece = f"{cal['ece_raw']:.3f}->{cal['ece']:.3f}" if cal else "-"
        spread = num(t.robustness["spread"]) if t.robustness else "-"
        leak = t.leakage or {}
        split = f"{num(leak.get('clean'))} / {num(leak.get('dirty'))}" if leak else "-"
        table.add_row(
            name, str(t.n), num(t.accuracy), num(t.exact_match), num(t.f1),
            ece, num(cal.get("brier")), spread, split,
        )  # fmt: skip
    table.add_row("[b]score[/]", "", f"[b]{result.headline:.3f}[/]", *[""] * 6)
    notes = []
    if result.leakage:
        leak = result.leakage
        scope = ", ".join(leak["target_sources"] or ["all eval sets"])
        notes.append(
            f"leakage shield: {leak['n_dirty']}/{leak['n_eval']} eval rows overlap "
            f"{leak['n_train']} train rows ("
            + ", ".join(f"{k} {v}" for k, v in leak["counts"].items())
            + f"); contamination {leak['contamination']:.3f} on {scope}, "
            f"{leak['contamination_all']:.3f} on every eval row"
        )
    if result.graph:
        g = result.graph
        held = (
            f"{num(g['heldout_score'])} over {', '.join(g['heldout_tasks'])}"
            if g["heldout_tasks"]
            else "none scored (every scored task's cluster was trained on)"
        )
        notes.append(
            f"held-out clusters (FLAN): {held}"
            + (f"; forgetting {g['forgetting']:+.3f}" if g.get("forgetting") is not None else "")
        )
    if notes:
        table.caption = "\n".join(notes)
    return table


def serve_version(
    ref: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tracking_uri: str | None = None,
    cache: str | Path = ".hybridft/served",
    adapters: dict[str, str] | None = None,
) -> str:
    """Resolve a registry reference, fetch its model, deploy it on Ray Serve; returns the base URL.

    ``adapters``: LoRA adapter directories on that base, served as model ids ``NAME:ADAPTER``.
    """
    from hybridft.registry.client import Registry
    from hybridft.runtime import ensure_ray
    from hybridft.serve.launch import deploy

    registry = Registry(tracking_uri)
    version = registry.resolve(ref)
    model_dir = registry.download(version, Path(cache) / version.name / version.version)
    ensure_ray()
    return deploy(
        str(model_dir.resolve()),
        version.name,
        version.version,
        host=host,
        port=port,
        adapters=adapters,
    )
