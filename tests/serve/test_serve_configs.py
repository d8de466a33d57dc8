"""Every shipped file in serve/ parses: canary specs, Serve config files, the dashboard."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from hybridft.errors import UserError
from hybridft.serve.canary import load_canary_spec

SERVE = Path(__file__).resolve().parents[2] / "serve"


def test_canary_spec_parses_and_reports_bad_keys(tmp_path):
    spec = load_canary_spec(SERVE / "canary.yaml")
    assert spec.schedule.step_weight <= spec.schedule.max_weight
    bad = tmp_path / "canary.yaml"
    bad.write_text("model: m\nschedule:\n  step_weight: 0.6\n  max_weigth: 0.5\n")
    with pytest.raises(UserError, match=r"canary.yaml:4.*max_weigth"):
        load_canary_spec(bad)


@pytest.mark.parametrize("path", sorted(SERVE.glob("*.yaml")), ids=lambda p: p.name)
def test_serve_config_files_validate_against_ray_serve(path):
    data = yaml.safe_load(path.read_text())
    if "applications" not in data:
        return  # a canary spec, checked above
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(data)
    prefixes = [a.route_prefix for a in config.applications if a.route_prefix]
    assert len(prefixes) == len(set(prefixes))
    for app in config.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_classification_tasks_come_from_the_versions_eval_json(registry, tmp_path):
    """`{"task": T}` requests find T's labels and temperature in the version's logged eval.json."""
    from hybridft.serve.endpoint import classification_tasks

    run_id = registry.start_run("r", tags={"hybridft.kind": "train"})
    doc = {"tasks": {"it_desk": {"calibration": {"labels": ["network high", "hardware low"],
                                                 "temperature": 1.7}},
                     "gen": {"calibration": None}}}  # fmt: skip
    registry.log_dict(run_id, doc, "eval.json")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    source = registry.log_dir(run_id, model_dir, "model")
    registry.end_run(run_id)
    ref = registry.resolve(f"desk@{registry.register('desk', run_id, source, {}).version}")
    assert classification_tasks(registry, ref) == {
        "it_desk": {"labels": ["network high", "hardware low"], "temperature": 1.7}
    }
    bare = registry.start_run("bare")
    source = registry.log_dir(bare, model_dir, "model")
    registry.end_run(bare)
    ref = registry.resolve(f"desk@{registry.register('desk', bare, source, {}).version}")
    assert classification_tasks(registry, ref) == {}
