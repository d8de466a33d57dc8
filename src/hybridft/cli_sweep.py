"""``hybridft sweep | report | study``: search hybrid schedules, then decide with evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from hybridft.errors import UserError
from hybridft.sweep.report_html import decision_tables

console = Console(stderr=True)
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: sqlite)")


def sweep(
    space: Path = typer.Argument(..., help="a search space (search_spaces/*.yaml)"),
    name: str = typer.Option(None, "--name", help="sweep name (default: space name + time)"),
    resume: str = typer.Option(None, "--resume", help="continue the sweep NAME after a kill"),
    storage_dir: str = typer.Option(".hybridft/sweeps", help="where sweeps live"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Search hybrid schedules: Ray Tune + Optuna (TPE) + ASHA; each trial a Ray Train run."""
    result = _sweep(space, resume or name, resume is not None, storage_dir, tracking_uri)
    typer.echo(str(result.sweep_dir))


def _sweep(space: Path, name: str | None, resume: bool, storage: str, uri: str | None) -> Any:
    from hybridft.sweep.tune import run_sweep  # heavy: Ray Tune, Optuna, Ray Train

    result = run_sweep(space, sweep_name=name, resume=resume, storage_dir=storage, tracking_uri=uri)
    counts: dict[str, int] = {}
    for t in result.trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    console.print(
        f"sweep {result.name}: {len(result.trials)} trials "
        f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}) in {result.wall_s:.0f}s",
        highlight=False,
    )
    for t in result.best:
        console.print(f"best {t['trial_id']}: {t['objectives']}  {t['params']}", highlight=False)
    return result


def report(
    sweep_dir: Path = typer.Argument(..., help="a sweep directory (printed by `hybridft sweep`)"),
    seeds: int = typer.Option(3, help="seeds per arm (>= 3 for intervals worth reading)"),
    eval_examples: int = typer.Option(200, help="test rows per task"),
    register: str = typer.Option(None, "--register", help="register the recommendation as NAME"),
    score: str = typer.Option(
        "accuracy", help="per-row target score: accuracy | prob (calibrated gold-label prob.)"
    ),
    evidence: str = typer.Option(
        "demo", help="directions to measure: demo (label efficiency, held-out clusters) | all"
    ),
    margin: float = typer.Option(0.03, help="smallest target-score difference worth acting on"),
    policy: Path = typer.Option(Path("policies/default.yaml"), help="gate for the proposal"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """SFT only vs instruction only vs the best hybrid at matched compute, the published
    directions measured on this data -> report.html (verdict and Evidence printed here too)."""
    page = _report(sweep_dir, seeds, eval_examples, register, score, evidence, margin, policy,
                   tracking_uri)  # fmt: skip
    typer.echo(str(page))


def study(
    space: Path = typer.Argument(Path("search_spaces/demo.yaml"), help="a search space"),
    seeds: int = typer.Option(3, help="seeds per arm and per evidence run"),
    eval_examples: int = typer.Option(200, help="test rows per task"),
    margin: float = typer.Option(0.03, help="smallest target-score difference worth acting on"),
    storage_dir: str = typer.Option(".hybridft/sweeps", help="where sweeps live"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """The whole Evidence table: the sweep, then a report measuring every published direction
    (label efficiency, convergence, replay vs forgetting, held-out clusters, LoRA vs full)."""
    result = _sweep(space, None, False, storage_dir, tracking_uri)
    page = _report(result.sweep_dir, seeds, eval_examples, None, "accuracy", "all", margin,
                   Path("policies/default.yaml"), tracking_uri)  # fmt: skip
    typer.echo(str(page))


def _report(
    sweep_dir: Path,
    seeds: int,
    eval_examples: int,
    register: str | None,
    score: str,
    evidence: str,
    margin: float,
    policy: Path,
    tracking_uri: str | None,
) -> Path:
    # heavy: Ray Tune, Ray Train, torch (the report trains and evaluates its arms)
    from hybridft.sweep.report import build_report
    from hybridft.sweep.report_plan import DEMO_DIRECTIONS, DIRECTIONS

    if seeds < 1:
        raise UserError(f"--seeds: expected >= 1, got {seeds}")
    if evidence not in ("demo", "all"):
        raise UserError(f"--evidence: expected demo or all, got {evidence!r}")
    if not 0.0 <= margin < 1.0:
        raise UserError(f"--margin: expected a score difference in [0, 1), got {margin}")
    page = build_report(
        sweep_dir,
        seeds=seeds,
        eval_examples=eval_examples,
        register_as=register,
        policy_path=policy if policy.exists() else None,
        tracking_uri=tracking_uri,
        on_event=lambda msg: console.print(msg, highlight=False),
        score=score,
        directions=DIRECTIONS if evidence == "all" else DEMO_DIRECTIONS,
        margin=margin,
    )
    for part in decision_tables(json.loads((page.parent / "report.json").read_text())):
        console.print(part, highlight=False)
    return page
