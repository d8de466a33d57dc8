"""``base: pretrained``: the tiny Llama pretrained offline on general text every machine has.

A report that starts its arms from random weights turns "instruction tuning" into the model's
pretraining; no user starts there. This builds the start a user would have, at toy scale: a plain
causal LM trained on the docstrings of the Python standard library (~6.4k docstrings, ~1.6M
characters on Python 3.11: present on every machine that runs the project, no network), with a
byte-level BPE tokenizer trained on the same text, so a user's task data is not special to the
tokenizer. Deterministic from a seed; cached under ``model.cache_dir`` by a fingerprint of the
corpus and the recipe, so it is built once (~3 minutes on 2 cores); written atomically under a lock,
so concurrent workers on one node never see a half-written base. ``base.json`` beside the weights
is the first link of every lineage chain: corpus fingerprint -> base weights.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridft.model.hf import build_once, save_model, weights_digest
from hybridft.model.tiny import build_model, train_tokenizer
from hybridft.specs import PretrainSpec, TinyModelSpec

if TYPE_CHECKING:
    import torch

BASE_INFO = "base.json"
CORPUS_NAME = "python-stdlib-docstrings"
RECIPE_VERSION = 1  # bump when the build changes what it writes: old caches are then not reused
# Test suites, IDLE and 2to3 fixtures are code samples more than prose; site-packages is not stdlib.
_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "__pycache__"}
_MIN_DOC_CHARS = 40  # one-line stubs ("Return self.") teach nothing but repetition


@dataclass(frozen=True)
class GeneralCorpus:
    """The general text a pretrained base learns from, and what identifies it."""

    texts: tuple[str, ...]
    fingerprint: str  # sha256 over the texts, in order
    files: int
    python: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": CORPUS_NAME,
            "fingerprint": self.fingerprint,
            "python": self.python,
            "files": self.files,
            "documents": len(self.texts),
            "chars": sum(len(t) for t in self.texts),
        }


@functools.cache  # the stdlib does not change while a process runs; parsing it takes seconds
def general_corpus() -> GeneralCorpus:
    """Docstrings of the standard library's modules, classes and functions, in a fixed order.

    Parsed with ``ast`` (nothing is imported, so no module's side effects run); files in sorted
    order and nodes in ``ast.walk`` order, so the corpus and its fingerprint are reproducible.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in root.rglob("*.py") if not _SKIP_PARTS.intersection(p.relative_to(root).parts)
    )
    texts: list[str] = []
    digest = hashlib.sha256()
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a few stdlib files are templates, not Python
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= _MIN_DOC_CHARS:
                    texts.append(doc)
                    digest.update(doc.encode("utf-8") + b"\0")
    version = ".".join(str(v) for v in sys.version_info[:3])
    return GeneralCorpus(tuple(texts), f"sha256:{digest.hexdigest()}", len(files), version)


def base_key(cfg: TinyModelSpec, spec: PretrainSpec, corpus: GeneralCorpus) -> str:
    """The cache key: corpus content, model shape and the whole build recipe."""
    digest = hashlib.sha256()
    for part in (corpus.fingerprint, cfg.model_dump_json(), spec.model_dump_json()):
        digest.update(part.encode() + b"\0")
    digest.update(str(RECIPE_VERSION).encode())
    return digest.hexdigest()[:12]


def pretrained_base(
    cfg: TinyModelSpec,
    spec: PretrainSpec,
    cache_dir: str | Path,
    on_event: Callable[[str], None] | None = None,
) -> Path:
    """The cached pretrained base for ``cfg`` and ``spec``, built first when missing.

    Built into a temporary directory and renamed into place under a file lock: a second process
    waits for the first and then reuses its base.
    """
    corpus = general_corpus()
    out = (Path(cache_dir) / f"pretrained-{base_key(cfg, spec, corpus)}").resolve()
    say = on_event or (lambda _msg: None)
    return build_once(
        out, BASE_INFO, lambda tmp: build_pretrained_base(cfg, spec, corpus, tmp, say)
    )


def build_pretrained_base(
    cfg: TinyModelSpec,
    spec: PretrainSpec,
    corpus: GeneralCorpus,
    out_dir: str | Path,
    on_event: Callable[[str], None],
) -> Path:
    """Train the tokenizer and the model on ``corpus``; write the HF directory and ``base.json``."""
    import torch  # where used: loading specs and `hybridft --help` stay fast

    t0 = time.time()
    tokenizer = train_tokenizer(iter(corpus.texts), cfg.vocab_size)
    blocks = _blocks(corpus.texts, tokenizer, spec.seq_len)
    n_val = max(1, len(blocks) // 50)  # 2% held out: the base's own validation loss
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(spec.seed))
    val, train = blocks[order[:n_val]], blocks[order[n_val:]]
    model = build_model(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                        spec.seed)  # fmt: skip
    on_event(
        f"base: pretraining the tiny Llama on {len(corpus.texts):,} Python docstrings "
        f"({train.numel():,} tokens, {spec.steps} steps of {spec.batch_size}x{spec.seq_len})"
    )
    losses = _pretrain(model, train, spec, on_event)
    val_loss = _mean_loss(model, val)
    save_model(model, tokenizer, out_dir)
    info = {
        "kind": "hybridft-pretrained-base",
        "corpus": corpus.describe(),
        "model": cfg.model_dump(),
        "recipe": {**spec.model_dump(), "version": RECIPE_VERSION},
        "trained_tokens": spec.steps * spec.batch_size * spec.seq_len,
        "train_loss_last": losses[-1] if losses else None,
        "val_loss": val_loss,
        "weights_sha256": weights_digest(out_dir),
        "build_s": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (Path(out_dir) / BASE_INFO).write_text(json.dumps(info, indent=2))
    on_event(f"base: built in {info['build_s']:.0f}s, held-out loss {val_loss:.3f}")
    return Path(out_dir)


def _blocks(texts: tuple[str, ...], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """Every document's tokens followed by EOS, concatenated and cut into ``seq_len`` blocks."""
    import torch

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for ids_of_doc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(ids_of_doc)
        ids.append(eos)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _lr_at(step: int, spec: PretrainSpec) -> float:
    # 1) linear warm-up, 2) cosine decay to 10% of the peak
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _pretrain(
    model: Any, train: torch.Tensor, spec: PretrainSpec, on_event: Callable[[str], None]
) -> list[float]:
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    order, pos, losses = torch.randperm(len(train), generator=gen), 0, []
    every = max(1, spec.steps // 5)
    for step in range(spec.steps):
        if pos + spec.batch_size > len(order):  # next epoch, reshuffled
            order, pos = torch.randperm(len(train), generator=gen), 0
        batch = train[order[pos : pos + spec.batch_size]]
        pos += spec.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % every == 0:
            on_event(f"base: step {step + 1}/{spec.steps} loss {losses[-1]:.3f}")
    return losses


def _mean_loss(model: Any, blocks: torch.Tensor, batch: int = 16) -> float:
    import torch

    model.eval()
    total = 0.0
    for i in range(0, len(blocks), batch):
        x = blocks[i : i + batch]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            total += float(model(input_ids=x, labels=x, use_cache=False).loss) * len(x)
    return total / len(blocks)


def read_base_info(model_dir: str | Path) -> dict[str, Any] | None:
    """``base.json`` of a pretrained base (None for any other model directory)."""
    path = Path(model_dir) / BASE_INFO
    return json.loads(path.read_text()) if path.is_file() else None
