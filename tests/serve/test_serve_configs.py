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
    from hybridft.serve.endpoint import check_serve_config

    check_serve_config(path)  # each model application's args against its builder's schema


def test_classification_tasks_come_from_the_versions_eval_json(registry, tmp_path):
    """`{"task": T}` requests find T's labels, temperature and label ending in the version's
    logged eval.json (an eval.json without the ending: the label is the whole answer)."""
    from hybridft.serve.endpoint import classification_tasks

    run_id = registry.start_run("r", tags={"hybridft.kind": "train"})
    doc = {"tasks": {"it_desk": {"calibration": {"labels": ["network high", "hardware low"],
                                                 "temperature": 1.7}},
                     "reply": {"calibration": {"labels": ["a", "b"], "temperature": 2.0,
                                               "label_end": "newline"}},
                     "gen": {"calibration": None}}}  # fmt: skip
    registry.log_dict(run_id, doc, "eval.json")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    source = registry.log_dir(run_id, model_dir, "model")
    registry.end_run(run_id)
    ref = registry.resolve(f"desk@{registry.register('desk', run_id, source, {}).version}")
    assert classification_tasks(registry, ref) == {
        "it_desk": {
            "labels": ["network high", "hardware low"],
            "temperature": 1.7,
            "label_end": "end_of_turn",
        },
        "reply": {"labels": ["a", "b"], "temperature": 2.0, "label_end": "newline"},
    }
    bare = registry.start_run("bare")
    source = registry.log_dir(bare, model_dir, "model")
    registry.end_run(bare)
    ref = registry.resolve(f"desk@{registry.register('desk', bare, source, {}).version}")
    assert classification_tasks(registry, ref) == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("num_gpus: -1", r"args\.num_gpus: expected a number >= 0, got -1"),
        ("num_gpus: lots", r"args\.num_gpus: expected a number >= 0, got \"lots\""),
        ("dtype: fp16", r"args\.dtype: expected one of 'auto', 'bfloat16' or 'float32'"),
        ("num_gpu: 1", r"args\.num_gpu: unknown key \(did you mean 'num_gpus'\?\)"),
    ],
)
def test_a_model_applications_bad_num_gpus_or_dtype_is_named_by_file_line_and_key(
    tmp_path, line, message
):
    from hybridft.serve.endpoint import build_version_app, check_serve_config

    text = (SERVE / "endpoint.yaml").read_text()
    path = tmp_path / "endpoint.yaml"
    path.write_text(text + f"      {line}\n")
    where = rf"endpoint\.yaml:{text.count(chr(10)) + 1}: applications\[1\]\."
    with pytest.raises(UserError, match=where + message):
        check_serve_config(path)
    # Serve runs the builder without the file's name: the key is still named
    args = yaml.safe_load(path.read_text())["applications"][1]["args"]
    with pytest.raises(UserError, match=r"^serve config args: " + message.removeprefix(r"args\.")):
        build_version_app(args)


def _model_dir(tmp_path: Path) -> Path:
    """What ServeModelArgs checks: config.json and safetensors weights (never loaded here)."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    return tmp_path


def test_num_gpus_reserves_gpus_for_the_replica_and_runs_the_engine_on_cuda(tmp_path):
    """The built application's deployment options, read without deploying it."""
    from hybridft.serve.launch import ServeModelArgs, build_app

    base = {"model_dir": str(_model_dir(tmp_path)), "model_name": "m", "version": "1"}
    gpu = build_app(ServeModelArgs(**base, num_gpus=0.5, dtype="float32"))._bound_deployment
    assert gpu.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert gpu.init_kwargs["device"] == "cuda" and gpu.init_kwargs["dtype"] == "float32"
    cpu = build_app(base)._bound_deployment  # a dict, as `serve run ... key=value` passes
    assert cpu.ray_actor_options == {"num_cpus": 0.5}
    assert cpu.init_kwargs["device"] == "cpu" and cpu.init_kwargs["dtype"] == "auto"
    with pytest.raises(UserError, match=r"serve config args: dtype: expected one of 'auto'"):
        build_app({**base, "dtype": "half"})
    with pytest.raises(UserError, match=r"serve config args: num_gpus: expected a number >= 0"):
        build_app({**base, "num_gpus": -0.5})
