"""Resolve ``model.base`` to a local HF directory: a local path, or a Hub id through the hub cache.

A Hub id (``owner/name`` or ``name``, optionally ``@revision``) is fetched by ``huggingface_hub``
into its standard cache (``HF_HUB_CACHE``) and read from there afterwards, so a second run, or an
offline one (``HF_HUB_OFFLINE=1``), costs no network. Only what ``from_pretrained`` reads is
fetched: JSON configs, tokenizer files and ``*.safetensors`` weights; never ``*.bin`` pickles or
``*.py`` code (the project never sets ``trust_remote_code``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import disable_progress_bars, httpx, validate_repo_id
from huggingface_hub.utils import logging as hub_logging

from hybridft.errors import UserError

# Root files only (see IGNORE_PATTERNS): configs, sharded-weights index, tokenizer, chat template.
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "chat_template.jinja",
    "tokenizer.model",
    "merges.txt",
    "vocab.txt",
]
# `from_pretrained` on the snapshot root reads only root files, so subfolders (onnx/, original/)
# are never fetched; Mistral's `consolidated.safetensors` duplicates the weights in another layout.
IGNORE_PATTERNS = ["*/*", "consolidated*"]

EXPECTED = "'tiny', a local HF model directory, or a Hub id such as Qwen/Qwen2.5-0.5B[@revision]"


def resolve_model_ref(base: str) -> Path:
    """The local HF directory ``base`` names: a directory with config.json, or a Hub id's snapshot.

    Args:
        base: a local directory, or a Hub id ``owner/name`` / ``name`` with an optional
            ``@revision`` (branch, tag or commit). A string that starts with ``.``, ``/`` or ``~``,
            or has more than one ``/`` before the ``@``, is a path, never an id.

    Returns:
        The resolved directory; for a Hub id, the snapshot folder inside ``HF_HUB_CACHE``.

    Raises:
        UserError: one line naming what was given, what was tried and what to do.
    """
    if not base.strip():
        raise UserError(f"model.base: empty (expected {EXPECTED})")
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model.base: {base} is not a Hugging Face model directory (no config.json)"
            )
        return path.resolve()
    repo_id, _, revision = base.partition("@")  # a repo id never contains '@'; a revision may '/'
    if base.startswith((".", "/", "~")) or repo_id.count("/") > 1 or "\\" in repo_id:
        raise UserError(f"model.base: {base} does not exist (expected {EXPECTED})")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(
            f"model.base: {base!r} is neither an existing directory nor a valid Hub id "
            f"({_first_line(err)}; expected {EXPECTED})"
        ) from None
    if "@" in base and not revision:
        raise UserError(f"model.base: {base!r} has an empty revision after '@'")
    return _checked_snapshot(repo_id, revision or None, _fetch_snapshot(repo_id, revision or None))


def _fetch_snapshot(repo_id: str, revision: str | None) -> Path:
    """``snapshot_download`` from the cache (and the Hub unless offline), failures as UserError."""
    cache_dir = constants.HF_HUB_CACHE  # read at call time: the module attribute, not a copy
    offline = _offline()
    try:
        with _quiet_hub():
            folder = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=offline,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
            )
    except (OSError, httpx.HTTPError) as err:  # hub errors are OSError or httpx errors
        raise _fetch_failure(repo_id, revision, err, cache_dir, offline) from err
    return Path(folder)


def _fetch_failure(
    repo_id: str, revision: str | None, err: Exception, cache_dir: str, offline: bool
) -> UserError:
    """One line: which id, why it failed, what was tried, what to do."""
    ref, hint = f"{repo_id}@{revision}" if revision else repo_id, _download_hint(repo_id, revision)
    if isinstance(err, GatedRepoError):  # before its base class RepositoryNotFoundError
        why = "the repository is gated and no accepted token was sent"
    elif isinstance(err, RepositoryNotFoundError):
        why = "the Hub has no such repository (or it is private and no token was sent)"
    elif isinstance(err, RevisionNotFoundError):
        why = f"the repository has no revision {revision!r}"
    elif isinstance(err, IncompleteSnapshotError):
        why = "the cached snapshot is incomplete"
    elif isinstance(err, LocalEntryNotFoundError):
        why = "it is not in the cache" if offline else "it is not cached and the Hub is unreachable"
    else:
        why = f"{type(err).__name__}: {_first_line(err)}"
    if offline:
        tried = f"looked only in the cache {cache_dir} (offline: HF_HUB_OFFLINE=1)"
        todo = f"run once with network access (HF_HUB_OFFLINE unset) or {hint}"
    else:
        tried = f"looked in the cache {cache_dir} and on {constants.ENDPOINT}"
        todo = f"check the id and the network, or log in with `hf auth login`, or {hint}"
    return UserError(
        f"model.base: cannot resolve Hub id {ref!r}: {why}; {tried}; "
        f"{todo}, or point model.base at a local HF model directory"
    )


def _checked_snapshot(repo_id: str, revision: str | None, folder: Path) -> Path:
    """A snapshot ``from_pretrained`` can load: config.json and safetensors weights."""
    if not (folder / "config.json").is_file():
        problem = "no config.json"
    elif not any(folder.glob("*.safetensors")):
        problem = "no *.safetensors weights (only safetensors are loaded, never .bin)"
    else:
        return folder
    ref = f"{repo_id}@{revision}" if revision else repo_id
    raise UserError(
        f"model.base: Hub id {ref!r} resolved to {folder}, which has {problem}; "
        f"{_download_hint(repo_id, revision)} with network access may complete it, "
        "or point model.base at a local HF model directory"
    )


def _download_hint(repo_id: str, revision: str | None) -> str:
    """The CLI command that fills the cache (hub >= 1.0 ships ``hf``, no ``huggingface-cli``)."""
    return f"`hf download {repo_id}" + (f" --revision {revision}`" if revision else "`")


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now: huggingface_hub reads it once, at import."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.upper() in constants.ENV_VARS_TRUE_VALUES


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """No progress bars and no library warnings: a failure reaches the user as one UserError."""
    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        with disable_progress_bars():
            yield
    finally:
        hub_logging.set_verbosity(level)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
