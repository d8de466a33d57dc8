"""Fixtures of the data-layer tests: the tiny model's real tokenizer and a JSONL writer."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, loaded from its HF directory like any user model's."""
    from hybridft.model.hf import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings written verbatim) as lines of a JSONL file."""

    def write(name: str, rows: list) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)

    return write
