"""A Hub id resolves through huggingface_hub's own cache, offline, to a directory we can load.

The cache is laid out as the hub client writes it (``models--owner--name/{blobs,refs,snapshots}``,
snapshot files symlinked to content-addressed blobs) and holds the real tiny Llama; the calls are
the real ``snapshot_download`` and ``from_pretrained``. No test leaves the machine.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import are_progress_bars_disabled
from huggingface_hub.utils import logging as hub_logging

from hybridft.errors import UserError
from hybridft.model import load_model, load_tokenizer, resolve_model_ref
from hybridft.model.hub import _quiet_hub

REPO = "hybridft-test/tiny-llama"
MAIN = hashlib.sha1(b"main").hexdigest()  # the commit refs/main points at
PINNED = hashlib.sha1(b"pinned").hexdigest()  # an older commit, reachable only by its hash
BIN_ONLY = "hybridft-test/bin-only"


def _add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` as the hub does: blobs by content hash, snapshot entries as symlinks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        # the hub names LFS blobs by sha256 and others by git-sha1; offline, nothing reads the name
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob)
    return snapshot


def _set_ref(cache: Path, repo_id: str, ref: str, commit: str) -> None:
    refs = cache / f"models--{repo_id.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / ref).write_text(commit)  # no trailing newline, as the hub writes it


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """An HF_HUB_CACHE holding the tiny model at two commits and a repo with only .bin weights."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    _add_snapshot(cache, REPO, MAIN, files)
    _add_snapshot(cache, REPO, PINNED, files)
    _set_ref(cache, REPO, "main", MAIN)
    _add_snapshot(cache, BIN_ONLY, MAIN, {"config.json": files["config.json"], "x.bin": b"0"})
    _set_ref(cache, BIN_ONLY, "main", MAIN)
    return cache


@pytest.fixture
def hub(monkeypatch, hub_cache) -> Path:
    """Offline, with ``hub_cache`` as the cache."""
    # huggingface_hub reads HF_* once at import; snapshot_download and resolve_model_ref read these
    # module constants at call time, so patching them is what takes effect (env too, for children).
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # any HTTP call would raise
    monkeypatch.setenv("HF_HOME", str(hub_cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


@pytest.fixture
def unreachable_hub(monkeypatch, hub) -> str:
    """Online mode, with the Hub endpoint a local port nobody listens on (refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return endpoint


def _snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    return cache.resolve() / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


def test_hub_id_resolves_to_the_cached_snapshot_and_loads(hub, tiny_model_dir) -> None:
    path = resolve_model_ref(REPO)

    assert path == _snapshot(hub, REPO, MAIN)
    model, tokenizer = load_model(path), load_tokenizer(path)
    original = load_model(tiny_model_dir)
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)
    original_tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.get_vocab() == original_tokenizer.get_vocab()
    assert tokenizer.chat_template == original_tokenizer.chat_template is not None
    ids = tokenizer("my laptop cannot reach the VPN", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_revision_after_at_selects_that_snapshot(hub) -> None:
    assert resolve_model_ref(f"{REPO}@{PINNED}") == _snapshot(hub, REPO, PINNED)
    assert resolve_model_ref(f"{REPO}@main") == _snapshot(hub, REPO, MAIN)


def test_uncached_id_offline_is_one_line_naming_id_cache_and_fix(hub) -> None:
    with pytest.raises(UserError) as info:
        resolve_model_ref("hybridft-test/absent")

    message = str(info.value)
    assert "\n" not in message
    assert "'hybridft-test/absent'" in message and "offline" in message
    assert str(hub) in message and "`hf download hybridft-test/absent`" in message


def test_uncached_revision_offline_names_the_revision(hub) -> None:
    with pytest.raises(
        UserError, match=r"offline.*hf download hybridft-test/tiny-llama --revision v9"
    ):
        resolve_model_ref(f"{REPO}@v9")


def test_offline_set_in_env_after_import_is_honoured(unreachable_hub, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # constants.HF_HUB_OFFLINE stays False

    with pytest.raises(UserError, match="offline") as info:
        resolve_model_ref("hybridft-test/absent")
    assert unreachable_hub not in str(info.value)  # the Hub was not tried


def test_unreachable_hub_falls_back_to_the_cache_without_chatter(hub, unreachable_hub, caplog):
    assert resolve_model_ref(REPO) == _snapshot(hub, REPO, MAIN)
    with pytest.raises(UserError) as info:
        resolve_model_ref("hybridft-test/absent")

    message = str(info.value)
    assert "\n" not in message and "offline" not in message
    assert "unreachable" in message and unreachable_hub in message and str(hub) in message
    assert caplog.records == []  # no hub warnings


def test_snapshot_without_safetensors_is_refused(hub) -> None:
    with pytest.raises(UserError, match=r"bin-only.*no \*\.safetensors"):
        resolve_model_ref(BIN_ONLY)


def test_local_directory_with_config_wins_over_a_hub_id(hub, tiny_model_dir, monkeypatch) -> None:
    monkeypatch.chdir(tiny_model_dir.parent)

    assert resolve_model_ref(tiny_model_dir.name) == tiny_model_dir.resolve()  # "model": id-shaped
    assert resolve_model_ref(str(tiny_model_dir)) == tiny_model_dir.resolve()


def test_local_directory_without_config_is_refused(hub, tiny_model_dir, tmp_path) -> None:
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    shutil.copy(tiny_model_dir / "model.safetensors", weights_only)

    with pytest.raises(UserError, match="is not a Hugging Face model directory") as info:
        resolve_model_ref(str(weights_only))
    assert str(weights_only) in str(info.value)


@pytest.mark.parametrize(
    ("base", "problem"),
    [
        ("a/b/c", "does not exist"),  # two '/': a path, never an id
        ("./missing", "does not exist"),
        ("~/hybridft-missing", "does not exist"),
        ("/no/such/dir", "does not exist"),
        ("", "empty"),
        ("  ", "empty"),
        ("owner/name@", "empty revision"),
        ("bad--id", "nor a valid Hub id"),
        ("-dash", "nor a valid Hub id"),
    ],
)
def test_malformed_reference_is_refused_before_any_lookup(hub, base, problem) -> None:
    with pytest.raises(UserError) as info:
        resolve_model_ref(base)

    message = str(info.value)
    assert "\n" not in message and message.startswith("model.base: ") and problem in message
    assert "offline" not in message  # rejected by its shape, not after a cache lookup


def test_hub_progress_bars_and_warnings_are_off_only_while_resolving(caplog) -> None:
    # caplog, not capfd: the hub's log handler holds the stderr that pytest had at import time
    logger = hub_logging.get_logger("huggingface_hub.test")
    bars_before, level_before = are_progress_bars_disabled(), hub_logging.get_verbosity()

    with _quiet_hub():
        assert are_progress_bars_disabled()
        logger.warning("chatter")
    logger.warning("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]
    assert are_progress_bars_disabled() == bars_before
    assert hub_logging.get_verbosity() == level_before
