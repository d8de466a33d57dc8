"""A version's download is verified before it is used or reused: a download killed half-way or a
file truncated since is fetched again, and weights that are not the registered ones are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from hybridft.errors import UserError
from hybridft.model.hf import weights_digest
from hybridft.registry.client import DOWNLOAD_RECORD, WEIGHTS_TAG


def _model(tmp_path: Path, value: float) -> Path:
    import torch

    model_dir = tmp_path / f"model-{value}"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": torch.full((256, 256), value)}, str(model_dir / "model.safetensors"))
    return model_dir


def _version(registry, model_dir: Path, tags: dict[str, str]):
    run_id = registry.start_run("r")
    source = registry.log_dir(run_id, model_dir, "model")
    registry.end_run(run_id)
    version = registry.register("desk", run_id, source, tags).version
    return registry.resolve(f"desk@{version}")


def test_a_download_is_verified_and_a_damaged_one_fetched_again(registry, tmp_path) -> None:
    model_dir = _model(tmp_path, 1.0)
    ref = _version(registry, model_dir, {WEIGHTS_TAG: weights_digest(model_dir)})
    dest = tmp_path / "served" / "desk" / ref.version
    got = registry.download(ref, dest)
    assert got == dest and (dest / DOWNLOAD_RECORD).is_file()
    assert weights_digest(dest) == weights_digest(model_dir)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # truncated since (a disk filled, a copy interrupted): not reused, fetched again
    weights = dest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    registry.download(ref, dest)
    assert weights_digest(dest) == weights_digest(model_dir)
    # a download killed half-way leaves no record: fetched again, never reused
    (dest / DOWNLOAD_RECORD).unlink()
    weights.write_bytes(b"")
    registry.download(ref, dest)
    assert weights_digest(dest) == weights_digest(model_dir)


def test_weights_that_are_not_the_registered_ones_are_refused(registry, tmp_path) -> None:
    model_dir = _model(tmp_path, 2.0)
    other = _model(tmp_path, 3.0)
    ref = _version(registry, model_dir, {WEIGHTS_TAG: weights_digest(other)})
    dest = tmp_path / "served" / "desk" / ref.version
    with pytest.raises(UserError, match="do not match the registered sha256"):
        registry.download(ref, dest)
    assert not dest.exists()  # nothing half-verified is left to reuse
