"""A hostile user at the command line (the fixture is in conftest.py): dev mode off, the login account as the actor, a users file
only the test (the admin) writes, a real sqlite store, the real CLI (``hybridft.cli.main``, as
``hybridft`` runs it: one error line, exit codes), and the audit log read back after each try."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybridft.registry.access import os_user
from hybridft.registry.audit import AuditRecord, read_audit
from hybridft.registry.client import Registry

# main() sets these when absent: listed so that each call leaves the environment as it was
_MAIN_SETS = (
    "MLFLOW_LOGGING_LEVEL",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    "HF_HUB_DISABLE_PROGRESS_BARS",
)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        """The one error line (nothing after it, no traceback)."""
        assert "Traceback" not in self.out + self.err, self.err
        lines = [x for x in self.err.splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith(("error:", "refused:"))]
        assert len(errors) == 1 and lines[-1] == errors[0], self.err
        return errors[0]


@dataclass
class Hostile:
    """The acting login account (``me``) and what it can do to the store."""

    registry: Registry
    tmp: Path
    audit: Path
    users: Path
    monkeypatch: Any
    capsys: Any
    me: str = os_user()

    def roles(self, *roles: str) -> None:
        """The admin's users file: ``me`` holds ``roles`` (none: not listed, a viewer)."""
        doc = {"users": {self.me: list(roles)}} if roles else {"users": {}}
        self.users.write_text(yaml.safe_dump(doc))

    def cli(self, *args: str, env: dict[str, str | None] | None = None) -> Ran:
        """``hybridft ARGS`` with ``env`` added to (None: removed from) the environment."""
        from hybridft.cli import main

        with self.monkeypatch.context() as m:
            for key in _MAIN_SETS:
                m.delenv(key, raising=False)
            m.setenv("COLUMNS", "250")  # rich wraps at the terminal width; errors never wrap
            for key, value in (env or {}).items():
                if value is None:
                    m.delenv(key, raising=False)
                else:
                    m.setenv(key, value)
            m.setattr(sys, "argv", ["hybridft", *args])
            self.capsys.readouterr()
            with pytest.raises(SystemExit) as done:
                main()
            out, err = self.capsys.readouterr()
        return Ran(int(done.value.code or 0), out, err)

    def last_audit(self) -> AuditRecord:
        return read_audit(self.audit)[-1]

    def refused(
        self, ran: Ran, action: str, code: int = 2, dev_mode: bool = False
    ) -> tuple[str, AuditRecord]:
        """The one error line of a refusal, and its audit line (the last one written)."""
        assert ran.code == code, ran.err + ran.out
        line = ran.error_line()
        record = self.last_audit()
        assert (record.action, record.outcome) == (action, "refused"), record
        assert record.dev_mode is dev_mode  # written while HYBRIDFT_DEV_MODE was on, or not
        return line, record

    def policy(self, name: str, **fields: Any) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **fields}))
        return path

    def run_dir(self, metrics: dict[str, float], trained_by: str) -> Path:
        """A run directory as ``hybridft train`` + ``eval`` leave it (a real MLflow run)."""
        reg = self.registry
        run_id = reg.start_run(
            "run", tags={"hybridft.kind": "train", "hybridft.trained_by": trained_by}
        )
        reg.log_metrics(run_id, metrics)
        reg.end_run(run_id)
        run_dir = self.tmp / f"run-{run_id[:8]}"
        (run_dir / "model").mkdir(parents=True)
        (run_dir / "model" / "config.json").write_text("{}")
        record = {
            "run_name": run_dir.name,
            "run_dir": str(run_dir),
            "mlflow_run_id": run_id,
            "tracking_uri": reg.tracking_uri,
            "model_dir": str(run_dir / "model"),
            "base_dir": "tiny",
            "spec_file": "job.yaml",
            "spec_sha256": "0" * 64,
            "fingerprints": {},
            "stage_dirs": {},
            "git_commit": "test",
            "seed": 0,
        }
        (run_dir / "run.json").write_text(json.dumps(record))
        return run_dir
