"""``hybridft monitor | retrain | trace``: the loop's commands (thin; logic in monitor/). Each
command imports the library when it runs: ``hybridft --help`` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out = Console()

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: sqlite)")
PolicyArg = typer.Argument(Path("policies/monitor.yaml"), help="monitoring / retraining policy")


def monitor(
    policy_path: Path = PolicyArg,
    html: Path = typer.Option(None, "--html", help="write the status page here"),
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
    fail_on_alert: bool = typer.Option(False, help="exit 3 when an alert fires (for cron / CI)"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Drift, KPIs and alerts of the live versions, from the traffic log."""
    # heavy: pyarrow, scipy, pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.monitor.policy import load_monitor_policy
    from hybridft.monitor.status import alerts_table, gather_status
    from hybridft.monitor.status_page import render_status
    from hybridft.registry.client import Registry

    policy = load_monitor_policy(policy_path)
    data = gather_status(policy, Registry(tracking_uri))
    for problem in data.problems:
        console.print(f"[yellow]warning:[/] {problem}", highlight=False)
    if as_json:
        print(json.dumps(data.to_dict(), default=str))
    else:
        table = Table(title=f"{policy.model}: live versions")
        for col in ("version", "aliases", "arm", "weight", "requests", "error rate", "p95 s"):
            table.add_column(col)
        for v in data.versions:
            table.add_row(
                v["version"], " ".join("@" + a for a in v["aliases"]), v["arm"],
                "-" if v["weight"] is None else f"{v['weight']:.0%}", str(v["requests"]),
                "-" if v["error_rate"] is None else f"{v['error_rate']:.1%}",
                "-" if v["latency_p95_s"] is None else f"{v['latency_p95_s']:.3f}",
            )  # fmt: skip
        out.print(table)
        alerts = Table(title=f"{len(data.alerts)} alert(s)")
        for col in ("severity", "monitor", "version", "message"):
            alerts.add_column(col)
        for row in alerts_table(data.alerts):
            alerts.add_row(*row)
        out.print(alerts)
        if data.retrain is not None:
            verdict = "retrain" if data.retrain["fire"] else "no retrain needed"
            out.print(f"retraining trigger: [b]{verdict}[/]", highlight=False)
    if html is not None:
        page = render_status(data, html)
        console.print(f"status page: {page}")
    if fail_on_alert and data.alerts:
        raise typer.Exit(3)


def retrain(
    policy_path: Path = PolicyArg,
    force: bool = typer.Option(False, help="retrain even if no alert rule fired"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Alerts -> reviewed data (draft, needs approval) -> train -> eval -> gates -> @canary."""
    # heavy: training, evaluation (torch), the sweep's record (Ray Tune), MLflow
    from hybridft.monitor.policy import load_monitor_policy
    from hybridft.monitor.retrain import retrain as run_retrain
    from hybridft.monitor.status import gather_status
    from hybridft.registry.access import require
    from hybridft.registry.client import Registry

    policy = load_monitor_policy(policy_path)
    registry = Registry(tracking_uri)
    # who acts, before the store is read (run_retrain checks the releaser role as well)
    user = require("trainer", "retrain", tracking_uri=registry.tracking_uri, model=policy.model)
    alerts = gather_status(policy, registry).alerts
    outcome = run_retrain(
        policy, registry, alerts=alerts, force=force, on_event=lambda m: console.print(m), user=user
    )
    for b in outcome.blocked:
        console.print(
            f"[yellow]waiting for approval:[/] {b['source']} {b['fingerprint']} ({b['status']}): "
            f"hybridft catalog review {b['fingerprint']} --status approved",
            highlight=False,
        )
    print(json.dumps(outcome.to_dict(), default=str))
    if outcome.status in ("awaiting_approval", "refused"):
        raise typer.Exit(2)


def trace(
    request_id: str = typer.Argument(..., help="the id in a response's hybridft.request_id"),
    serve_dir: Path = typer.Option(Path(".hybridft/serve"), "--serve-dir"),
    as_json: bool = typer.Option(False, "--json"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """A live answer -> model version -> runs -> dataset fingerprints -> source files and rows."""
    # heavy: pyarrow (the traffic log), pydantic, MLflow
    from hybridft.monitor.trace import trace_request, trace_tree
    from hybridft.registry.client import Registry

    info = trace_request(request_id, serve_dir, Registry(tracking_uri))
    if as_json:
        print(json.dumps(info, default=str))
    else:
        out.print(trace_tree(info), width=200)
