"""``make demo``: data -> train -> eval -> register -> govern -> serve -> one answer -> summary.

The demo plays the users of ``policies/users.yaml`` in dev mode (``demo.steps.acting_as``; every
audit line says ``dev_mode``): bob (trainer) trains and registers, carol (approver) reviews the
training data and approves the version, dave (releaser) promotes it through the gate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hybridft.demo.loop import SERVE_DIR, fresh_demo_root, run_loop
from hybridft.demo.steps import acting_as, print_step
from hybridft.demo.synth import synthesize
from hybridft.evaluate.table import eval_table
from hybridft.pipeline import train_and_log
from hybridft.registry.approvals import approve
from hybridft.registry.catalog import review_dataset
from hybridft.registry.client import Registry
from hybridft.registry.gates import evaluate_gate, promote
from hybridft.registry.lineage import describe_lineage, lineage_tree
from hybridft.registry.policy import load_policy
from hybridft.registry.registration import evaluate_run, register_version
from hybridft.serve.canary import ServePaths
from hybridft.serve.keys import KeyStore
from hybridft.serve.launch import serve_version
from hybridft.sweep.report import build_report
from hybridft.sweep.report_html import decision_tables
from hybridft.sweep.tune import run_sweep

DEMO_SPEC = Path("jobs/demo.yaml")
MODEL_NAME = "hybridft-demo"
POLICY = Path("policies/default.yaml")
SWEEP_SPACE = Path("search_spaces/demo.yaml")
REPORT_SEEDS = 2  # per arm and per evidence run: what fits the demo; `hybridft study` runs 3
STEPS = 10
LOOP_STEPS = 16  # make demo-full: six more


def run_demo(
    port: int = 8000, data_dir: Path = Path("data/demo"), sweep: bool = True, full: bool = False
) -> dict[str, str]:
    """Run the whole skeleton on the demo data and print a summary table.

    ``full`` goes on round the loop (``demo.loop``): canary, drift, alerts, review, retraining
    on the reviewed data, a new canary, and a trace of one of its answers.
    """
    steps = LOOP_STEPS if full else STEPS
    if full:  # the loop replaces the serving folder: only one the demo made (or asks)
        fresh_demo_root(SERVE_DIR)
    console = Console(width=max(Console().width, 120))
    t_start = time.perf_counter()
    t = print_step(console, 1, steps, "demo data (deterministic, seed 0)")
    manifest = synthesize(data_dir, seed=0)
    rows = sum(sum(c.values()) for c in manifest.counts.values())
    console.print(f"{rows} rows in {data_dir}  ({time.perf_counter() - t:.1f}s)")

    t = print_step(console, 2, steps, f"train {DEMO_SPEC} on Ray Train (2 workers, DDP over gloo)")
    with acting_as("bob"):  # trainer: trains and registers; may not approve what he trained
        record = train_and_log(DEMO_SPEC)
    console.print(f"run {record.run_name} ({time.perf_counter() - t:.0f}s)")

    t = print_step(console, 3, steps, "evaluate: leakage shield, scores, calibration, robustness")
    result = evaluate_run(record.run_dir)
    console.print(eval_table(result))

    print_step(console, 4, steps, "register in MLflow (lineage, eval, model card)")
    registry = Registry(record.tracking_uri)
    with acting_as("bob"):
        version = register_version(record.run_dir, MODEL_NAME, POLICY)
    console.print(f"registered {version.name} version {version.version}")

    print_step(console, 5, steps, f"governance: gate ({POLICY}), reviews, approval, promotion")
    policy = load_policy(POLICY)
    before = evaluate_gate(registry, policy, version.name, version.version)
    console.print(f"gate before review: {'pass' if before.passed else 'FAIL'}")
    for check in before.checks:
        if not check.passed:
            console.print(f"  [red]FAIL[/] {check.check}: {check.detail}", highlight=False)
    with acting_as("carol"):  # approver
        for fp in record.fingerprints.values():
            review_dataset(registry, fp, "approved", comment="demo data reviewed")
        approve(registry, version.name, version.version, comment="eval and card reviewed")
    with acting_as("dave"):  # releaser
        moves = [
            promote(registry, policy, version.name, version.version, alias, reason="demo")
            for alias in ("candidate", "champion")
        ]
    for alias, move in zip(("candidate", "champion"), moves, strict=True):
        state = "[green]moved[/]" if move.moved else f"[red]refused[/] {move.reason}"
        console.print(f"@{alias}: {state}", highlight=False)
    champion = moves[-1].moved
    ref = f"{version.name}@{'champion' if moves[-1].moved else version.version}"
    print_step(console, 6, steps, f"lineage of {ref}: source files -> run -> version -> alias")
    console.print(lineage_tree(describe_lineage(registry, ref)), width=200)

    print_step(console, 7, steps, f"serve {ref} on Ray Serve (OpenAI-compatible)")
    keys = KeyStore(ServePaths(SERVE_DIR).keys)  # the door wants a key, as the router does
    if any(k.name == "demo" for k in keys.list()):
        keys.revoke("demo")  # keys are stored hashed: a fresh one per run
    api_key = keys.create("demo")
    url = serve_version(ref, port=port, serve_dir=SERVE_DIR)

    print_step(console, 8, steps, "one request with the openai client (an API key)")
    import openai

    client = openai.OpenAI(base_url=url, api_key=api_key)
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

    from ray import serve

    serve.shutdown()  # frees the replica's CPU share for the sweep

    report_page = ""
    if sweep:
        t = print_step(
            console, 9, steps, f"sweep {SWEEP_SPACE}: Ray Tune + Optuna TPE + ASHA, few long trials"
        )
        with acting_as("bob"):
            swept = run_sweep(SWEEP_SPACE, verbose=0)
        done = sum(1 for x in swept.trials if x["status"] == "completed")
        console.print(
            f"{len(swept.trials)} trials ({done} completed, the rest stopped early by ASHA) in "
            f"{time.perf_counter() - t:.0f}s; best: {swept.best[0]['params'] if swept.best else '-'}",
            highlight=False,
        )
        t = print_step(
            console,
            10,
            steps,
            f"report: SFT only vs instruction only vs best hybrid, {REPORT_SEEDS} seeds, "
            "label-efficiency evidence",
        )
        with acting_as("bob"):  # the report trains its arms and registers the recommendation
            page = build_report(
                swept.sweep_dir,
                seeds=REPORT_SEEDS,
                evidence_seeds=1,  # the label-efficiency runs: one seed each (intervals over rows)
                label_sizes=(50, 200),  # 1000 and all labels: `hybridft study`
                eval_examples=100,
                register_as=MODEL_NAME,  # a new version of the demo model: the loop's canary
                policy_path=POLICY,
                on_event=lambda m: console.print(m, highlight=False),
            )
        for part in decision_tables(json.loads((page.parent / "report.json").read_text())):
            console.print(part, highlight=False)
        console.print(f"report: {page}  ({time.perf_counter() - t:.0f}s)", highlight=False)
        report_page = str(page)

    loop: dict[str, str] = {}
    if full:
        loop = run_loop(console, MODEL_NAME, data_dir, port, POLICY, first_step=11, steps=steps)
        serve.shutdown()

    summary = {
        "run id": record.mlflow_run_id,
        "run dir": record.run_dir,
        "model version": f"{version.name}@{version.version}"
        + (" (@champion)" if champion else " (gate refused)"),
        "accuracy (it_desk test)": f"{result.headline:.3f}",
        "ECE (calibrated)": f"{result.flat_metrics().get('eval/ece', float('nan')):.3f}",
        "contamination": f"{(result.leakage or {}).get('contamination', float('nan')):.3f}",
        "model card": registry.client.get_model_version(version.name, version.version).tags.get(
            "hybridft.model_card", ""
        ),
        "endpoint": url,
        "answered by": reply.model + " / " + (reply.system_fingerprint or ""),
        "MLflow store": record.tracking_uri,
        "decision report": report_page or "(skipped: --no-sweep)",
        **{f"loop: {k}": v for k, v in loop.items()},
        "total time": f"{time.perf_counter() - t_start:.0f}s",
    }
    table = Table(title="hybridft demo", show_header=False)
    for k, v in summary.items():
        table.add_row(k, str(v))
    console.print(table)
    return summary
