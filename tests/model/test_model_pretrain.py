"""The pretrained base: built offline from the stdlib's docstrings, deterministic from its seed,
cached by content, built once under concurrent callers, and the first link of the lineage."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hybridft.model import load_model, load_tokenizer, read_base_info, resolve_base
from hybridft.model.pretrain import general_corpus
from hybridft.specs import PretrainSpec, TinyModelSpec

CFG = TinyModelSpec(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64, vocab_size=400)
RECIPE = PretrainSpec(steps=3, batch_size=2, seq_len=32, warmup_steps=1)


def _build(cache: Path, recipe: PretrainSpec = RECIPE, events: list[str] | None = None) -> Path:
    sink = events if events is not None else []  # the caller's list, even when empty
    return resolve_base("pretrained", CFG, str(cache), pretrain=recipe, on_event=sink.append)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("base-a"))


def test_the_corpus_is_the_stdlib_docstrings_in_a_fixed_order() -> None:
    a, b = general_corpus(), general_corpus()
    assert a.fingerprint == b.fingerprint and a.texts == b.texts
    assert len(a.texts) > 1000 and a.python.startswith(f"{sys.version_info[0]}.")
    assert any("Return" in t for t in a.texts)


def test_same_seed_same_weights_other_seed_other_weights(built, tmp_path) -> None:
    again = _build(tmp_path / "b")
    assert again != built
    info_a, info_b = read_base_info(built), read_base_info(again)
    assert info_a["weights_sha256"] == info_b["weights_sha256"]
    assert (built / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    other = _build(tmp_path / "c", RECIPE.model_copy(update={"seed": 1}))
    assert read_base_info(other)["weights_sha256"] != info_a["weights_sha256"]


def test_a_base_is_a_real_hf_directory_with_its_lineage_record(built) -> None:
    info = read_base_info(built)
    assert info["corpus"]["fingerprint"] == general_corpus().fingerprint
    assert info["trained_tokens"] == RECIPE.steps * RECIPE.batch_size * RECIPE.seq_len
    assert info["recipe"]["seed"] == RECIPE.seed
    model, tok = load_model(built), load_tokenizer(built)  # the real from_pretrained path
    assert model.config.vocab_size == len(tok)
    # the tokenizer learnt the general corpus, not a user's task data
    text = "Return the value of the attribute"  # merges learnt: fewer tokens than half the bytes
    assert len(tok(text)["input_ids"]) <= len(text) / 2
    assert tok.chat_template and tok.eos_token == "<|end|>"


def test_cached_by_content_and_built_once_under_concurrent_callers(tmp_path) -> None:
    events: list[str] = []
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(_build(tmp_path, events=events)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and len(paths) == 3
    assert sum("pretraining" in e for e in events) == 1  # one build, two waited and reused it
    assert not list(tmp_path.glob(".pretrained-*"))  # no half-written directory left behind
    events.clear()
    assert _build(tmp_path, events=events) == paths[0] and not events  # cached: nothing rebuilt


def test_cli_base_build_prints_the_directory_and_corpus(tmp_path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "name": "b",
                "model": {
                    "base": "pretrained",
                    "cache_dir": str(tmp_path / "cache"),
                    "tiny": CFG.model_dump(),
                    "pretrain": RECIPE.model_dump(),
                },
                "data": {"sources": {"t": {"paths": ["x.jsonl"]}}},
                "stages": [{"name": "s", "mix": [{"source": "t", "weight": 1}],
                            "budget": {"steps": 1}}],
            }
        )
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "hybridft.cli", "base", "build", "--job", str(job)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert read_base_info(path)["corpus"]["fingerprint"][:19] in out.stderr
    assert "held-out loss" in out.stderr and "Traceback" not in out.stderr
