"""``hybridft base``: build (or find in the cache) the pretrained base a job names."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from hybridft.errors import UserError

base_app = typer.Typer(no_args_is_help=True, help="The pretrained base jobs start from.")
console = Console(stderr=True)


@base_app.command("build")
def base_build(
    job: Path = typer.Option(None, help="take model.tiny / model.pretrain from this job spec"),
    steps: int = typer.Option(None, help="pretraining steps (default: the spec's, 300)"),
    seed: int = typer.Option(None, help="the base's seed (default: the spec's, 0)"),
    cache_dir: str = typer.Option(None, help="cache folder (default: model.cache_dir)"),
) -> None:
    """Pretrain the tiny Llama on the Python stdlib's docstrings (offline, ~3 min), once; print
    its directory. Later calls with the same corpus and recipe return the cached base."""
    # heavy: transformers, pydantic; `hybridft --help` imports none of the library
    from hybridft.model import read_base_info, resolve_base
    from hybridft.specs import ModelSpec, load_job

    model = load_job(job).model if job else ModelSpec(base="pretrained")
    if model.base != "pretrained":
        raise UserError(f"{job}: model.base: expected 'pretrained' to build, got {model.base!r}")
    update = {k: v for k, v in {"steps": steps, "seed": seed}.items() if v is not None}
    recipe = model.pretrain.model_copy(update=update)
    path = resolve_base(
        "pretrained", model.tiny, cache_dir or model.cache_dir, pretrain=recipe,
        on_event=lambda msg: console.print(msg, highlight=False),
    )  # fmt: skip
    info = read_base_info(path) or {}
    corpus = info.get("corpus", {})
    console.print(
        f"base: corpus {corpus.get('name')} {corpus.get('fingerprint', '?')[:19]} "
        f"({corpus.get('documents', 0):,} docs, Python {corpus.get('python')}) -> weights "
        f"{info.get('weights_sha256', '?')[:12]}, held-out loss {info.get('val_loss', 0):.3f}",
        highlight=False,
    )
    typer.echo(str(path))
