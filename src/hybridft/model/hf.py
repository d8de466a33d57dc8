"""Load and save standard Hugging Face directories (config.json, model.safetensors, tokenizer.json).

The same path a user takes with a real local model: ``from_pretrained`` on a directory, safetensors
only, never ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from hybridft.errors import UserError


def _check_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    path = _check_dir(path)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, dtype: Any = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    path = _check_dir(path)
    if not any(path.glob("*.safetensors")):
        raise UserError(f"{path}: no *.safetensors weights (only safetensors are loaded)")
    return AutoModelForCausalLM.from_pretrained(
        str(path),
        trust_remote_code=False,
        use_safetensors=True,
        dtype=dtype or torch.float32,
    )


def save_model(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write an HF directory with safetensors weights and the tokenizer beside them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def weights_digest(model_dir: str | Path) -> str:
    """sha256 of a model directory's weight files: the identity of a set of weights."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def build_once(out: Path, done: str, build: Callable[[Path], object]) -> Path:
    """``out``, built by ``build(tmp)`` at most once; the file ``done`` inside marks it complete.

    Under a file lock a temporary directory beside ``out`` is built and renamed into place, so
    concurrent callers (workers of one node, threads) wait and reuse it, and none ever sees half
    of it; a partial directory left by a killed build is replaced.
    """
    if (out / done).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / done).is_file():  # built by another caller while this one waited
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            build(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
