"""``hybridft register | gate | approve | promote | policy``: the governance commands (thin;
logic in registry/). Each one acts as the store's user (``registry.access``), checks its role,
and leaves an audit line whether it was allowed or refused. Each command imports the library
when it runs: ``hybridft --help`` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)
out = Console()

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: sqlite)")
PolicyOpt = typer.Option(
    None,
    "--policy",
    help="governance policy; must be the one bound to the model when one is (default: the bound "
    "policy, else policies/default.yaml)",
)
policy_app = typer.Typer(no_args_is_help=True, help="Policies bound to registered models.")


def register(
    run_dir: Path = typer.Argument(..., help="a run directory written by `hybridft train`"),
    name: str = typer.Option(..., "--name", help="registered model name"),
    policy: Path = PolicyOpt,
    tracking_uri: str = TrackingOpt,
) -> None:
    """Register the run's model as a new version of NAME, with its lineage and model card
    (role trainer; refused when the policy's max_contamination is exceeded or not measured)."""
    from hybridft.registry.registration import register_version  # heavy: MLflow, torch

    ref = register_version(
        run_dir, name, policy, tracking_uri, on_event=lambda m: console.print(m, highlight=False)
    )
    typer.echo(f"{ref.name}@{ref.version}")


def _acting(registry, role: str, action: str, ref: str, alias: str = ""):
    """Who acts, established before the store is read (refused credentials stop here), and
    holding ``role`` (refusals audited)."""
    from hybridft.registry.access import require  # heavy: MLflow

    name, _, version = ref.removeprefix("models:/").replace("/", "@", 1).partition("@")
    return require(
        role,
        action,
        tracking_uri=registry.tracking_uri,
        model=name,
        version=version if version.isdigit() else None,
        alias=alias,
    )


def _policy(
    registry, model: str, version: str, requested: Path | None, action: str, alias="", user=None
):
    """The policy ``action`` uses and a note of where it came from; a refusal is audited."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.errors import UserError
    from hybridft.registry.access import refuse
    from hybridft.registry.audit import default_audit_path
    from hybridft.registry.bindings import bound_policy, policy_for
    from hybridft.registry.policy import load_policy

    try:
        if action == "promote" and requested is not None and bound_policy(registry, model):
            # the caller's own policy: promote compares it with the bound one (audited there)
            return load_policy(requested), f"--policy {requested}"
        return policy_for(registry, model, requested)
    except UserError as exc:
        audit = default_audit_path(registry.tracking_uri)
        raise refuse(
            user,
            action,
            str(exc),
            audit,
            model=model,
            version=version,
            alias=alias,
            tracking_uri=registry.tracking_uri,
        ) from None


def gate(
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    policy: Path = PolicyOpt,
    tracking_uri: str = TrackingOpt,
) -> None:
    """Run the model's policy gate on a version and print every check (exit 1 when it fails)."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.client import Registry
    from hybridft.registry.gates import evaluate_gate

    registry = Registry(tracking_uri)
    version = registry.resolve(ref)
    rules, note = _policy(registry, version.name, version.version, policy, "gate")
    console.print(note, highlight=False)
    verdict = evaluate_gate(registry, rules, version.name, version.version)
    for check in verdict.checks:
        mark = "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        out.print(f"{mark}  {check.check}: {check.detail}", soft_wrap=True)  # one line a check
    raise typer.Exit(0 if verdict.passed else 1)


def approve(
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    comment: str = typer.Option("", help="why"),
    role: str = typer.Option("approver", help="the role the approval is given in"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Approve a version as the current user (needs the role; not its trainer or registrant)."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.approvals import approve as approve_version
    from hybridft.registry.client import Registry

    registry = Registry(tracking_uri)
    user = _acting(registry, role, "approve", ref)
    version = registry.resolve(ref)
    approve_version(registry, version.name, version.version, user, role=role, comment=comment)
    console.print(f"[green]approved[/] {version.name}@{version.version}")


def promote(
    ref: str = typer.Argument(..., help="NAME@VERSION"),
    alias: str = typer.Option("candidate", help="candidate | canary | champion (per policy)"),
    policy: Path = PolicyOpt,
    reason: str = typer.Option("", help="why (goes into the audit log)"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Move @ALIAS to a version, only through a passing gate of the model's policy (role
    releaser; audited either way)."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.client import Registry
    from hybridft.registry.gates import promote as promote_version

    registry = Registry(tracking_uri)
    user = _acting(registry, "releaser", "promote", ref, alias)
    version = registry.resolve(ref)
    rules, note = _policy(registry, version.name, version.version, policy, "promote", alias, user)
    console.print(note, highlight=False)
    result = promote_version(
        registry, rules, version.name, version.version, alias, user, reason=reason
    )
    if not result.moved:
        console.print(f"[red]refused:[/] {result.reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]{version.name}@{alias}[/] {result.from_version} -> {result.to_version}")


@policy_app.command("bind")
def policy_bind(
    model: str = typer.Argument(..., help="registered model name"),
    path: Path = typer.Argument(..., help="policy file (policies/*.yaml)"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Bind a policy to a model: register, gate and promote use it (role admin; audited)."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.bindings import bind_policy
    from hybridft.registry.client import Registry

    binding = bind_policy(Registry(tracking_uri), model, path)
    console.print(binding.describe(), highlight=False)


@policy_app.command("show")
def policy_show(
    model: str = typer.Argument(..., help="registered model name"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """The policy bound to a model (its JSON on stdout), or say that none is."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.bindings import bound_policy
    from hybridft.registry.client import Registry

    binding = bound_policy(Registry(tracking_uri), model)
    if binding is None:
        console.print(f"no policy bound to {model}: commands use policies/default.yaml or --policy")
        return
    console.print(binding.describe(), highlight=False)
    print(binding.policy.model_dump_json(indent=2))
