"""The ``hybridft`` command line: one thin command per stage; the logic lives in the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from hybridft.errors import UserError
from hybridft.quiet import quiet_library_chatter
from hybridft.runtime import DEBUG_ENV, debug_mode

# Each command imports the library when it runs: `hybridft --help` loads typer and rich only.

# no rich tracebacks: main() turns every error into one line (--debug shows the trace)
app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)
data_app = typer.Typer(no_args_is_help=True, help="Demo data, validation and statistics.")
app.add_typer(data_app, name="data")
catalog_app = typer.Typer(no_args_is_help=True, help="The data catalog: provenance and reviews.")
app.add_typer(catalog_app, name="catalog")
from hybridft.cli_serve import ServeDirOpt, canary_app, keys_app, review_app  # noqa: E402

app.add_typer(canary_app, name="canary")
app.add_typer(keys_app, name="keys")
app.add_typer(review_app, name="review")
from hybridft import cli_govern, cli_monitor  # noqa: E402
from hybridft.cli_base import base_app  # noqa: E402
from hybridft.cli_sweep import report, study, sweep  # noqa: E402

app.add_typer(base_app, name="base")
app.add_typer(cli_govern.policy_app, name="policy")
for command in (cli_govern.register, cli_govern.gate, cli_govern.approve, cli_govern.promote):
    app.command()(command)
app.command()(sweep)
app.command()(report)
app.command()(study)

app.command("monitor")(cli_monitor.monitor)
app.command("retrain")(cli_monitor.retrain)
app.command("trace")(cli_monitor.trace)
console = Console(stderr=True)

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: sqlite)")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(Path("data/demo"), help="output folder"),
    seed: int = typer.Option(0, help="generator seed (same seed, same bytes)"),
) -> None:
    """Generate the demo data: three enterprise SFT tasks and a broad instruction suite."""
    from hybridft.demo import synthesize  # heavy: yaml (the generators)

    manifest = synthesize(out, seed=seed)
    rows = sum(sum(c.values()) for c in manifest.counts.values())
    console.print(f"[green]wrote[/] {out} ({rows} rows, seed {seed})")


@data_app.command("validate")
def data_validate(
    paths: list[str] = typer.Argument(..., help="JSONL / Parquet files or globs"),
    fmt: str = typer.Option("auto", "--format", help="auto | instruction | chat | task"),
    on_bad_rows: str = typer.Option("error", help="error | skip"),
    rejects: str = typer.Option(".hybridft/rejects/validate.jsonl", help="rejects file (skip)"),
) -> None:
    """Check every row; report counts (and write rejected rows with reasons under --on-bad-rows skip)."""
    from hybridft.data.reader import bad_rows_mode
    from hybridft.data.stats import render_validation, validate_paths  # heavy: transformers

    mode = bad_rows_mode(on_bad_rows)
    report = validate_paths(paths, fmt=fmt, on_bad_rows=mode, rejects_path=rejects)
    Console().print(render_validation(report))


@data_app.command("stats")
def data_stats(
    paths: list[str] = typer.Argument(..., help="JSONL / Parquet files or globs"),
    fmt: str = typer.Option("auto", "--format"),
    tokenizer: str = typer.Option(
        "", help="HF directory of the tokenizer (default: the --job's base, else the tiny base)"
    ),
    max_len: int = typer.Option(0, "--max-len", help="count truncation against N tokens"),
    job: Path | None = typer.Option(
        None, "--job", help="a job spec: its data.max_len and its base's tokenizer"
    ),
) -> None:
    """Rows, tokens, length histogram and label balance (truncation against --max-len, else the
    --job's data.max_len, else the default)."""
    # heavy: transformers (tokenizers), pydantic; `hybridft --help` imports none of the library
    from hybridft.data.stats import dataset_stats, render_stats
    from hybridft.model import base_of, load_tokenizer, resolve_base
    from hybridft.specs import DEFAULT_MAX_LEN, ModelSpec, load_job

    limit, tok_dir = DEFAULT_MAX_LEN, tokenizer
    if job is not None:
        spec = load_job(job)
        limit, tok_dir = spec.data.max_len, tokenizer or str(base_of(spec.model, spec.seed))
    if max_len:
        limit = max_len
    if not tok_dir:
        default = ModelSpec()
        tok_dir = str(resolve_base("tiny", default.tiny, default.cache_dir))
    stats = dataset_stats(paths, fmt, load_tokenizer(tok_dir), max_len=limit)
    Console().print(render_stats(stats))


@app.command()
def train(
    spec: Path = typer.Argument(..., help="job spec (jobs/*.yaml)"),
    run_name: str = typer.Option(None, help="run name (default: unique per start)"),
    resume: bool = typer.Option(False, "--resume", help="continue RUN_NAME from its checkpoint"),
    output_dir: str = typer.Option(None, help="override the spec's output_dir (shared storage)"),
    require_approved_data: bool = typer.Option(
        False, help="refuse to train unless every dataset is approved in the catalog"
    ),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Train a job spec on Ray Train and log the run to MLflow."""
    from hybridft.pipeline import train_and_log  # heavy: Ray Train, transformers, MLflow

    record = train_and_log(
        spec,
        run_name=run_name,
        resume=resume,
        tracking_uri=tracking_uri,
        output_dir=output_dir,
        require_approved_data=require_approved_data,
    )
    console.print(f"[green]run[/] {record.run_name}  mlflow {record.mlflow_run_id}")
    typer.echo(record.run_dir)


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="a run directory written by `hybridft train`"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Score the run's model on the held-out splits named in its spec."""
    # heavy: torch, transformers, MLflow
    from hybridft.evaluate.table import eval_table
    from hybridft.registry.registration import evaluate_run

    result = evaluate_run(run_dir, tracking_uri=tracking_uri)
    Console().print(eval_table(result))
    for name, path in result.artifacts.items():
        Console().print(f"{name}: {path}", highlight=False)


@catalog_app.command("list")
def catalog_list(
    status: str = typer.Option(None, help="draft | approved | rejected"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Dataset and prompt-set versions in the catalog, with provenance and review status."""
    from rich.table import Table

    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.catalog import STATUSES, list_datasets
    from hybridft.registry.client import Registry

    if status is not None and status not in STATUSES:
        raise UserError(f"--status {status!r}: expected one of {', '.join(STATUSES)}")
    table = Table(title="data catalog")
    for col in ("fingerprint", "name", "kind", "rows", "generator", "status", "reviewer"):
        table.add_column(col, overflow="fold")
    for e in list_datasets(Registry(tracking_uri), status=status):
        table.add_row(
            e.fingerprint, e.name, e.kind, str(e.rows or ""), e.generator, e.status, e.reviewer
        )
    Console(width=200).print(table)


@catalog_app.command("review")
def catalog_review(
    fingerprint: str = typer.Argument(..., help="sha256:... (see `hybridft catalog list`)"),
    status: str = typer.Option(..., help="approved | rejected | draft"),
    comment: str = typer.Option("", help="why"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Approve or reject a dataset version (needs the approver role; audited)."""
    # heavy: pydantic, MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.catalog import review_dataset
    from hybridft.registry.client import Registry

    entry = review_dataset(Registry(tracking_uri), fingerprint, status, comment=comment)
    console.print(f"{entry.name} {entry.fingerprint}: [b]{entry.status}[/] by {entry.reviewer}")


@app.command()
def serve(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS (or models:/NAME@ALIAS)"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="NAME=DIR: a LoRA adapter, served as model id MODEL:NAME (repeat)"
    ),
    serve_dir: Path = ServeDirOpt,
    insecure_local: bool = typer.Option(
        False, "--insecure-local", help="no API keys; allowed only with a loopback --host"
    ),
    engine: str = typer.Option(
        None,
        "--engine",
        help="what generates: hf, vllm (needs `make venv`) or auto (default: vllm if installed)",
    ),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Serve a registered version behind an OpenAI-compatible API (Ctrl-C to stop).

    Requests need an API key of the endpoint's key store (`hybridft keys create NAME`), as
    through the canary router; --insecure-local serves without keys, on a loopback host only.
    """
    from hybridft.serve.engines import DEFAULT_ENGINE, ENGINES
    from hybridft.serve.launch import serve_version  # heavy: Ray Serve, torch, MLflow

    engine = engine or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise UserError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    adapters = {}
    for item in adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {item!r}: expected NAME=DIR")
        adapters[name] = path
    url = serve_version(
        ref,
        host=host,
        port=port,
        tracking_uri=tracking_uri,
        adapters=adapters,
        serve_dir=serve_dir,
        insecure_local=insecure_local,
        engine=engine,  # checked against ENGINES above
    )
    console.print(f"[green]serving[/] {ref} at {url}  (Ctrl-C to stop)")
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command()
def lineage(
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS"),
    tracking_uri: str = TrackingOpt,
) -> None:
    """Print a version's lineage: aliases -> version -> run -> stages -> dataset fingerprints."""
    # heavy: MLflow; `hybridft --help` imports none of the library
    from hybridft.registry.client import Registry
    from hybridft.registry.lineage import describe_lineage, lineage_tree

    # wide: fingerprints and digests are never wrapped mid-string
    Console(width=200).print(lineage_tree(describe_lineage(Registry(tracking_uri), ref)))


@app.command()
def demo(
    port: int = typer.Option(8000),
    data_dir: Path = typer.Option(Path("data/demo")),
    sweep: bool = typer.Option(True, help="end with the demo sweep and its decision report"),
    full: bool = typer.Option(
        False, help="go round the loop: canary, drift, alerts, review, retrain, new canary"
    ),
) -> None:
    """data -> train -> eval -> register -> govern -> serve -> answer -> sweep -> report
    (--full: -> canary -> drift -> alert -> review -> retrain -> new canary -> trace)."""
    from hybridft.demo import run_demo  # heavy: the whole library (Ray, torch, MLflow)

    run_demo(port=port, data_dir=data_dir, sweep=sweep, full=full)


def main() -> None:
    """Entry point: user errors are one line on stderr (``--debug`` or HYBRIDFT_DEBUG=1: traceback)."""
    if "--debug" in sys.argv:  # workers and subcommands read it from the environment
        os.environ[DEBUG_ENV] = "1"
    debug = debug_mode()
    # MLflow's INFO lines (database migrations) are not for users; warnings still show
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not debug:  # transformers' "Loading weights" / "Writing model shards" bars (workers too)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        quiet_library_chatter()
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        # standalone_mode=False returns a command's typer.Exit code instead of exiting
        code = app(standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own formatting
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        # an MLflow server's refusal (its auth app: 401 / 403) is the user's answer, not a bug
        if getattr(exc, "error_code", None) in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            if debug:
                raise
            reason = " ".join(str(getattr(exc, "message", exc)).split())
            console.print(f"[red]error:[/] the MLflow server refused: {reason}", soft_wrap=True)
            sys.exit(2)
        if debug:
            raise
        console.print(f"[red]internal error:[/] {type(exc).__name__}: {exc} (rerun with --debug)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
