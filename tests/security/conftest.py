"""The ``hostile`` fixture: see hostile.py."""

from __future__ import annotations

import os

import pytest
from hostile import Hostile


@pytest.fixture
def hostile(registry, tmp_path, monkeypatch, capsys) -> Hostile:
    for var in ("HYBRIDFT_DEV_MODE", "HYBRIDFT_USER", "HYBRIDFT_ROLES"):
        monkeypatch.delenv(var, raising=False)
    users, audit = tmp_path / "users.yaml", tmp_path / "audit.jsonl"
    monkeypatch.setenv("HYBRIDFT_USERS_FILE", str(users))
    monkeypatch.setenv("HYBRIDFT_AUDIT_LOG", str(audit))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.tracking_uri)
    who = Hostile(registry, tmp_path, audit, users, monkeypatch, capsys)
    who.roles()
    assert os.environ.get("HYBRIDFT_DEV_MODE") is None
    return who
