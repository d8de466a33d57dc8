"""Small builders shared by tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from hybridft.registry.access import User
from hybridft.registry.policy import Policy

# Canary tests: a releaser, and a policy whose gates pass without approvals or catalog reviews.
RELEASER = User("dave", ("releaser", "viewer"))
LOOSE = Policy(
    name="loose",
    required_approvals={"count": 0},
    require_approved_data=False,
    aliases=["candidate", "canary", "champion"],
)

TINY = {
    "layers": 2,
    "hidden": 64,
    "heads": 4,
    "kv_heads": 4,
    "intermediate": 128,
    "vocab_size": 1024,
}


def job_dict(tmp: Path, data: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny two-source job on the synthetic demo data; ``overrides`` replace top-level keys."""
    spec: dict[str, Any] = {
        "name": "t",
        "seed": 0,
        "output_dir": str(tmp / "runs"),
        "model": {
            "base": "tiny",
            "cache_dir": str(tmp.parent / "base-cache"),
            "tokenizer_corpus": [str(data / "**" / "train.jsonl")],
            "tiny": dict(TINY),
        },
        "data": {
            "sources": {
                "it_desk": {"paths": [str(data / "sft/it_desk/train.jsonl")], "format": "task"},
                "instr": {
                    "paths": [
                        str(data / "instruction/urgency_detect/train.jsonl"),
                        str(data / "instruction/sentiment/train.jsonl"),
                    ],
                    "kind": "instruction",
                },
            },
            "eval": {"it_desk": [str(data / "sft/it_desk/test.jsonl")]},
            "max_len": 128,
        },
        "stages": [
            {
                "name": "sft",
                "mix": [{"source": "it_desk", "weight": 1}],
                "budget": {"steps": 6},
                "lr": 2e-3,
                "warmup_steps": 1,
            }
        ],
        "training": {"batch_size": 2, "log_every": 2, "checkpoint_every": 3},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        "eval": {"max_examples": 16, "max_new_tokens": 8},
    }
    for key, value in overrides.items():
        spec[key] = copy.deepcopy(value)
    return spec


def write_job(tmp: Path, spec: dict[str, Any], name: str = "job.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class FirstForward(Exception):
    """Raised by ``first_forward_devices``'s hook: the model's first call was seen."""


def first_forward_devices(model: Any, call: Any) -> dict[str, str]:
    """Device type of each tensor keyword the model's first forward gets while ``call()`` runs.

    The forward is stopped there, so a model on ``meta`` (no weights, no numbers) shows where
    a caller puts its inputs without computing anything.
    """
    import torch

    seen: dict[str, str] = {}

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.update({k: v.device.type for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        raise FirstForward

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        call()
    except FirstForward:
        pass
    finally:
        handle.remove()
    return seen


def widen_weights(model: Any, scale: float = 0.2, seed: int = 0) -> Any:
    """``model`` with every matrix redrawn wide (N(0, scale^2)): a tiny model's saved init barely
    looks at its context, so scores and answers would hardly differ between prompts."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * scale)
    return model


def lora_adapters(
    model_dir: Path, root: Path, names: tuple[str, ...], seed: int, r: int = 4
) -> dict[str, str]:
    """Random (non-zero) LoRA adapters on ``model_dir``'s model, saved as peft writes them
    (q_proj, v_proj, down_proj; adapter i seeded ``seed + i``): name -> directory."""
    import torch
    from peft import LoraConfig, get_peft_model

    from hybridft.model.hf import load_model

    out = {}
    for i, name in enumerate(names):
        torch.manual_seed(seed + i)
        cfg = LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                         init_lora_weights=False)  # fmt: skip
        get_peft_model(load_model(model_dir), cfg).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def merged_engine(model_dir: Path, adapter: str | None) -> Any:
    """The reference for one model id: the hf engine on a fresh base with only ``adapter``
    merged into it (None: the bare base)."""
    from hybridft.serve.generation import GenerationEngine

    engine = GenerationEngine.from_dir(model_dir)
    if adapter is not None:
        from peft import PeftModel

        engine.model = PeftModel.from_pretrained(engine.model, adapter).merge_and_unload().eval()
    return engine


def free_port() -> int:
    """A TCP port free on loopback now (for a test's Serve HTTP proxy)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
