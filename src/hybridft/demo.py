"""``make demo``: data -> train -> eval -> register -> serve -> one answered request -> summary."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEMO_SPEC = Path("jobs/demo.yaml")
MODEL_NAME = "hybridft-demo"


def _step(console: Console, n: int, text: str) -> float:
    console.rule(f"[bold]{n}/6 {text}")
    return time.perf_counter()


def run_demo(port: int = 8000, data_dir: Path = Path("data/demo")) -> dict[str, str]:
    """Run the whole skeleton on the demo data and print a summary table."""
    from hybridft.data.synth import synthesize
    from hybridft.pipeline import eval_table, evaluate_run, serve_version, train_and_log
    from hybridft.registry.client import Registry
    from hybridft.registry.tracking import register_run

    console = Console()
    t_start = time.perf_counter()
    t = _step(console, 1, "demo data (deterministic, seed 0)")
    manifest = synthesize(data_dir, seed=0)
    rows = sum(sum(c.values()) for c in manifest.counts.values())
    console.print(f"{rows} rows in {data_dir}  ({time.perf_counter() - t:.1f}s)")

    t = _step(console, 2, f"train {DEMO_SPEC} on Ray Train (2 workers, DDP over gloo)")
    record = train_and_log(DEMO_SPEC)
    console.print(f"run {record.run_name} ({time.perf_counter() - t:.0f}s)")

    t = _step(console, 3, "evaluate on the held-out test split")
    result = evaluate_run(record.run_dir)
    console.print(eval_table(result))

    _step(console, 4, "register in MLflow")
    registry = Registry(record.tracking_uri)
    version = register_run(registry, record, MODEL_NAME)
    console.print(f"registered {version.name} version {version.version}")

    _step(console, 5, "serve on Ray Serve (OpenAI-compatible)")
    url = serve_version(f"{version.name}@{version.version}", port=port)

    _step(console, 6, "one request with the openai client")
    import openai

    client = openai.OpenAI(base_url=url, api_key="demo")
    sample = json.loads(Path(data_dir, "sft/it_desk/test.jsonl").read_text().splitlines()[0])
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": sample["prompt"]}],
        max_tokens=24,
        temperature=0,
    )
    answer = reply.choices[0].message.content
    console.print(
        f"[b]Q:[/] {sample['prompt']}\n[b]A:[/] {answer}   (gold: {sample['completion']})"
    )

    summary = {
        "run id": record.mlflow_run_id,
        "run dir": record.run_dir,
        "model version": f"{version.name}@{version.version}",
        "accuracy (it_desk test)": f"{result.headline:.3f}",
        "endpoint": url,
        "answered by": reply.model + " / " + (reply.system_fingerprint or ""),
        "MLflow store": record.tracking_uri,
        "total time": f"{time.perf_counter() - t_start:.0f}s",
    }
    table = Table(title="hybridft demo", show_header=False)
    for k, v in summary.items():
        table.add_row(k, str(v))
    console.print(table)
    from ray import serve

    serve.shutdown()
    return summary
