"""Shared fixtures. One way to start Ray in tests: the session-wide `ray_session` fixture."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

pytest_plugins = ["registry_fixtures"]  # registry, make_version: used by registry and serve tests

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The tests play several people on one machine (HYBRIDFT_USER / HYBRIDFT_ROLES): dev mode, the
# only mode that reads them (registry.access). tests/security/ turns it off to attack the guards.
os.environ["HYBRIDFT_DEV_MODE"] = "1"


def pytest_collection_modifyitems(config, items) -> None:
    """`make test` runs two pytest-xdist workers with ``--dist loadscope``: each module runs
    whole on one worker, so its module fixtures (a vLLM server, a trained model, a Serve app) are
    built once. Each worker has its own local Ray (``ray_session``: 2 CPUs, as CI), used by one
    test at a time; two modules on Ray may run at once, one per worker. The long modules go
    first (a test marked ``slow``, then a test on Ray: the two-node cluster module is slow but
    not on the shared Ray, and came last, a 2-minute tail on one worker), so the short ones
    fill in at the end, on whichever worker is free. (``--dist loadgroup`` with an
    ``xdist_group`` mark per module would do the same, but pytest-xdist 3.8 writes the group
    into ``item._nodeid``, which pytest 9 no longer reads: every test became a group of its
    own.)"""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    on_ray = {item.module.__name__ for item in items if "ray_session" in item.fixturenames}

    def rank(item: pytest.Item) -> tuple[bool, bool]:
        module = item.module.__name__  # type: ignore[attr-defined]
        return module not in slow, module not in on_ray

    items.sort(key=rank)  # stable: the order within a module is kept


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance for the whole test run (2 CPUs, like the machine and CI)."""
    import ray

    if not ray.is_initialized():
        # address="local": a fresh instance, never a cluster some `ray start` left behind
        from hybridft.runtime import LOCAL_RUNTIME_ENV

        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=LOCAL_RUNTIME_ENV,
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama + locally trained tokenizer saved as a real HF directory."""
    from hybridft.model.tiny import build_tiny_base
    from hybridft.specs import TinyModelSpec

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.jsonl"
    rows = [
        {"prompt": f"Ticket {i}: my laptop cannot reach the VPN", "completion": "network"}
        for i in range(50)
    ] + [{"instruction": "Rewrite politely", "output": "Could you please help me?"}] * 20
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = TinyModelSpec(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab_size=400)
    return build_tiny_base(cfg, root / "model", [str(corpus)])


@pytest.fixture(scope="session")
def vllm_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """``tiny_model_dir``'s model with a head size vLLM's CPU attention supports (32: its kernels
    take 32, 64, 80, ...; the tiny model's 16 fails at the first forward) and wide random
    weights (``helpers.widen_weights``), so answers and label scores vary with the prompt."""
    from helpers import widen_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from hybridft.model.hf import load_tokenizer, save_model

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.head_dim = 32
    model = AutoModelForCausalLM.from_config(config)
    widen_weights(model)
    out = tmp_path_factory.mktemp("vllm-model") / "model"
    return save_model(model.eval(), load_tokenizer(tiny_model_dir), out)


@pytest.fixture(scope="session")
def small_demo_data(tmp_path_factory) -> Path:
    """The synthetic demo data at a small size (same generator, same tasks)."""
    from hybridft.demo import synthesize

    out = tmp_path_factory.mktemp("demo-small") / "data"
    synthesize(
        out,
        seed=0,
        n_train=300,
        n_validation=40,
        n_test=40,
        n_instruction_train=120,
        n_instruction_validation=20,
        n_instruction_test=20,
    )
    return out
