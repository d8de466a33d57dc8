"""A canary endpoint on Ray Serve: one model application per version plus the router ingress.

``start_endpoint`` deploys the version behind ``@champion`` and the router, and creates the canary
state; ``ServeDeployer`` is how the controller adds and removes version applications.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, cast

import yaml
from pydantic import BaseModel, Field, ValidationError

from hybridft.errors import UserError, located
from hybridft.model.device import Dtype
from hybridft.registry.client import ModelRef, Registry
from hybridft.serve.canary import CanarySpec, CanaryStore, ServePaths, TrafficLogSpec
from hybridft.serve.engines import DEFAULT_ENGINE, EngineName
from hybridft.serve.launch import (
    ServeModelArgs,
    build_app,
    deployment_digest,
    first_problem,
    serve_args,
)
from hybridft.serve.router import CanaryRouter
from hybridft.serve.traffic import model_app_name
from hybridft.specfile import key_path, line_of
from hybridft.specs import NonNegFloat, Strict

logger = logging.getLogger(__name__)

# Replicas log warnings and errors only (the request log and /metrics hold the traffic).
QUIET = {"log_level": "WARNING", "enable_access_log": False}
ROUTER_APP = "hybridft-router"


def classification_tasks(registry: Registry, ref: ModelRef) -> dict[str, dict[str, Any]]:
    """``{task: {"labels", "temperature", "label_end"}}`` from the version's eval result (empty
    if none): the labels are scored as evaluation scored and calibrated them."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = registry.client.download_artifacts(ref.run_id, "eval.json", tmp)
            text = Path(path).read_text(encoding="utf-8")
        except Exception:  # no eval logged for this run: label probabilities need explicit labels
            return {}
    tasks: dict[str, dict[str, Any]] = {}
    for task, score in json.loads(text).get("tasks", {}).items():
        cal = (score or {}).get("calibration") or {}
        if cal.get("labels"):
            tasks[task] = {
                "labels": cal["labels"],
                "temperature": cal.get("temperature", 1.0),
                "label_end": cal.get("label_end") or "end_of_turn",
            }
    return tasks


def version_args(
    registry: Registry,
    model: str,
    version: str,
    *,
    cache: str | Path = ".hybridft/served",
    num_cpus: float = 0.5,
    num_replicas: int = 1,
    num_gpus: float = 0.0,
    dtype: Dtype = "auto",
    engine: EngineName = DEFAULT_ENGINE,
) -> ServeModelArgs:
    """The deployment arguments of ``model`` at ``version`` (a number or an alias), fetched
    from the registry into ``cache`` with its classification tasks' labels and temperatures
    (``build_app`` makes them a Serve application)."""
    ref = registry.resolve(f"{model}@{version}")
    model_dir = registry.download(ref, Path(cache) / ref.name / ref.version)
    values = {
        "model_dir": str(model_dir.resolve()),
        "model_name": ref.name,
        "version": ref.version,
        "num_cpus": num_cpus,
        "num_replicas": num_replicas,
        "num_gpus": num_gpus,
        "dtype": dtype,
        "engine": engine,
        "tasks": classification_tasks(registry, ref),
    }
    return serve_args(ServeModelArgs, values)


def router_app(
    serve_dir: str | Path,
    review_threshold: float = 0.5,
    num_cpus: float = 0.25,
    traffic_log: dict[str, Any] | None = None,
) -> Any:
    """The router's Serve application over the endpoint state in ``serve_dir``.

    ``traffic_log``: a ``TrafficLogSpec`` as a dict (redaction, retention, flush interval).
    """
    from ray import serve

    # mypy does not apply @serve.deployment: the class is a Deployment at run time
    router = cast(serve.Deployment, CanaryRouter)
    return router.options(ray_actor_options={"num_cpus": num_cpus}).bind(
        serve_dir=str(Path(serve_dir).expanduser().resolve()),
        review_threshold=review_threshold,
        traffic_log=TrafficLogSpec.model_validate(traffic_log or {}).model_dump(),
    )


class ServeDeployer:
    """Deploy / delete the Serve application of one registered version."""

    def __init__(self, registry: Registry, model: str, **options: Any) -> None:
        """``options``: ``version_args``' keyword options (cache, num_cpus, num_replicas,
        num_gpus, dtype, engine), the same for every version this deployer serves."""
        self.registry = registry
        self.model = model
        self.options = options

    def deploy(self, version: str) -> bool:
        """Deploy ``version``; ``False`` when its application already runs with exactly these
        arguments (and this hybridft): its replicas are kept. Serve replaces every replica of
        an application run again, even unchanged: a model loaded again (a vLLM server started
        again) for nothing, e.g. each time the endpoint starts."""
        from ray import serve

        args = version_args(self.registry, self.model, version, **self.options)
        name = model_app_name(self.model, version)
        if running_digest(name) == deployment_digest(args):
            logger.info("%s runs with these arguments already: kept", name)
            return False
        # No route prefix: versions are reached only through the router (keys, logging).
        serve.run(build_app(args), name=name, route_prefix=None, logging_config=QUIET)
        return True

    def retire(self, version: str) -> None:
        from ray import serve

        serve.delete(model_app_name(self.model, version), _blocking=False)


def running_digest(app_name: str) -> str | None:
    """The ``deployment_digest`` the running application ``app_name``'s replicas were built
    from; ``None`` when it is not running (or being updated) or does not say."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    status = serve.status().applications.get(app_name)
    if status is None or status.status != ApplicationStatus.RUNNING:
        return None
    try:
        described = serve.get_app_handle(app_name).describe.remote().result(timeout_s=30)
    except Exception:  # noqa: BLE001 - an application that cannot say is deployed again
        return None
    digest = described.get("deployed_as") if isinstance(described, dict) else None
    return digest if isinstance(digest, str) else None


def served_engine(model: str, version: str) -> str:
    """The engine (``hf`` / ``vllm``) the running application of ``model`` ``version`` answers
    with: what ``engine: auto`` became in its replica."""
    from ray import serve

    handle = serve.get_app_handle(model_app_name(model, version))
    return str(handle.describe.remote().result(timeout_s=60)["engine"])


def start_endpoint(
    spec: CanarySpec,
    serve_dir: str | Path,
    registry: Registry,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    deployer: ServeDeployer | None = None,
    router_cpus: float = 0.25,
) -> str:
    """Serve ``spec.model`` (its champion, and a running canary if any) behind the router.

    Returns:
        The OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``.
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        raise UserError("serve: Ray is not initialised; call ray.init() first")
    paths = ServePaths(serve_dir)
    store = CanaryStore(paths.state)
    if store.exists():
        state = store.read()
    else:
        champion = registry.resolve(f"{spec.model}@{spec.champion_alias}")
        state = store.init(spec.model, champion.version)
    # Serve's HTTP options are fixed by the first start: before any application is deployed.
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    deployer = deployer or ServeDeployer(registry, spec.model)
    for version in state.route_table().versions():
        deployer.deploy(version)
    router = router_app(
        paths.root, spec.review.confidence_threshold, router_cpus, spec.traffic_log.model_dump()
    )
    serve.run(router, name=ROUTER_APP, route_prefix="/", logging_config=QUIET)
    probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{probe}:{port}/v1"


class VersionAppArgs(Strict):
    """The ``args`` of ``build_version_app``: one registered version as a Serve application."""

    model: Annotated[str, Field(min_length=1)]
    version: int | str  # a number or an alias
    tracking_uri: str | None = None
    cache: str = ".hybridft/served"
    num_cpus: Annotated[float, Field(gt=0)] = 0.5
    num_replicas: Annotated[int, Field(ge=1)] = 1
    # GPUs reserved per replica (a fraction shares one GPU); 0 runs on CPU, > 0 on CUDA.
    num_gpus: NonNegFloat = 0.0
    dtype: Dtype = "auto"  # the weights' dtype: auto is bfloat16 on CUDA, float32 on CPU
    engine: EngineName = DEFAULT_ENGINE  # what generates: auto, hf or vllm (serve.engines)


def build_version_app(args: dict[str, Any]) -> Any:
    """Serve config builder for one registered version (``serve deploy serve/endpoint.yaml``).

    ``args``: the fields of ``VersionAppArgs``.
    """
    spec = serve_args(VersionAppArgs, args)
    return build_app(
        version_args(
            Registry(spec.tracking_uri),
            spec.model,
            str(spec.version),
            cache=spec.cache,
            num_cpus=spec.num_cpus,
            num_replicas=spec.num_replicas,
            num_gpus=spec.num_gpus,
            dtype=spec.dtype,
            engine=spec.engine,
        )
    )


def check_serve_config(path: str | Path) -> None:
    """Check the ``args`` of every model application in a Serve config file (``serve/*.yaml``)
    against its builder's schema, before Serve runs the builder; a problem is one UserError
    ``file:line: applications[i].args.key: expected ..., got ...``."""
    schemas: dict[str, type[BaseModel]] = {
        "hybridft.serve.endpoint:build_version_app": VersionAppArgs,
        "hybridft.serve.launch:build_app": ServeModelArgs,
    }
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for i, app in enumerate(doc.get("applications") or []):
        schema = schemas.get(app.get("import_path", ""))
        if schema is None:  # the router's args, or another application's
            continue
        try:
            schema.model_validate(app.get("args") or {})
        except ValidationError as exc:
            loc, key, problem = first_problem(schema, exc)
            where = ("applications", i, "args")
            line = line_of(path, (*where, *loc))
            raise located(str(path), line, f"{key_path(where)}.{key}", problem) from None


def build_router_app(args: dict[str, Any]) -> Any:
    """Serve config builder for the router: ``serve_dir`` (required), ``review_threshold``,
    ``traffic_log`` (as in serve/canary.yaml)."""
    if "serve_dir" not in args:
        raise UserError("serve config args: the router needs serve_dir (its state folder)")
    return router_app(
        args["serve_dir"],
        float(args.get("review_threshold", 0.5)),
        float(args.get("num_cpus", 0.25)),
        args.get("traffic_log"),
    )
