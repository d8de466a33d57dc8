"""Registry fixtures (a fresh MLflow sqlite store per test, copied from one template: creating
the tables is slow). Loaded by the root conftest so registry and serve tests share them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hybridft.registry.client import Registry


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Registry(f"sqlite:///{db}").client.search_experiments()  # creates every table once
    return db


@pytest.fixture
def registry(template_db, tmp_path, monkeypatch) -> Registry:
    for var in ("HYBRIDFT_USER", "HYBRIDFT_ROLES", "HYBRIDFT_AUDIT_LOG", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HYBRIDFT_USERS_FILE", str(tmp_path / "no-users.yaml"))
    # NullPool: no pooled sqlite connections, so forked race workers share nothing with us.
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(template_db, store / "mlflow.db")
    return Registry(f"sqlite:///{store / 'mlflow.db'}")


@pytest.fixture
def make_version(registry, tmp_path):
    """``make_version(name, metrics, fingerprints=..., tags=...)`` -> a new version number."""

    def make(
        name: str,
        metrics: dict[str, float],
        fingerprints: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        return _make_version(registry, name, metrics, fingerprints, tags, tmp_path)

    return make


def _make_version(
    registry: Registry,
    name: str,
    metrics: dict[str, float],
    fingerprints: dict[str, str] | None,
    tags: dict[str, str] | None,
    tmp: Path,
) -> str:
    """A run with metrics and a fake model dir, registered as a new version of ``name``."""
    run_id = registry.start_run(f"{name}-run", tags={"hybridft.kind": "train"})
    registry.log_metrics(run_id, metrics)
    model_dir = tmp / f"model-{run_id}"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    source = registry.log_dir(run_id, model_dir, "model")
    registry.end_run(run_id)
    version_tags = {f"hybridft.fingerprint.{k}": v for k, v in (fingerprints or {}).items()}
    return registry.register(name, run_id, source, {**version_tags, **(tags or {})}).version
