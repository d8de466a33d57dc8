"""A process that prepares run after run (sweep trials) renders each source once; a changed file,
or a changed rendering setting, is rendered again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hybridft.model import load_tokenizer
from hybridft.specs import DataSpec
from hybridft.train import prepare


def _data(path: Path, max_len: int = 64) -> DataSpec:
    return DataSpec.model_validate(
        {"sources": {"desk": {"paths": [str(path)], "format": "task"}}, "max_len": max_len}
    )


def _rows(path: Path, label: str) -> None:
    rows = [
        {"prompt": f"ticket {i}: vpn down", "completion": label, "label": label} for i in range(20)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_unchanged_source_is_rendered_once_and_a_changed_one_again(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tok = load_tokenizer(tiny_model_dir)
    path = tmp_path / "desk.jsonl"
    _rows(path, "network")
    first, _ = prepare.render_source("desk", _data(path), tok)
    again, _ = prepare.render_source("desk", _data(path), tok)
    assert again is first  # from the cache

    size = path.stat().st_size
    _rows(path, "printer")  # same length, other content
    assert path.stat().st_size == size
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    changed, _ = prepare.render_source("desk", _data(path), tok)
    assert changed is not first and changed.fingerprint != first.fingerprint
    assert changed.fingerprint == prepare._render_source("desk", _data(path), tok)[0].fingerprint

    shorter, _ = prepare.render_source("desk", _data(path, max_len=16), tok)
    assert shorter is not changed
    assert max(len(x) for x in shorter.ids) <= 16 < max(len(x) for x in changed.ids)


def test_the_cache_is_bounded(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepare, "RENDER_CACHE_SIZE", 2)
    monkeypatch.setattr(prepare, "_RENDERED", type(prepare._RENDERED)())
    tok = load_tokenizer(tiny_model_dir)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"s{i}.jsonl")
        _rows(paths[-1], "network")
        prepare.render_source("desk", _data(paths[-1]), tok)
    assert len(prepare._RENDERED) == 2
    oldest, _ = prepare.render_source("desk", _data(paths[0]), tok)  # evicted: rendered again
    assert len(prepare._RENDERED) == 2 and oldest.ids
