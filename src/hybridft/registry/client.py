"""The one MLflow wrapper: explicit run ids through ``MlflowClient``, never the fluent global run.

Default store: sqlite in the project folder (``.hybridft/mlflow.db``) with artifacts beside it; any
tracking URI works (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridft.errors import UserError
from hybridft.model.hf import weights_digest

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

DEFAULT_HOME = Path(".hybridft")
EXPERIMENT = "hybridft"
PACKAGES = ("hybridft", "torch", "transformers", "ray", "peft", "mlflow", "optuna")


def default_tracking_uri() -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(DEFAULT_HOME / 'mlflow.db').resolve()}"
    )


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec -> ``{"stages.0.lr": "0.0003", ...}`` for MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


@dataclass
class ModelRef:
    name: str
    version: str
    source: str
    run_id: str
    tags: dict[str, str]

    @classmethod
    def of(cls, mv: ModelVersion) -> ModelRef:
        """The reference to an MLflow model version, which must have a source and a run."""
        if mv.source is None or mv.run_id is None:
            raise UserError(f"model {mv.name} version {mv.version}: no source or run recorded")
        return cls(mv.name, str(mv.version), mv.source, mv.run_id, dict(mv.tags))


class Registry:
    """Runs, artifacts, model versions and aliases in one MLflow store."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    # -- runs -----------------------------------------------------------------------------
    def experiment_id(self, name: str = EXPERIMENT) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts" / name).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(self, run_name: str, tags: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=tags or {})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k.replace("@", "_"), float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    def log_dir(self, run_id: str, path: str | Path, artifact_path: str) -> str:
        self.client.log_artifacts(run_id, str(path), artifact_path)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- models ---------------------------------------------------------------------------
    def register(
        self, name: str, run_id: str, source: str, tags: dict[str, str], description: str = ""
    ) -> ModelRef:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:
            pass  # already registered
        mv = self.client.create_model_version(
            name, source=source, run_id=run_id, tags=tags, description=description
        )
        return ModelRef.of(mv)

    def model_version(self, name: str, version: str) -> ModelVersion:
        """One model version, or a one-line error when there is no such version."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            raise UserError(f"{name}@{version}: no such model version") from None

    def resolve(self, ref: str) -> ModelRef:
        """``name@alias``, ``name@3``, ``name/3`` or ``models:/name@alias`` -> a model version."""
        from mlflow.exceptions import MlflowException

        text = ref.removeprefix("models:/")
        name, sep, which = text.replace("/", "@", 1).partition("@")
        if not name or not sep or not which:
            raise UserError(f"{ref}: expected NAME@VERSION or NAME@ALIAS")
        try:
            if which.isdigit():
                mv = self.client.get_model_version(name, which)
            else:
                mv = self.client.get_model_version_by_alias(name, which)
        except MlflowException:
            raise UserError(
                f"{ref}: no such model version or alias in {self.tracking_uri}"
            ) from None
        return ModelRef.of(mv)

    def download(self, ref: ModelRef, dest: str | Path) -> Path:
        """A version's model directory at ``dest``: downloaded beside it, verified (its weights'
        sha256 against the version's ``hybridft.weights_sha256`` tag when registered with one;
        a config and safetensors weights in any case), then renamed into place with a record of
        its files. Reused only while every recorded file is there at its recorded size: a
        download killed half-way, or a file truncated since, is fetched again."""
        import mlflow.artifacts  # heavy: MLflow's artifact stack

        dest = Path(dest)
        if _download_intact(dest):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            got = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=ref.source, dst_path=str(tmp), tracking_uri=self.tracking_uri
                )
            )
            model = got if (got / "config.json").is_file() else tmp
            _verify_download(ref, model)
            sizes = {
                str(f.relative_to(model)): f.stat().st_size for f in model.rglob("*") if f.is_file()
            }
            (model / DOWNLOAD_RECORD).write_text(json.dumps(sizes, sort_keys=True))
            shutil.rmtree(dest, ignore_errors=True)  # a partial or stale copy
            os.replace(model, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)


DOWNLOAD_RECORD = ".hybridft-download.json"  # a verified download's files and their sizes
WEIGHTS_TAG = "hybridft.weights_sha256"


def _download_intact(dest: Path) -> bool:
    try:
        sizes = json.loads((dest / DOWNLOAD_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return all(
        (dest / name).is_file() and (dest / name).stat().st_size == size
        for name, size in sizes.items()
    )


def _verify_download(ref: ModelRef, model: Path) -> None:
    where = f"{ref.name} version {ref.version} ({ref.source})"
    if not (model / "config.json").is_file() or not any(model.glob("*.safetensors")):
        raise UserError(f"{where}: the download has no config.json or safetensors weights")
    expected = ref.tags.get(WEIGHTS_TAG)
    if expected and weights_digest(model) != expected:
        raise UserError(f"{where}: the downloaded weights do not match the registered sha256")


def spec_hash(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()
