"""Train, then log: ``hybridft train`` (and retraining) as one step from a job spec to a run.

The one place where a training run and the registry meet: ``train.run`` knows nothing of MLflow,
and the registry knows nothing of Ray Train. Evaluation, registration and serving are their own
packages' (``evaluate.job``, ``registry.registration``, ``serve.launch``).
"""

from __future__ import annotations

from pathlib import Path

from hybridft.registry.access import current_user
from hybridft.registry.client import Registry
from hybridft.registry.data_approval import catalog_run_data, require_approved
from hybridft.registry.tracking import RunRecord, log_train_run
from hybridft.specs import load_job
from hybridft.train.run import run


def train_and_log(
    spec_path: str | Path,
    run_name: str | None = None,
    resume: bool = False,
    tracking_uri: str | None = None,
    output_dir: str | None = None,
    require_approved_data: bool = False,
) -> RunRecord:
    """Load the spec, train on Ray Train, log the run (and model) to MLflow.

    With ``require_approved_data``, every dataset the run would train on is catalogued (as a
    draft when new) and training is refused unless each one is approved in the data catalog.
    """
    spec = load_job(spec_path)
    registry = Registry(tracking_uri)  # opened first: a bad URI fails before training
    # who trains, established first too: refused credentials or a declared identity outside dev
    # mode fail now, not after the run
    who = current_user(tracking_uri=registry.tracking_uri)
    gate = None
    if require_approved_data:
        gate = lambda fps: require_approved(registry, spec, fps, who)  # noqa: E731
    result = run(spec, run_name=run_name, resume=resume, output_dir=output_dir, data_gate=gate)
    record = log_train_run(registry, spec, result, trained_by=who.name)
    catalog_run_data(registry, spec, record.fingerprints, who)
    return record
