"""``hybridft monitor`` over a traffic log: drift and KPI alerts, the retraining trigger, damaged
partitions skipped, and the status page looked at in headless Chromium."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from browser import has_data, inline_pngs, screenshot
from typer.testing import CliRunner

from hybridft.cli import app
from hybridft.monitor.policy import load_monitor_policy
from hybridft.monitor.status import gather_status
from hybridft.serve.canary import CanaryStore, ServePaths
from hybridft.serve.review import ReviewQueue
from hybridft.telemetry.traffic_log import TrafficLog

NOW = 1_780_000_000.0
LABELS = ["network", "hardware", "identity", "billing"]
BASE_MIX = [0.4, 0.3, 0.2, 0.1]
SHIFTED = [0.15, 0.3, 0.2, 0.35]


def _policy(tmp: Path) -> Path:
    doc = {
        "model": "desk",
        "serve_dir": str(tmp / "serve"),
        "drift": {"reference_requests": 300, "current_window_s": 7200, "min_psi": 0.1},
        "kpis": {"bucket_s": 600, "baseline_buckets": 4, "lookback_s": 6 * 3600,
                 "limits": {"task_success": {"min": 0.7}, "latency_p95_s": {"max": 1.0}}},
        "retrain": {"job": "jobs/demo.yaml", "on_alerts": ["drift.intent"]},
    }  # fmt: skip
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _traffic(tmp: Path, shift: bool, seed: int = 0, now: float = NOW) -> TrafficLog:
    """300 reference answers 5-3 h before ``now``, then 500 current ones in the last 2 h."""
    rng = np.random.default_rng(seed)
    log = TrafficLog(ServePaths(tmp / "serve").traffic_log)
    CanaryStore(ServePaths(tmp / "serve").state).init("desk", "1")
    events = []
    times = np.concatenate(
        [np.linspace(now - 5 * 3600, now - 3 * 3600, 300), np.linspace(now - 7000, now - 1, 500)]
    )
    for i, ts in enumerate(times):
        current = i >= 300
        mix = SHIFTED if (shift and current) else BASE_MIX
        label = LABELS[rng.choice(4, p=mix)]
        probs = {lab: 0.1 for lab in LABELS} | {label: 0.7}
        success = bool(rng.random() < (0.5 if (shift and ts > now - 1800) else 0.9))
        rid = f"req-{i}"
        events.append(
            log.event("request", request_id=rid, ts=float(ts), model="desk", version="1",
                      arm="primary", status_code=200, latency_s=float(rng.uniform(0.1, 0.3)),
                      prompt_tokens=int(rng.integers(8, 30)), completion_tokens=2,
                      predicted_label=label, confidence=0.7, label_probs=probs,
                      flagged=False, prompt="Ticket text", completion=label)
        )  # fmt: skip
        events.append(
            log.event("feedback", request_id=rid, ts=float(ts) + 5, model="desk", version="1",
                      success=success, feedback_source="user")
        )  # fmt: skip
    log.append(events)
    return log


def test_a_shifted_intent_mix_and_falling_success_raise_alerts_and_the_trigger(tmp_path):
    _traffic(tmp_path, shift=True)
    policy = load_monitor_policy(_policy(tmp_path))
    data = gather_status(policy, None, now=NOW)
    assert [v["version"] for v in data.versions] == ["1"] and data.versions[0]["requests"] == 800
    by_monitor = {d.monitor: d for d in data.drift}
    assert set(by_monitor) == {"intent", "input_length", "prediction"}
    intent = by_monitor["intent"]
    assert intent.drifted and intent.n_reference == 300 and intent.n_current == 500
    assert not by_monitor["input_length"].drifted  # lengths were drawn from one distribution
    assert not by_monitor["prediction"].drifted  # confidence did not move
    monitors = {a.monitor for a in data.alerts}
    assert "drift.intent" in monitors
    assert any(m.endswith("task_success") for m in monitors), monitors
    assert not any(m.endswith("latency_p95_s") for m in monitors)
    success = next(s for s in data.kpis if s.name == "task_success")
    assert sum(success.counts) == 800 and success.values[-1] < 0.7
    assert data.retrain is not None and data.retrain["fire"]
    assert any("drift.intent" in r for r in data.retrain["reasons"])


def test_unshifted_traffic_raises_no_alert(tmp_path):
    _traffic(tmp_path, shift=False, seed=1)
    data = gather_status(load_monitor_policy(_policy(tmp_path)), None, now=NOW)
    assert len(data.drift) == 3 and not any(d.drifted for d in data.drift)
    assert not [a for a in data.alerts if a.severity == "critical"], data.alerts
    assert data.retrain == {"fire": False, "reasons": []}


def test_monitor_cli_skips_a_corrupt_partition_and_renders_the_page(tmp_path):
    now = time.time()  # the command reads the clock
    log = _traffic(tmp_path, shift=True, now=now)
    ReviewQueue(ServePaths(tmp_path / "serve").review).enqueue(
        "req-1", "1", "desk", "Ticket", "network", 0.3, 0.5
    )
    # a second version's partition, truncated mid-write
    bad = log.append(
        [log.event("request", request_id="x", ts=now - 60, model="desk", version="2")]
    )[0]
    bad.write_bytes(bad.read_bytes()[:40])
    page = tmp_path / "status.html"
    result = CliRunner().invoke(
        app,
        ["monitor", str(_policy(tmp_path)), "--html", str(page), "--json",
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert any(bad.name in p and "skipped" in p for p in doc["problems"])
    assert doc["versions"][0]["requests"] == 800  # the good partitions were all read
    assert doc["review"] == {"open": 1, "resolved": 0}
    html = page.read_text()
    assert bad.name in html and "drift.intent" in html
    plots = inline_pngs(html)
    # canary weight (no history: no plot), 3 drift bar charts, 4 KPI series
    assert len(plots) == 7 and all(has_data(p) for p in plots)
    shot = screenshot(page, tmp_path / "status.png")  # kept in the test's output directory
    assert has_data(shot)


def test_monitor_policy_errors_name_file_line_and_key(tmp_path):
    path = tmp_path / "monitor.yaml"
    path.write_text("model: desk\nkpis:\n  limits:\n    task_success: {min: 0.7, max: 0.9}\n")
    with pytest.raises(Exception, match=r"monitor.yaml:4.*kpis.limits.task_success"):
        load_monitor_policy(path)
    path.write_text("model: desk\ndrift:\n  alpah: 0.1\n")
    with pytest.raises(Exception, match=r"monitor.yaml:3.*drift.alpah"):
        load_monitor_policy(path)


def test_a_shift_late_in_a_long_window_is_caught_in_the_latest_answers(tmp_path):
    """1,000 unshifted answers before the shift must not average it away."""
    rng = np.random.default_rng(3)
    log = TrafficLog(ServePaths(tmp_path / "serve").traffic_log)
    CanaryStore(ServePaths(tmp_path / "serve").state).init("desk", "1")
    n = 300 + 1000 + 250
    events = []
    for i, ts in enumerate(np.linspace(NOW - 3000, NOW - 1, n)):
        label = LABELS[rng.choice(4, p=SHIFTED if i >= 1300 else BASE_MIX)]
        events.append(
            log.event("request", request_id=f"r{i}", ts=float(ts), model="desk", version="1",
                      arm="primary", status_code=200, latency_s=0.2, prompt_tokens=12,
                      confidence=0.7, label_probs={lab: 0.1 for lab in LABELS} | {label: 0.7})
        )  # fmt: skip
    log.append(events)
    doc = yaml.safe_load(_policy(tmp_path).read_text())
    doc["drift"]["current_requests"] = 300
    (tmp_path / "late.yaml").write_text(yaml.safe_dump(doc))
    data = gather_status(load_monitor_policy(tmp_path / "late.yaml"), None, now=NOW)
    intent = next(d for d in data.drift if d.monitor == "intent")
    assert intent.n_current == 300 and intent.drifted
