"""``hybridft canary | keys | review``: the serving side's commands (thin; logic in serve/ and
release/). Each command imports the library when it runs: ``hybridft --help`` stays fast."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hybridft.runtime import ensure_ray

console = Console(stderr=True)
out = Console()

ServeDirOpt = typer.Option(Path(".hybridft/serve"), "--serve-dir", help="endpoint state folder")
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: sqlite)")

canary_app = typer.Typer(no_args_is_help=True, help="Canary releases: run, inspect, manual gates.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of the serving endpoint (hashed).")
review_app = typer.Typer(no_args_is_help=True, help="The human review queue of flagged answers.")


def _authorize(role: str, action: str, model: str = "", tracking_uri: str | None = None):
    """The acting user, who holds ``role`` (refusals audited), and the audit log to record in."""
    # heavy: MLflow (the store decides the identity); `hybridft --help` imports none of it
    from hybridft.registry.access import require
    from hybridft.registry.audit import default_audit_path
    from hybridft.registry.client import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    audit = default_audit_path(uri)
    return require(role, action, audit_path=audit, tracking_uri=uri, model=model), audit


def _controller(
    spec_path: Path, serve_dir: Path, tracking_uri: str | None, deploy: bool, action: str
):
    # heavy: the controller and the endpoint bring pydantic, MLflow, Ray Serve
    from hybridft.errors import UserError
    from hybridft.registry.access import refuse
    from hybridft.registry.bindings import policy_for
    from hybridft.registry.client import Registry
    from hybridft.release.controller import CanaryController
    from hybridft.serve.canary import ServePaths, load_canary_spec
    from hybridft.serve.endpoint import ServeDeployer

    spec = load_canary_spec(spec_path)
    registry = Registry(tracking_uri)
    user, audit = _authorize("releaser", action, spec.model, registry.tracking_uri)
    try:  # the model's bound policy; the spec's must be the same
        policy, note = policy_for(registry, spec.model, spec.policy)
    except UserError as exc:
        raise refuse(user, action, f"{spec_path}: {exc}", audit, model=spec.model) from None
    console.print(note, highlight=False)
    deployer = ServeDeployer(registry, spec.model) if deploy else None
    return CanaryController(spec, ServePaths(serve_dir), registry, policy, user, deployer)


def _prober(controller, url: str, serve_dir: Path):
    """Labelled probes with a fresh key of their own (keys are stored hashed: a new one per run)."""
    # heavy: pydantic (the canary spec), httpx (the probes)
    from hybridft.release.probes import PROBE_KEY_NAME, Prober, load_probe_rows
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.keys import KeyStore

    cfg = controller.spec.probes
    keys = KeyStore(ServePaths(serve_dir).keys)
    if any(k.name == PROBE_KEY_NAME for k in keys.list()):
        keys.revoke(PROBE_KEY_NAME)
    return Prober(
        load_probe_rows(cfg.path), url, keys.create(PROBE_KEY_NAME), controller.spec.model,
        controller.traffic, per_interval=cfg.per_interval, task=cfg.task, labels=cfg.labels,
        max_tokens=cfg.max_tokens,
    )  # fmt: skip


@canary_app.command("run")
def canary_run(
    spec_path: Path = typer.Argument(..., help="canary spec (serve/canary.yaml)"),
    serve_dir: Path = ServeDirOpt,
    port: int = typer.Option(8000),
    host: str = typer.Option("127.0.0.1"),
    deploy: bool = typer.Option(True, help="deploy versions on Ray Serve (off: simulated traffic)"),
    poll: float = typer.Option(1.0, help="seconds between controller ticks"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Serve the model's champion behind the canary router and run the controller (Ctrl-C stops
    the controller; the endpoint keeps serving). Point @canary at a version to start a canary."""
    # heavy: pydantic (the canary state), Ray Serve (the endpoint)
    from hybridft.registry.access import record_allowed
    from hybridft.serve.canary import CanaryStore, ServePaths
    from hybridft.serve.endpoint import start_endpoint

    controller = _controller(spec_path, serve_dir, tracking_uri, deploy, "canary_run")
    record_allowed(
        controller.user,
        "canary_run",
        controller.audit_path,
        model=controller.spec.model,
        extra={"spec": str(spec_path), "deploy": deploy},
    )
    if deploy:
        ensure_ray()
        url = start_endpoint(controller.spec, serve_dir, controller.registry, host=host, port=port)
        console.print(f"[green]serving[/] {controller.spec.model} at {url}")
        if controller.spec.probes is not None:
            controller.prober = _prober(controller, url, serve_dir)
    else:
        store = CanaryStore(ServePaths(serve_dir).state)
        if not store.exists():
            champion = controller.registry.resolve(
                f"{controller.spec.model}@{controller.spec.champion_alias}"
            )
            store.init(controller.spec.model, champion.version)
    console.print(f"canary controller for {controller.spec.model}: ticking every {poll}s")
    try:
        controller.run(poll_s=poll)
    except KeyboardInterrupt:
        pass


@canary_app.command("status")
def canary_status(
    serve_dir: Path = ServeDirOpt, as_json: bool = typer.Option(False, "--json")
) -> None:
    """The canary's state and its recent decisions."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.serve.canary import CanaryStore, ServePaths

    state = CanaryStore(ServePaths(serve_dir).state).read()
    if as_json:
        out.print_json(state.model_dump_json())
        return
    out.print(
        f"[b]{state.model}[/]: primary {state.primary}, canary {state.canary or '-'}, "
        f"status [b]{state.status}[/], weight {state.weight:.2f}, mode {state.mode}, "
        f"intervals {state.intervals}, failed checks {state.failed_checks}"
    )
    table = Table("when", "decision", "weight", "who", "reason")
    for d in state.history[-15:]:
        when = time.strftime("%H:%M:%S", time.localtime(d.at))
        table.add_row(when, d.decision, f"{d.weight:.2f}", d.who, d.reason)
    out.print(table)


def _manual(action: str, serve_dir: Path, reason: str, weight: float | None = None) -> None:
    """A manual gate on the running canary (role releaser; audited either way)."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.registry.access import record_allowed
    from hybridft.serve.canary import CanaryStore, ServePaths, manual_action

    store = CanaryStore(ServePaths(serve_dir).state)
    model = store.read().model if store.exists() else ""
    user, audit = _authorize("releaser", f"canary_{action}", model)
    state = manual_action(store, action, user.name, reason, weight)
    record_allowed(
        user,
        f"canary_{action}",
        audit,
        reason=reason,
        model=state.model,
        version=state.canary,
        extra={"weight": state.weight, "status": state.status},
    )
    console.print(f"{action}: status {state.status}, weight {state.weight:.2f}")


@canary_app.command("pause")
def canary_pause(serve_dir: Path = ServeDirOpt, reason: str = typer.Option("")) -> None:
    """Stop the analysis and keep the current weight."""
    _manual("pause", serve_dir, reason)


@canary_app.command("resume")
def canary_resume(serve_dir: Path = ServeDirOpt, reason: str = typer.Option("")) -> None:
    """Resume a paused canary."""
    _manual("resume", serve_dir, reason)


@canary_app.command("weight")
def canary_weight(
    weight: float = typer.Argument(..., help="canary share in [0, 1]"),
    serve_dir: Path = ServeDirOpt,
    reason: str = typer.Option(""),
) -> None:
    """Set the canary's traffic share now."""
    _manual("weight", serve_dir, reason, weight)


def _decide_now(
    action: str, spec_path: Path, serve_dir: Path, reason: str, uri: str | None
) -> None:
    controller = _controller(spec_path, serve_dir, uri, deploy=False, action=f"canary_{action}")
    decision = controller.decide_now(action, controller.user, reason)
    console.print(f"{decision.decision}: {decision.reason}")
    if decision.decision != action:
        raise typer.Exit(1)


@canary_app.command("promote")
def canary_promote(
    spec_path: Path = typer.Argument(..., help="canary spec"),
    serve_dir: Path = ServeDirOpt,
    reason: str = typer.Option(..., help="why, for the audit log"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Promote the canary now: @champion moves through the policy gates (releaser; audited)."""
    _decide_now("promote", spec_path, serve_dir, reason, tracking_uri)


@canary_app.command("rollback")
def canary_rollback(
    spec_path: Path = typer.Argument(..., help="canary spec"),
    serve_dir: Path = ServeDirOpt,
    reason: str = typer.Option(..., help="why, for the audit log"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Send all traffic back to the primary now (releaser; audited)."""
    _decide_now("rollback", spec_path, serve_dir, reason, tracking_uri)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(...),
    role: str = typer.Option("user", help="user | admin"),
    serve_dir: Path = ServeDirOpt,
) -> None:
    """Create a key; it is printed once (stdout) and stored only as a hash (role admin; audited)."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.registry.access import record_allowed
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.keys import KeyStore

    user, audit = _authorize("admin", "key_create")
    keys = KeyStore(ServePaths(serve_dir).keys)
    key = keys.create(name, role)
    info = keys.verify(key)
    record_allowed(
        user,
        "key_create",
        audit,
        reason=f"{role} key for {name}",
        extra={"key_id": info.key_id if info else "", "serve_dir": str(serve_dir)},
    )
    print(key)
    console.print(f"created {role} key for {name} (store it now: it is not shown again)")


@keys_app.command("list")
def keys_list(serve_dir: Path = ServeDirOpt) -> None:
    """Active keys (never their material)."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.keys import KeyStore

    table = Table("id", "name", "role", "created")
    for info in KeyStore(ServePaths(serve_dir).keys).list():
        table.add_row(info.key_id, info.name, info.role, info.created_at)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(name_or_id: str = typer.Argument(...), serve_dir: Path = ServeDirOpt) -> None:
    """Revoke a key by name or id (role admin; audited)."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.registry.access import record_allowed
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.keys import KeyStore

    user, audit = _authorize("admin", "key_revoke")
    info = KeyStore(ServePaths(serve_dir).keys).revoke(name_or_id)
    record_allowed(
        user,
        "key_revoke",
        audit,
        reason=f"revoked {info.name}",
        extra={"key_id": info.key_id, "serve_dir": str(serve_dir)},
    )
    console.print(f"revoked {info.name} ({info.key_id})")


@review_app.command("list")
def review_list(
    status: str = typer.Option("open", help="open | resolved | all"),
    limit: int = typer.Option(50),
    serve_dir: Path = ServeDirOpt,
) -> None:
    """Answers flagged for low confidence."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.review import ReviewQueue

    queue = ReviewQueue(ServePaths(serve_dir).review)
    table = Table("request", "version", "confidence", "answer", "prompt", "status")
    for item in queue.list(status, limit):
        conf = f"{item.confidence:.2f}" if item.confidence is not None else "-"
        table.add_row(
            item.request_id,
            item.version,
            conf,
            item.answer[:40],
            item.prompt[:60],
            item.status if item.status == "open" else f"{item.status}: {item.label}",
        )
    out.print(table)
    counts = queue.counts()
    console.print(f"{counts['open']} open, {counts['resolved']} resolved")


@review_app.command("resolve")
def review_resolve(
    request_id: str = typer.Argument(...),
    label: str = typer.Argument(..., help="the correct answer / label"),
    note: str = typer.Option(""),
    serve_dir: Path = ServeDirOpt,
) -> None:
    """Give a flagged answer its correct label (it becomes training data for retraining)."""
    # heavy: pydantic (the canary state), pyarrow (the traffic log)
    from hybridft.registry.access import current_user
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.review import ReviewQueue
    from hybridft.telemetry.traffic_log import TrafficLog

    paths = ServePaths(serve_dir)
    item = ReviewQueue(paths.review).resolve(request_id, label, current_user().name, note)
    log = TrafficLog(paths.traffic_log)  # the outcome joins the answer in the traffic log
    log.append([log.event("review", request_id=item.request_id, model=item.model,
                          version=item.version, review_label=item.label, reviewer=item.reviewer)])  # fmt: skip
    console.print(f"resolved {item.request_id}: {item.label!r} by {item.reviewer}")


@review_app.command("export")
def review_export(
    path: Path = typer.Argument(..., help="JSONL file of labelled rows (task format)"),
    serve_dir: Path = ServeDirOpt,
) -> None:
    """Write resolved items as labelled training rows."""
    # heavy: pydantic (the canary state); `hybridft --help` imports none of the library
    from hybridft.serve.canary import ServePaths
    from hybridft.serve.review import ReviewQueue

    n = ReviewQueue(ServePaths(serve_dir).review).export_labelled(path)
    console.print(f"wrote {n} labelled rows to {path}")
    print(json.dumps({"rows": n, "path": str(path)}))
