"""``make demo-full``: the loop after the demo's first steps.

canary of the report's recommendation against the champion (live traffic, feedback from the
gold labels, the controller deciding) -> drift injected into the traffic -> monitor alerts and
the status page -> the flagged answers reviewed -> retrain (blocked until the reviewed data is
approved, then trained from the champion, evaluated, gated) -> a new canary -> one live answer of
the new version traced back to the live requests its training rows came from.

Users (policies/users.yaml, played in dev mode): carol reviews and approves, dave releases and
runs retraining (trainer and releaser).
"""

from __future__ import annotations

import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from hybridft.demo.steps import acting_as, print_step
from hybridft.demo.synth import synthesize
from hybridft.errors import UserError
from hybridft.monitor.policy import load_monitor_policy
from hybridft.monitor.retrain import retrain
from hybridft.monitor.status import alerts_table, gather_status
from hybridft.monitor.status_page import render_status
from hybridft.monitor.trace import trace_request, trace_tree
from hybridft.registry.access import current_user
from hybridft.registry.approvals import approve
from hybridft.registry.catalog import review_dataset
from hybridft.registry.client import Registry
from hybridft.registry.gates import promote
from hybridft.registry.policy import load_policy
from hybridft.release.controller import CanaryController
from hybridft.release.probes import Prober, load_probe_rows
from hybridft.runtime import ensure_ray
from hybridft.serve.canary import CanarySpec, CanaryStore, ServePaths
from hybridft.serve.endpoint import ServeDeployer, served_engine, start_endpoint
from hybridft.serve.keys import KeyStore
from hybridft.serve.review import ReviewQueue

MONITOR_POLICY = Path("policies/monitor.yaml")
SERVE_DIR = Path(".hybridft/serve")
DEMO_OWNED = ".made-by-hybridft-demo"  # in a serve folder the demo created (and may replace)


def fresh_demo_root(root: Path) -> None:
    """An empty ``root`` for the demo's endpoint. A folder the demo made before is replaced; one
    it did not make (a user's keys, traffic log, review queue) is never deleted: the demo asks
    on a terminal and stops otherwise."""
    import shutil

    if root.exists() and any(root.iterdir()):
        if not (root / DEMO_OWNED).is_file():
            question = f"{root} holds serving state the demo did not create; delete it?"
            if not (sys.stdin.isatty() and typer.confirm(question, default=False)):
                raise UserError(
                    f"{root}: serving state the demo did not create (keys, traffic log, review "
                    "queue); move it away to run `demo --full`, the demo never deletes it"
                )
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_OWNED).write_text("the demo replaces this folder on its next run\n")


TASK = "it_desk"


def _canary_spec(model: str) -> Any:
    return CanarySpec.model_validate(
        {
            "model": model,
            "schedule": {"interval_s": 1, "step_weight": 0.25, "max_weight": 0.5,
                         "failed_checks_limit": 2, "max_intervals": 12},
            "checks": {"min_requests": 15, "max_p95_latency_ratio": 3.0},
            "success": {"margin": 0.1, "min_samples": 30},
            "review": {"confidence_threshold": 0.95},
        }
    )  # fmt: skip


class Traffic:
    """Users of the endpoint: it_desk tickets, feedback from the gold label."""

    def __init__(
        self, base: str, key: str, model: str, rows: list[dict[str, Any]], seed: int = 0
    ) -> None:
        self.base, self.model, self.rows = base, model, rows
        self.headers = {"authorization": f"Bearer {key}"}
        self.rng = random.Random(seed)
        self.client = httpx.Client(timeout=120, headers=self.headers)
        self.answers: list[dict[str, Any]] = []

    def send(self, rows: list[dict[str, Any]], workers: int = 8, force: str = "") -> list[dict]:
        with ThreadPoolExecutor(workers) as pool:
            out = list(pool.map(lambda r: self._one(r, force), rows))
        self.answers.extend(out)
        return out

    def sample(self, n: int, weight: Any = None) -> list[dict[str, Any]]:
        weights = [weight(r) for r in self.rows] if weight else None
        return self.rng.choices(self.rows, weights=weights, k=n)

    def _one(self, row: dict[str, Any], force: str) -> dict[str, Any]:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": row["prompt"]}],
            "max_tokens": 4,
            "temperature": 0,
            "task": TASK,
            "user": f"user-{self.rng.randrange(200)}",
        }
        headers = {"x-hybridft-version": force} if force else {}
        reply = self.client.post(f"{self.base}/chat/completions", json=body, headers=headers)
        ext = reply.json().get("hybridft", {}) if reply.status_code == 200 else {}
        success = ext.get("label") == row["completion"]
        if ext.get("request_id"):
            self.client.post(
                f"{self.base}/feedback", json={"request_id": ext["request_id"], "success": success}
            )
        return {"status": reply.status_code, "version": ext.get("version"), "success": success,
                "request_id": ext.get("request_id"), "gold": row["completion"],
                "flagged": ext.get("flagged_for_review", False)}  # fmt: skip


def live_tickets(out: Path) -> list[dict[str, Any]]:
    """The users' tickets: new it_desk rows (generator seed 1), not the demo's eval rows.

    Some still overlap the evaluation set (templated text); retraining holds those out.
    """
    synthesize(out, seed=1, n_train=60, n_validation=5, n_test=400, n_instruction_train=10,
               n_instruction_validation=2, n_instruction_test=2)  # fmt: skip
    return [json.loads(x) for x in (out / "sft/it_desk/test.jsonl").read_text().splitlines()]


def run_loop(
    console: Console,
    model: str,
    data_dir: Path,
    port: int,
    policy_path: Path,
    first_step: int,
    steps: int,
) -> dict[str, str]:
    """The loop, printed as steps ``first_step``.. of ``steps``; returns summary lines."""
    registry = Registry()
    gates = load_policy(policy_path)
    monitor = load_monitor_policy(MONITOR_POLICY)
    n = first_step
    rows = live_tickets(data_dir.parent / "demo-live")
    champion = registry.resolve(f"{model}@champion").version
    latest = max(int(v.version) for v in registry.client.search_model_versions(f"name='{model}'"))
    summary: dict[str, str] = {}

    print_step(console, n, steps, f"serve {model}@champion (v{champion}) behind the canary router")
    paths = ServePaths(SERVE_DIR)
    fresh_demo_root(paths.root)  # a fresh endpoint per demo run: state, keys, logs
    ensure_ray()
    spec = _canary_spec(model)
    deployer = ServeDeployer(registry, model, num_cpus=0.4)
    url = start_endpoint(spec, paths.root, registry, port=port, deployer=deployer, router_cpus=0.2)
    traffic = Traffic(url, KeyStore(paths.keys).create("demo-users"), model, rows)
    engine = served_engine(model, champion)
    console.print(
        f"endpoint {url} (v{champion} on the {engine} engine); traffic log {paths.traffic_log}"
    )
    summary["engine"] = f"the versions answered on the {engine} engine (serve config: auto)"

    n += 1
    candidate = str(latest)
    what = (
        f"{model}@{candidate} (the report's recommendation) vs v{champion}"
        if candidate != champion
        else "none: the report registered no recommendation"
    )
    print_step(console, n, steps, f"canary: {what}")
    with acting_as("dave"):
        controller = CanaryController(spec, paths, registry, gates, current_user(), deployer)
    if candidate != champion:
        with acting_as("carol"):
            approve(registry, model, candidate, comment="report recommendation reviewed")
        with acting_as("dave"):
            move = promote(registry, gates, model, candidate, "canary", reason="report")
        console.print(f"@canary -> v{candidate}: {'moved' if move.moved else move.reason}",
                      highlight=False)  # fmt: skip
        if move.moved:
            decision = _canary_rounds(console, controller, traffic, rounds=16, per_round=64)
            summary["canary"] = f"v{candidate}: {decision}"
        else:
            summary["canary"] = f"v{candidate}: the gates refused @canary"
    else:
        summary["canary"] = "skipped (the report recommended nothing)"
    primary = CanaryStore(paths.state).read().primary

    n += 1
    print_step(console, n, steps, "drift injected: long tickets for one team flood in")
    traffic.send(traffic.sample(200))  # the primary's usual traffic: its reference window
    lengths = sorted(len(r["prompt"]) for r in rows)
    long = lengths[len(lengths) * 3 // 4]
    shifted = traffic.sample(
        260,
        weight=lambda r: (
            20.0 if len(r["prompt"]) >= long and "identity" in r["completion"] else 1.0
        ),
    )
    traffic.send(shifted)
    time.sleep(3)  # the router flushes its traffic log every 2 s
    status = gather_status(monitor, registry)
    table = Table(title=f"monitor: {len(status.alerts)} alert(s) on v{primary}")
    for col in ("severity", "monitor", "version", "message"):
        table.add_column(col, overflow="fold")
    for row in alerts_table(status.alerts):
        table.add_row(*row)
    console.print(table)
    page = render_status(status, Path(".hybridft/monitor/status.html"))
    console.print(f"status page: {page}")
    summary["alerts"] = ", ".join(sorted({a.monitor for a in status.alerts})) or "none"
    summary["status page"] = str(page)

    n += 1
    print_step(console, n, steps, "review: carol labels the flagged answers")
    queue = ReviewQueue(paths.review)
    gold = {a["request_id"]: a["gold"] for a in traffic.answers if a["request_id"]}
    resolved = 0
    for item in queue.list("open", limit=None):
        if item.request_id in gold:
            queue.resolve(item.request_id, gold[item.request_id], "carol", "demo review")
            resolved += 1
    console.print(f"{resolved} flagged answers labelled; queue {queue.counts()}")

    n += 1
    print_step(console, n, steps, "retrain on the reviewed data (approval first)")
    with acting_as("dave"):
        outcome = retrain(monitor, registry, alerts=status.alerts, force=not status.alerts,
                          on_event=lambda m: console.print(f"  {m}", highlight=False))  # fmt: skip
    if outcome.status == "awaiting_approval":
        with acting_as("carol"):
            for b in outcome.blocked:
                review_dataset(registry, b["fingerprint"], "approved", comment="reviewed rows")
                console.print(f"carol approved {b['source']} {b['fingerprint'][:19]}")
        with acting_as("dave"):
            outcome = retrain(monitor, registry, alerts=status.alerts, force=not status.alerts,
                              on_event=lambda m: console.print(f"  {m}", highlight=False))  # fmt: skip
    summary["retrain"] = f"{outcome.status}: {outcome.dataset.get('rows', 0)} reviewed rows" + (
        f" -> {model}@{outcome.version}" if outcome.version else ""
    )
    if outcome.status == "refused" and outcome.version:
        with acting_as("carol"):
            approve(registry, model, outcome.version, comment="retrained version reviewed")
        with acting_as("dave"):
            for alias in ("candidate", "canary"):
                move = promote(registry, gates, model, outcome.version, alias, reason="retrain")
                console.print(
                    f"@{alias} -> v{outcome.version}: {'moved' if move.moved else move.reason}"
                )
        summary["retrain"] = (  # the gate held the new version for an approval, as it should
            f"{outcome.dataset.get('rows', 0)} reviewed rows -> {model}@{outcome.version} "
            "(held by the gate until carol approved it)"
        )

    n += 1
    print_step(
        console,
        n,
        steps,
        "the new canary: traffic, labelled probes, the controller decides; a trace",
    )
    new = outcome.version or primary
    if outcome.version and CanaryStore(paths.state).read().primary != new:
        controller.prober = _prober(paths, url, model, controller.traffic, data_dir)
        decision = _canary_rounds(console, controller, traffic, rounds=20, per_round=48)
        summary["new canary"] = f"v{new}: {decision}"
    answered = [a for a in traffic.answers if a["version"] == new and a["request_id"]]
    if not answered:
        answered = traffic.send(traffic.sample(2), workers=2, force=new)
    rid = next((a["request_id"] for a in answered if a["request_id"]), None)
    time.sleep(3)
    if rid:
        console.print(trace_tree(trace_request(rid, paths.root, registry)), width=200)
        summary["traced request"] = rid
    summary["endpoint"] = url
    return summary


def _prober(paths: Any, url: str, model: str, feedback: Any, data_dir: Path) -> Any:
    """Labelled probes (the validation tickets) to both arms every interval."""
    rows = load_probe_rows(str(data_dir / "sft/it_desk/validation.jsonl"))
    key = KeyStore(paths.keys).create("canary-probes")
    return Prober(rows, url, key, model, feedback, per_interval=8, task=TASK)


def _canary_rounds(
    console: Console, controller: Any, traffic: Traffic, rounds: int, per_round: int
) -> str:
    """Traffic and controller ticks until the controller promotes or rolls back."""
    decision = controller.tick()  # the registry hook: @canary starts the canary
    console.print(f"controller: {decision.decision if decision else '-'}")
    for _ in range(rounds):
        answers = traffic.send(traffic.sample(per_round))
        by_version: dict[str, list[bool]] = {}
        for a in answers:
            by_version.setdefault(str(a["version"]), []).append(a["success"])
        decision = controller.tick()
        if decision is None:
            continue
        seen = ", ".join(f"v{v}: {sum(s)}/{len(s)} right" for v, s in sorted(by_version.items()))
        console.print(
            f"  {decision.decision:<8} weight {decision.weight:.2f}  [{seen}]  {decision.reason[:110]}",
            highlight=False,
        )
        if decision.decision in ("promote", "rollback"):
            return decision.decision
    return "no verdict in the demo's time (the canary keeps running)"
