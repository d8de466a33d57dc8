"""LoRA serving benchmark (issue 20): one base model with three LoRA adapters, on the hf engine
(the model in the replica, ``serve.adapters``: one decode batch per adapter, swapped under a
lock) and on the vllm engine (vLLM's multi-LoRA: every adapter in one batch), in one run, same
model, same adapters, same thread count, same prompts, each engine with its shipped defaults.

(a) throughput at 16 concurrent clients, the traffic mixed: client i asks the base or one of the
    adapters (i mod 4). Completion tokens/s, p50 and p99 latency.
(b) a classification request's latency: a chat request with four candidate labels on an
    adapter (the label probabilities the canary controller and the review queue read),
    sequential. On the vllm engine with LoRA every scored token is a forced one-token decode
    (``serve.vllm_engine``: vLLM 0.32 dies on prompt logprobs with LoRA), so this is its cost.
(c) the vllm engine's start-up with the adapters.

Run: ``python benchmarks/serve_adapters.py`` (about 3 minutes). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from serve_throughput import PROMPTS, build_model, free_port, load

ADAPTERS = ("billing", "hr", "legal")
LABELS = ["network", "hardware", "access", "billing"]


def make_adapters(model_dir: Path, root: Path, rank: int) -> dict[str, str]:
    """Three LoRA adapters with random (non-zero) weights, saved as peft writes them."""
    import torch
    from peft import LoraConfig, get_peft_model

    from hybridft.model.hf import load_model

    out = {}
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(10 + i)
        cfg = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        )
        get_peft_model(load_model(model_dir), cfg).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def label_latency(url: str, n: int) -> dict:
    """``n`` sequential classification requests on an adapter: p50 / p95 seconds."""
    out = []
    with httpx.Client(timeout=120) as client:
        for i in range(n + 2):
            body = {
                "model": f"bench:{ADAPTERS[i % len(ADAPTERS)]}",
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": 1,
                "labels": LABELS,
            }
            t0 = time.perf_counter()
            reply = client.post(url, json=body)
            took = time.perf_counter() - t0
            reply.raise_for_status()
            if i >= 2:  # two warm-ups
                out.append(took)
    lat = np.array(out)
    return {"n": n, "p50_s": float(np.median(lat)), "p95_s": float(np.percentile(lat, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per throughput contender")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--label-requests", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    import ray
    from ray import serve

    from hybridft.serve.launch import ServeModelArgs, build_app

    tmp = Path(tempfile.mkdtemp(prefix="hybridft-adapter-bench-"))
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    try:
        model_dir = build_model(tmp, args.hidden, args.layers)
        adapters = make_adapters(model_dir, tmp / "adapters", args.rank)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        models = ("bench", *(f"bench:{a}" for a in ADAPTERS))
        for engine in ("hf", "vllm"):
            print(f"{engine}: start-up ...", flush=True)
            spec = ServeModelArgs(
                engine=engine,
                model_dir=str(model_dir),
                model_name="bench",
                version=engine,
                adapters=adapters,
                max_batch_size=args.clients,
                insecure_local=True,  # loopback only; keys are not what is measured here
            )
            t0 = time.perf_counter()
            serve.run(build_app(spec), name=engine, route_prefix=f"/{engine}")
            results[f"{engine}_start_s"] = time.perf_counter() - t0
            url = f"http://127.0.0.1:{port}/{engine}/v1"
            print(f"{engine}: (a) throughput, mixed base + adapters ...", flush=True)
            results[engine] = load(
                f"{url}/completions", {}, args.clients, args.seconds, args.max_tokens, models
            )
            print(json.dumps(results[engine]), flush=True)
            print(f"{engine}: (b) classification latency ...", flush=True)
            results[f"{engine}_labels"] = label_latency(
                f"{url}/chat/completions", args.label_requests
            )
            print(json.dumps(results[f"{engine}_labels"]), flush=True)
            serve.delete(engine)
        serve.shutdown()
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hf, vllm = results["hf"], results["vllm"]
    summary = {
        "vllm_vs_hf_tokens_per_s": round(
            vllm["completion_tokens_per_s"] / hf["completion_tokens_per_s"], 2
        ),
        "tokens_per_s": {
            "vllm": round(vllm["completion_tokens_per_s"], 1),
            "hf": round(hf["completion_tokens_per_s"], 1),
        },
        "p50_p99_s": {
            name: [round(results[name]["p50_s"], 4), round(results[name]["p99_s"], 4)]
            for name in ("vllm", "hf")
        },
        "errors": {"vllm": vllm["errors"], "hf": hf["errors"]},
        "label_request_p50_ms": {
            name: round(results[f"{name}_labels"]["p50_s"] * 1000, 1) for name in ("vllm", "hf")
        },
        "vllm_vs_hf_label_request_p50": round(
            results["vllm_labels"]["p50_s"] / results["hf_labels"]["p50_s"], 2
        ),
        "vllm_start_s": round(results["vllm_start_s"], 1),
    }
    print(json.dumps(results, default=str))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
