"""What a training run and its evaluation leave in MLflow, and how a run becomes a model version.

A run directory holds ``run.json`` (MLflow run id, tracking URI, model dir, fingerprints): the next
stage reads that artifact, never the previous stage's Python objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridft.errors import UserError
from hybridft.model import read_base_info
from hybridft.model.hf import weights_digest
from hybridft.registry.approvals import REGISTERED_BY, TRAINED_BY
from hybridft.registry.client import (
    WEIGHTS_TAG,
    ModelRef,
    Registry,
    flatten,
    git_commit,
    package_versions,
    spec_hash,
)
from hybridft.specs import JobSpec

RUN_FILE = "run.json"


@dataclass
class RunRecord:
    """The hand-off file of a run directory."""

    run_name: str
    run_dir: str
    mlflow_run_id: str
    tracking_uri: str
    model_dir: str
    base_dir: str
    spec_file: str
    spec_sha256: str
    fingerprints: dict[str, str]
    stage_dirs: dict[str, str]
    git_commit: str
    seed: int

    def save(self) -> Path:
        path = Path(self.run_dir) / RUN_FILE
        path.write_text(json.dumps(self.__dict__, indent=2))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: not a hybridft run directory (no {RUN_FILE})")
        return cls(**json.loads(path.read_text()))


def log_train_run(
    registry: Registry, spec: JobSpec, result: Any, trained_by: str = ""
) -> RunRecord:
    """Log a finished training run: flattened spec, per-step metrics, mixture, fingerprints, model.

    ``trained_by`` (the user who ran it) becomes the run tag ``hybridft.trained_by``: the
    version registered from it carries it, and that user may not approve the version.
    """
    spec_json = spec.model_dump_json()
    commit = git_commit()
    run_id = registry.start_run(
        result.run_name,
        tags={
            **({TRAINED_BY: trained_by} if trained_by else {}),
            "hybridft.kind": "train",
            "hybridft.job": spec.name,
            "hybridft.spec_file": spec.source_file,
            "hybridft.git_commit": commit,
            "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        },
    )
    registry.log_params(run_id, flatten(json.loads(spec_json)))
    for record in result.history:
        registry.log_metrics(
            run_id,
            {k: v for k, v in record.items() if k not in ("step", "stage_index")},
            step=int(record["global_step"]),
        )
    registry.log_metrics(run_id, {"wall_s": result.wall_s})
    registry.log_dict(run_id, result.mixture, "mixture.json")
    registry.log_dict(run_id, result.fingerprints, "fingerprints.json")
    registry.log_dict(run_id, json.loads(spec_json), "spec.json")
    registry.log_dict(run_id, package_versions(), "packages.json")
    registry.set_tags(
        run_id, {f"hybridft.fingerprint.{k}": v for k, v in result.fingerprints.items()}
    )
    chain = stage_chain(result, spec)
    registry.log_dict(run_id, chain, "lineage.json")
    registry.set_tags(run_id, {"hybridft.stage_chain": " -> ".join(c["name"] for c in chain)})
    for stage, path in result.stage_dirs.items():
        if stage != chain[-1]["name"]:  # the last stage's model is logged as "model" below
            registry.log_dir(run_id, path, f"stages/{stage}/model")
    registry.log_dir(run_id, result.model_dir, "model")
    record = RunRecord(
        run_name=result.run_name,
        run_dir=str(result.run_dir),
        mlflow_run_id=run_id,
        tracking_uri=registry.tracking_uri,
        model_dir=str(result.model_dir),
        base_dir=str(result.base_dir),
        spec_file=spec.source_file,
        spec_sha256=spec_hash(spec_json),
        fingerprints=result.fingerprints,
        stage_dirs={k: str(v) for k, v in result.stage_dirs.items()},
        git_commit=commit,
        seed=spec.seed,
    )
    record.save()
    registry.end_run(run_id)
    return record


model_digest = weights_digest  # the registry's name for it


def stage_chain(result: Any, spec: JobSpec) -> list[dict[str, Any]]:
    """(corpus ->) base -> stage 1 -> stage 2 ...: each model with its parent, weights digest and
    data; a pretrained base names the general corpus it was built from (``base.json``)."""
    built = read_base_info(result.base_dir) or {}
    chain: list[dict[str, Any]] = [
        {
            "name": "base",
            "parent": None,
            "path": str(result.base_dir),
            "weights_sha256": model_digest(result.base_dir),
            "model_base": spec.model.base,
            "corpus": built.get("corpus"),
            "recipe": built.get("recipe"),
        }
    ]
    for stage in spec.stages:
        path = result.stage_dirs.get(stage.name)
        chain.append(
            {
                "name": stage.name,
                "parent": chain[-1]["name"],
                "path": str(path) if path else None,
                "weights_sha256": model_digest(path) if path else None,
                "sources": {m.source: result.fingerprints.get(m.source) for m in stage.mix},
                "realised_mixture": result.mixture.get(stage.name, {}),
            }
        )
    return chain


def log_eval(registry: Registry, record: RunRecord, result: Any, eval_path: Path) -> None:
    registry.log_metrics(record.mlflow_run_id, result.flat_metrics())
    registry.client.log_artifact(record.mlflow_run_id, str(eval_path))


def register_run(
    registry: Registry, record: RunRecord, model_name: str, registered_by: str = ""
) -> ModelRef:
    """A model version whose tags carry its lineage (run, spec, commit, fingerprints, parent) and
    its authors: who trained the run (its ``hybridft.trained_by``) and ``registered_by``."""
    run = registry.client.get_run(record.mlflow_run_id)
    score = run.data.metrics.get("eval/score")
    authors = {TRAINED_BY: run.data.tags.get(TRAINED_BY, ""), REGISTERED_BY: registered_by}
    tags = {
        **{k: v for k, v in authors.items() if v},
        "hybridft.run_name": record.run_name,
        "hybridft.spec_sha256": record.spec_sha256,
        "hybridft.git_commit": record.git_commit,
        "hybridft.parent": record.base_dir,
        "hybridft.seed": str(record.seed),
        # what a download of this version is verified against (Registry.download)
        WEIGHTS_TAG: model_digest(record.model_dir),
        **{f"hybridft.fingerprint.{k}": v for k, v in record.fingerprints.items()},
    }
    if score is not None:
        tags["hybridft.eval_score"] = f"{score:.4f}"
    source = f"{run.info.artifact_uri}/model"
    return registry.register(
        model_name, record.mlflow_run_id, source, tags, description=f"run {record.run_name}"
    )
