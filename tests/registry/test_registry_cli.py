"""The governance commands as a user runs them: gate, approve, promote (audited), role refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hybridft.registry.access import User
from hybridft.registry.catalog import register_dataset, review_dataset

FP = "sha256:" + "ab" * 32
GOOD = {"eval/score": 0.9, "eval/ece": 0.05, "eval/contamination": 0.0}


def cli(registry, tmp_path, user: str, roles: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HYBRIDFT_USER": user,
        "HYBRIDFT_ROLES": roles,
        "HYBRIDFT_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
    }
    return subprocess.run(
        [sys.executable, "-m", "hybridft.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_gate_approve_promote_through_the_cli(registry, make_version, tmp_path) -> None:
    audit = tmp_path / "audit.jsonl"
    register_dataset(registry, FP, name="support", user=User("tom", ("trainer",)), audit_path=audit)
    review_dataset(registry, FP, "approved", reviewer=User("ann", ("approver",)), audit_path=audit)
    version = make_version("m", GOOD, fingerprints={"support": FP})

    gate = cli(registry, tmp_path, "rex", "releaser", "gate", f"m@{version}")
    assert gate.returncode == 1  # no approval yet
    assert "FAIL" in gate.stdout and "approval" in gate.stdout.lower()

    refused = cli(registry, tmp_path, "vic", "viewer", "approve", f"m@{version}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "vic" in refused.stderr and "approver" in refused.stderr

    ok = cli(registry, tmp_path, "ann", "approver", "approve", f"m@{version}", "--comment", "ok")
    assert ok.returncode == 0, ok.stderr
    assert cli(registry, tmp_path, "rex", "releaser", "gate", f"m@{version}").returncode == 0

    moved = cli(
        registry,
        tmp_path,
        "rex",
        "releaser",
        "promote",
        f"m@{version}",
        "--alias",
        "champion",
        "--reason",
        "better",
    )
    assert moved.returncode == 0, moved.stderr + moved.stdout
    assert registry.resolve("m@champion").version == version
    records = [json.loads(x) for x in audit.read_text().splitlines()]
    promotions = [r for r in records if r["action"] == "promote"]
    assert promotions[-1]["outcome"] == "ok" and promotions[-1]["who"] == "rex"
    assert any(r["outcome"] == "refused" and r["who"] == "vic" for r in records)
