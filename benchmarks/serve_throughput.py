"""Serving benchmark, in one run (issue 7):

(a) latency the canary router adds: the same model version called through the router (keys,
    routing, request log, metrics) and directly (its own Serve application over HTTP); p50 and
    p95 of max_tokens=1 requests, sequential, interleaved. Target: <= 1 ms added at p50.
(b) throughput at 16 concurrent clients: our model deployment (serve.batch + batched KV-cached
    decode) vs one-at-a-time Hugging Face ``generate`` behind a plain FastAPI app (uvicorn, one
    request at a time under a lock), same model, same thread count, same prompts. Completion
    tokens/s. Target: >= 3x.
(d) the vllm engine (vLLM's server under the same deployment, ``engine: vllm``) on the same model
    and threads: its start-up time, the router's added latency on it, and its throughput at the
    same 16 clients against (b)'s two. The faster engine here is ``serve.engines.DEFAULT_ENGINE``.
(c) in simulation: canary requests needed to detect a 5-point success drop at a 95% baseline,
    the sequential test vs a Flagger-style fixed threshold rule calibrated to <= 5% false
    rollbacks on the same streams.

Run: ``python benchmarks/serve_throughput.py`` (about 5 minutes; ``--engines hf`` skips (d)).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np

PROMPTS = [f"Ticket {i}: my laptop cannot reach the VPN since this morning" for i in range(64)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(root: Path, hidden: int, layers: int) -> Path:
    from hybridft.model.tiny import build_tiny_base
    from hybridft.specs import TinyModelSpec

    corpus = root / "corpus.jsonl"
    rows = [{"prompt": p, "completion": "network"} for p in PROMPTS]
    corpus.write_text("\n".join(json.dumps(r) for r in rows * 4) + "\n")
    cfg = TinyModelSpec(
        layers=layers, hidden=hidden, heads=8, kv_heads=4, intermediate=hidden * 3, vocab_size=512
    )
    return build_tiny_base(cfg, root / "model", [str(corpus)])


def register(registry, model_dir: Path, name: str) -> str:
    from hybridft.registry.access import User
    from hybridft.registry.gates import promote
    from hybridft.registry.policy import Policy

    run_id = registry.start_run("bench", tags={"hybridft.kind": "train"})
    source = registry.log_dir(run_id, model_dir, "model")
    registry.end_run(run_id)
    version = registry.register(name, run_id, source, {}).version
    loose = Policy(name="bench", required_approvals={"count": 0}, require_approved_data=False)
    promote(registry, loose, name, version, "champion", user=User("bench", ("releaser",)))
    return version


def timed_posts(client: httpx.Client, url: str, body: dict, headers: dict, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post(url, json=body, headers=headers)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def router_overhead(root_url: str, direct_url: str, key: str, n: int, seed: int = 0) -> dict:
    """Sequential requests alternating between the two paths (so load drifts hit both alike);
    the added p50 with a 95% bootstrap interval over the requests."""
    body = {"model": "bench", "prompt": PROMPTS[0], "max_tokens": 1}
    auth = {"authorization": f"Bearer {key}"}
    via, direct = [], []
    with httpx.Client(timeout=60) as client:
        timed_posts(client, f"{root_url}/v1/completions", body, auth, 20)  # warm up
        timed_posts(client, f"{direct_url}/v1/completions", body, auth, 20)  # the same key
        for _ in range(n):
            via += timed_posts(client, f"{root_url}/v1/completions", body, auth, 1)
            direct += timed_posts(client, f"{direct_url}/v1/completions", body, auth, 1)
    v, d = np.array(via) * 1e3, np.array(direct) * 1e3
    rng = np.random.default_rng(seed)
    boot = [
        np.median(rng.choice(v, v.size)) - np.median(rng.choice(d, d.size)) for _ in range(2000)
    ]
    return {
        "router_p50_ms": float(np.median(v)),
        "direct_p50_ms": float(np.median(d)),
        "router_p95_ms": float(np.percentile(v, 95)),
        "direct_p95_ms": float(np.percentile(d, 95)),
        "added_p50_ms": float(np.median(v) - np.median(d)),
        "added_p50_ci95_ms": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "added_p95_ms": float(np.percentile(v, 95) - np.percentile(d, 95)),
        "n_each": len(via),
    }


def load(
    url: str,
    headers: dict,
    clients: int,
    seconds: float,
    max_tokens: int,
    models: tuple[str, ...] = ("bench",),
) -> dict:
    """``clients`` closed-loop clients for ``seconds``; client i asks model ``models[i % n]``."""
    done, tokens, errors = [], [], 0
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        nonlocal errors
        with httpx.Client(timeout=120) as client:
            k = i
            while time.monotonic() < stop:
                body = {
                    "model": models[i % len(models)],
                    "prompt": PROMPTS[k % len(PROMPTS)],
                    "max_tokens": max_tokens,
                }
                t0 = time.perf_counter()
                r = client.post(url, json=body, headers=headers)
                if r.status_code != 200:
                    errors += 1
                    continue
                done.append(time.perf_counter() - t0)
                tokens.append(r.json()["usage"]["completion_tokens"])
                k += clients

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(done)
    return {
        "requests": len(done),
        "errors": errors,
        "wall_s": wall,
        "completion_tokens_per_s": sum(tokens) / wall,
        "requests_per_s": len(done) / wall,
        "p50_s": float(np.median(lat)) if len(lat) else None,
        "p99_s": float(np.percentile(lat, 99)) if len(lat) else None,
    }


PLAIN_APP = textwrap.dedent("""
    import sys, threading, torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(int(sys.argv[2]))
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
    lock = threading.Lock()
    app = FastAPI()
    class Req(BaseModel):
        model: str
        prompt: str
        max_tokens: int = 16
    @app.post("/v1/completions")
    def complete(req: Req):
        ids = tok(req.prompt, return_tensors="pt")
        with lock, torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=req.max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        return {"choices": [{"text": tok.decode(new, skip_special_tokens=True)}],
                "usage": {"completion_tokens": int(new.numel())}}
""")


def plain_fastapi(
    model_dir: Path, threads: int, clients: int, seconds: float, max_tokens: int, tmp: Path
) -> dict:
    script = tmp / "plain_app.py"
    script.write_text(PLAIN_APP)
    port = free_port()
    code = (
        f"import sys, uvicorn; sys.argv=['x', {str(model_dir)!r}, '{threads}']; "
        f"sys.path.insert(0, {str(tmp)!r}); import plain_app; "
        f"uvicorn.run(plain_app.app, host='127.0.0.1', port={port}, log_level='warning')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        url = f"http://127.0.0.1:{port}/v1/completions"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.post(
                    url, json={"model": "bench", "prompt": "hi", "max_tokens": 1}, timeout=30
                )
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return load(url, {}, clients, seconds, max_tokens)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def state_version(paths) -> str:
    """The version the router serves (the endpoint's champion)."""
    from hybridft.serve.canary import CanaryStore

    return CanaryStore(paths.state).read().primary


def detection(n_runs: int) -> dict:
    from hybridft.release.analysis import SuccessTestConfig
    from hybridft.release.simulate import calibrate_fixed_rule, simulate_detection

    calibrated = calibrate_fixed_rule(0.95, 0.05, target_false_rollback=0.05, seed=1)
    test = SuccessTestConfig(margin=0.02, alpha=0.05, beta=0.2)
    result = simulate_detection(0.95, 0.05, rule=calibrated.rule, test=test, n_runs=n_runs, seed=0)
    out = {
        name: stats.to_dict() if hasattr(stats, "to_dict") else vars(stats)
        for name, stats in result.items()
    }
    out["fixed_rule"] = str(calibrated.rule)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per throughput contender")
    parser.add_argument("--skip-plain", action="store_true", help="only our side of (b)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sim-runs", type=int, default=2000)
    parser.add_argument("--engines", default="hf,vllm", help="hf, or hf,vllm: (d) as well")
    parser.add_argument(
        "--batch-wait-ms",
        default="40,4",
        help="serve.batch wait of our deployment; a comma list measures each in this run",
    )
    args = parser.parse_args()

    import ray
    from ray import serve

    from hybridft.registry.client import Registry
    from hybridft.serve.canary import CanarySpec, ServePaths
    from hybridft.serve.endpoint import ServeDeployer, start_endpoint
    from hybridft.serve.keys import KeyStore
    from hybridft.serve.launch import ServeModelArgs, build_app

    tmp = Path(tempfile.mkdtemp(prefix="hybridft-serve-bench-"))
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    try:
        model_dir = build_model(tmp, args.hidden, args.layers)
        registry = Registry(f"sqlite:///{tmp / 'mlflow.db'}")
        register(registry, model_dir, "bench")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        spec = CanarySpec(model="bench")
        paths = ServePaths(tmp / "serve")
        # (a) compares the router's version with the direct app on one engine: hf here, vllm in (d)
        deployer = ServeDeployer(registry, "bench", cache=tmp / "served", num_cpus=0.5, engine="hf")
        root_url = start_endpoint(
            spec, paths.root, registry, port=port, deployer=deployer
        ).removesuffix("/v1")
        key = KeyStore(paths.keys).create("bench")
        waits = [float(w) for w in str(args.batch_wait_ms).split(",")]

        def direct_app(wait_ms: float, engine: str = "hf") -> str:
            direct = ServeModelArgs(
                engine=engine,
                model_dir=str(model_dir),
                model_name="bench",
                version="direct",
                num_cpus=0.5,
                max_batch_size=args.clients,
                batch_wait_s=wait_ms / 1000,
                serve_dir=str(paths.root),  # its HTTP door checks the router's keys too
            )
            serve.run(build_app(direct), name="direct", route_prefix="/direct")
            return f"http://127.0.0.1:{port}/direct"

        direct_url = direct_app(waits[0])
        print("(a) router overhead ...", flush=True)
        results["router"] = router_overhead(root_url, direct_url, key, args.latency_requests)
        print(json.dumps(results["router"]), flush=True)

        results["batched_by_wait_ms"] = {}
        for wait_ms in waits:
            print(f"(b) throughput: batched deployment, batch wait {wait_ms:g} ms ...", flush=True)
            url = direct_app(wait_ms)
            auth = {"authorization": f"Bearer {key}"}
            got = load(f"{url}/v1/completions", auth, args.clients, args.seconds, args.max_tokens)
            results["batched_by_wait_ms"][f"{wait_ms:g}"] = got
            print(json.dumps(got), flush=True)
        results["batched"] = results["batched_by_wait_ms"][f"{waits[0]:g}"]
        if "vllm" in args.engines.split(","):
            print("(d) the vllm engine: start-up ...", flush=True)
            t0 = time.perf_counter()
            ServeDeployer(
                registry, "bench", cache=tmp / "served", num_cpus=0.5, engine="vllm"
            ).deploy(state_version(paths))  # the router's version, now on vLLM
            started = time.perf_counter() - t0
            t0 = time.perf_counter()
            direct_url = direct_app(0.0, engine="vllm")
            results["vllm_start_s"] = {"behind_router": started, "direct": time.perf_counter() - t0}
            print(json.dumps(results["vllm_start_s"]), flush=True)
            print("(d) router overhead on the vllm engine ...", flush=True)
            results["router_vllm"] = router_overhead(
                root_url, direct_url, key, args.latency_requests
            )
            print(json.dumps(results["router_vllm"]), flush=True)
            print("(d) throughput: the vllm engine ...", flush=True)
            auth = {"authorization": f"Bearer {key}"}
            got = load(
                f"{direct_url}/v1/completions", auth, args.clients, args.seconds, args.max_tokens
            )
            results["vllm"] = got
            print(json.dumps(got), flush=True)
        serve.shutdown()
        ray.shutdown()
        print("(b) throughput: one-at-a-time HF generate behind FastAPI ...", flush=True)
        results["plain"] = plain_fastapi(
            model_dir, 1, args.clients, args.seconds, args.max_tokens, tmp
        )
        print(json.dumps(results["plain"]), flush=True)

        print("(c) detection in simulation ...", flush=True)
        results["detection"] = detection(args.sim_runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seq, fixed = results["detection"]["sequential"], results["detection"]["fixed_threshold"]
    summary = {
        "router_added_p50_ms": round(results["router"]["added_p50_ms"], 3),
        "router_added_p95_ms": round(results["router"]["added_p95_ms"], 3),
        "batched_vs_plain_tokens_per_s": round(
            results["batched"]["completion_tokens_per_s"]
            / results["plain"]["completion_tokens_per_s"],
            2,
        ),
        "batched_tokens_per_s": round(results["batched"]["completion_tokens_per_s"], 1),
        "batched_vs_plain_by_wait_ms": {
            w: round(r["completion_tokens_per_s"] / results["plain"]["completion_tokens_per_s"], 2)
            for w, r in results["batched_by_wait_ms"].items()
        },
        "plain_tokens_per_s": round(results["plain"]["completion_tokens_per_s"], 1),
        "detect_median_canary_requests": {
            "sequential": seq.get("median_requests"),
            "fixed": fixed.get("median_requests"),
        },
        "detect_p90_canary_requests": {
            "sequential": seq.get("p90_requests"),
            "fixed": fixed.get("p90_requests"),
        },
        "false_rollback": {
            "sequential": seq.get("false_rollback_rate"),
            "fixed": fixed.get("false_rollback_rate"),
        },
        "targets": {"router_added_p50_ms": "<= 1", "batched_vs_plain": ">= 3"},
    }
    if "vllm" in results:
        vllm, plain = results["vllm"], results["plain"]["completion_tokens_per_s"]
        summary.update(
            vllm_tokens_per_s=round(vllm["completion_tokens_per_s"], 1),
            vllm_vs_hf_batched_tokens_per_s=round(
                vllm["completion_tokens_per_s"] / results["batched"]["completion_tokens_per_s"], 2
            ),
            vllm_vs_plain_tokens_per_s=round(vllm["completion_tokens_per_s"] / plain, 2),
            p50_p99_s={
                name: [round(results[name]["p50_s"], 4), round(results[name]["p99_s"], 4)]
                for name in ("vllm", "batched", "plain")
            },
            vllm_start_s={k: round(v, 1) for k, v in results["vllm_start_s"].items()},
            router_added_p50_ms_vllm=round(results["router_vllm"]["added_p50_ms"], 3),
        )
    print(json.dumps(results, default=str))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
