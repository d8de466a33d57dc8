"""Which HF directory a job starts from: ``pretrained``, ``tiny``, a local directory or a hub id.

Every base is built at most once per cache key, into a temporary directory renamed into place under
a file lock, so concurrent workers of one node never read a half-written base.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Callable
from pathlib import Path

from hybridft.model.hf import build_once
from hybridft.model.hub import resolve_model_ref
from hybridft.model.pretrain import pretrained_base
from hybridft.model.tiny import build_tiny_base
from hybridft.specs import ModelSpec, PretrainSpec, TinyModelSpec

DEFAULT_CORPUS = "data/demo/**/train.jsonl"


def resolve_base(
    base: str,
    cfg: TinyModelSpec,
    cache_dir: str,
    seed: int = 0,
    corpus_globs: list[str] | None = None,
    pretrain: PretrainSpec | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Path:
    """The HF directory a job starts from: ``pretrained`` (built once, cached), ``tiny`` (random
    init, cached), a local HF directory or a Hugging Face Hub id (see ``model.hub``)."""
    if base == "pretrained":
        return pretrained_base(cfg, pretrain or PretrainSpec(), cache_dir, on_event)
    if base != "tiny":
        return resolve_model_ref(base)
    corpus = sorted(
        {p for g in (corpus_globs or [DEFAULT_CORPUS]) for p in glob.glob(g, recursive=True)}
    )
    digest = hashlib.sha256(cfg.model_dump_json().encode() + str(seed).encode())
    for path in corpus:  # the cache key covers the corpus content, not only its names
        digest.update(Path(path).read_bytes())
    out = (Path(cache_dir) / f"tiny-{digest.hexdigest()[:12]}").resolve()
    return build_once(out, "model.safetensors", lambda tmp: build_tiny_base(cfg, tmp, corpus, seed))


def base_of(model: ModelSpec, seed: int = 0, on_event: Callable[[str], None] | None = None) -> Path:
    """The HF directory a job's ``model`` section starts from (see ``resolve_base``)."""
    return resolve_base(
        model.base, model.tiny, model.cache_dir, seed, model.tokenizer_corpus, model.pretrain,
        on_event,
    )  # fmt: skip


def is_random_init(model: ModelSpec) -> bool:
    """``base: tiny`` starts from random weights: LoRA on it trains almost nothing."""
    return model.base == "tiny"
