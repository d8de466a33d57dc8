"""Turn a local model directory into a running Serve application of :class:`ModelServer`.

``deploy`` serves one version from Python (``serve_version``: a registry reference, fetched
first); ``build_app`` is the Serve application builder (for ``serve run`` / a Serve config file's
``import_path``, with :class:`ServeModelArgs` as ``args``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve

from hybridft.errors import UserError
from hybridft.model.device import Dtype
from hybridft.registry.client import Registry
from hybridft.runtime import ensure_ray
from hybridft.serve.adapters import check_adapter_dir
from hybridft.serve.deployment import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_TOKENS_LIMIT, ModelServer
from hybridft.serve.engines import DEFAULT_ENGINE, EngineName
from hybridft.serve.model_door import check_door, check_host, door_spec
from hybridft.serve.openai_http import MAX_BODY_BYTES, VERSION_HEADER
from hybridft.specfile import describe_error
from hybridft.specs import NonNegFloat

logger = logging.getLogger(__name__)

A = TypeVar("A", bound=BaseModel)


class ServeModelArgs(BaseModel):
    """What one model deployment needs; also the ``args`` of a Serve config file."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: str
    model_name: Annotated[str, Field(min_length=1)]
    version: Annotated[str, Field(min_length=1)]
    num_cpus: Annotated[float, Field(gt=0)] = 0.5
    max_tokens_limit: Annotated[int, Field(ge=1)] = DEFAULT_MAX_TOKENS_LIMIT
    # Classification tasks: {task: {"labels": [...], "temperature": T}} (from the eval result).
    tasks: dict[str, dict[str, Any]] = {}
    max_batch_size: Annotated[int, Field(ge=1, le=256)] = 16
    # How long a first request waits for others to join its batch.
    batch_wait_s: Annotated[float, Field(ge=0, le=1)] = DEFAULT_BATCH_WAIT_S
    num_replicas: Annotated[int, Field(ge=1)] = 1
    # GPUs reserved per replica (a fraction shares one GPU); 0 runs on CPU, > 0 on CUDA.
    num_gpus: NonNegFloat = 0.0
    # The weights' dtype: auto is bfloat16 on CUDA, float32 on CPU.
    dtype: Dtype = "auto"
    # What generates: "hf" (the model in the replica), "vllm" (vLLM's server as its child) or
    # "auto": vllm where installed, else hf (serve.engines).
    engine: EngineName = DEFAULT_ENGINE
    # vllm: the CPU threads it computes with (default: num_cpus rounded up; not pinned to cores).
    engine_threads: Annotated[int, Field(ge=1)] | None = None
    # LoRA adapters on this base, served as model ids "<model_name>:<adapter>" (multiplexed).
    adapters: dict[str, str] = {}
    # A loopback channel the canary router uses instead of the Serve handle (serve.channel).
    channel: bool = True
    # The HTTP door, when the application has a route prefix (behind the router it has none):
    # API keys from this endpoint folder's key store (the router's; `hybridft keys create`), or
    # none with insecure_local (loopback clients only; `deploy` wants a loopback host for it).
    serve_dir: str = ".hybridft/serve"
    insecure_local: bool = False
    max_body_bytes: Annotated[int, Field(ge=1)] = MAX_BODY_BYTES

    @field_validator("adapters")
    @classmethod
    def _adapter_dirs(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return {name: check_adapter_dir(name, path) for name, path in value.items()}
        except UserError as exc:
            raise ValueError(str(exc)) from None

    def threads(self) -> int:
        """The vllm engine's CPU threads: ``engine_threads``, else the replica's CPUs."""
        return self.engine_threads or max(1, math.ceil(self.num_cpus))

    @field_validator("model_dir")
    @classmethod
    def _hf_safetensors_dir(cls, value: str) -> str:
        path = Path(value).expanduser().resolve()  # replicas do not share the caller's cwd
        if not (path / "config.json").is_file():
            raise ValueError(f"expected a Hugging Face model directory, got {value!r}")
        if not any(path.glob("*.safetensors")):
            raise ValueError(f"expected *.safetensors weights in {value!r}")
        return str(path)


def serve_args(model: type[A], values: dict[str, Any], where: str = "serve config args") -> A:
    """``values`` validated as ``model``; a problem is one UserError naming the key.

    Serve hands a builder its ``args`` without the config file's name, so the key is what can be
    named here; ``endpoint.check_serve_config`` names the file and line as well.
    """
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        _, key, problem = first_problem(model, exc)
        raise UserError(f"{where}: {key}: {problem}") from None


def first_problem(model: type[BaseModel], exc: ValidationError) -> tuple[tuple[Any, ...], str, str]:
    """The error of ``exc`` to report: its location, key path and "expected ..., got ..."."""
    # a typo'd key also makes the intended key "missing": report the typo, the real cause
    first = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    return (tuple(first["loc"]), *describe_error(model, first))


@functools.cache
def code_digest() -> str:
    """A digest of this hybridft's source files (a changed install changes it)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def deployment_digest(args: ServeModelArgs) -> str:
    """What a model deployment is built from (its arguments and this hybridft's code): a
    running application with the same digest needs no redeploy (``ServeDeployer.deploy``)."""
    payload = {"code": code_digest(), "args": args.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_app(args: ServeModelArgs) -> serve.Application:
    """The Serve application for one model version (a Serve application builder).

    Args:
        args: The model directory, served name, version and replica resources.

    Returns:
        The bound application, for ``serve.run`` or a Serve config's ``import_path``.
    """
    if not isinstance(args, ServeModelArgs):  # `serve run ... key=value` passes a dict
        args = serve_args(ServeModelArgs, args)
    resources = {"num_cpus": args.num_cpus}
    if args.num_gpus > 0:
        resources["num_gpus"] = args.num_gpus
    # @serve.deployment made the class a Deployment: mypy does not apply class decorators
    server = cast(serve.Deployment, ModelServer)
    return server.options(ray_actor_options=resources, num_replicas=args.num_replicas).bind(
        model_dir=args.model_dir,
        model_name=args.model_name,
        version=args.version,
        max_tokens_limit=args.max_tokens_limit,
        tasks=args.tasks,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_s,
        adapters=args.adapters or None,
        channel=args.channel,
        device="cuda" if args.num_gpus > 0 else "cpu",
        dtype=args.dtype,
        door=door_spec(args.serve_dir, args.insecure_local, args.max_body_bytes),
        engine=args.engine,
        engine_threads=args.threads(),
        deployed_as=deployment_digest(args),
    )


def deploy(
    model_dir: str,
    model_name: str,
    version: str,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    route_prefix: str = "/",
    num_cpus: float = 0.5,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    app_name: str = "hybridft",
    blocking: bool = False,
    adapters: dict[str, str] | None = None,
    num_gpus: float = 0.0,
    dtype: Dtype = "auto",
    serve_dir: str | Path = ".hybridft/serve",
    insecure_local: bool = False,
    engine: EngineName = DEFAULT_ENGINE,
) -> str:
    """Serve a model directory on an already initialised Ray and return its OpenAI base URL.

    Serve's HTTP host and port are cluster-wide: they are set by the first ``serve.start``; a
    later deploy with another port fails its health check instead of silently answering elsewhere.

    Args:
        model_dir: Local HF causal-LM directory (safetensors weights, tokenizer, chat template).
        model_name: The name clients send as ``model``.
        version: The model version, reported with every response.
        port: HTTP port of the Serve proxy.
        host: HTTP host of the Serve proxy.
        route_prefix: Where the application is mounted.
        num_cpus: CPUs reserved per replica.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        app_name: Serve application name (replaced if it exists).
        blocking: Keep serving until Ctrl-C, then delete the application.
        adapters: LoRA adapter directories by name, served as ``<model_name>:<name>``.
        num_gpus: GPUs reserved per replica; > 0 runs the model on CUDA.
        dtype: The weights' dtype (``auto``: bfloat16 on CUDA, float32 on CPU).
        serve_dir: The endpoint folder whose key store (the router's) holds the API keys.
        insecure_local: Serve without API keys; only on a loopback ``host``.
        engine: What generates: ``hf`` or ``vllm`` (``serve.engines``).

    Returns:
        The base URL for OpenAI clients, e.g. ``http://127.0.0.1:8000/v1``.

    Raises:
        UserError: ``insecure_local`` on another host, an empty key store, or bad arguments.
    """
    import ray

    if not ray.is_initialized():
        raise UserError("serve: Ray is not initialised; call ray.init() before deploy()")
    values = {
        "model_dir": model_dir,
        "model_name": model_name,
        "version": version,
        "num_cpus": num_cpus,
        "max_tokens_limit": max_tokens_limit,
        "adapters": adapters or {},
        "num_gpus": num_gpus,
        "dtype": dtype,
        "serve_dir": str(serve_dir),
        "insecure_local": insecure_local,
        "engine": engine,
    }
    args = serve_args(ServeModelArgs, values, where="serve")
    check_door(host, door_spec(args.serve_dir, args.insecure_local))
    # Serve's per-request INFO access lines drown a terminal; warnings and errors still show
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(
        build_app(args),
        name=app_name,
        route_prefix=route_prefix,
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    root = f"http://{probe_host}:{port}{route_prefix.rstrip('/')}"
    _wait_until_answering(f"{root}/health", f"{model_name}/{version}")
    url = f"{root}/v1"
    if blocking:
        logger.info("serving %s/%s at %s (Ctrl-C to stop)", model_name, version, url)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            serve.delete(app_name)
    return url


def serve_version(
    ref: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    tracking_uri: str | None = None,
    cache: str | Path = ".hybridft/served",
    adapters: dict[str, str] | None = None,
    serve_dir: str | Path = ".hybridft/serve",
    insecure_local: bool = False,
    engine: EngineName = DEFAULT_ENGINE,
) -> str:
    """Resolve a registry reference, fetch its model, deploy it on Ray Serve; returns the base URL.

    ``adapters``: LoRA adapter directories on that base, served as model ids ``NAME:ADAPTER``.
    Requests need an API key from ``serve_dir``'s key store (``hybridft keys create``), unless
    ``insecure_local`` (a loopback ``host`` only); both are checked before the model is fetched.
    """
    check_host(host, insecure_local)  # a wrong command line first, then a wrong reference
    registry = Registry(tracking_uri)
    version = registry.resolve(ref)
    check_door(host, door_spec(serve_dir, insecure_local))
    model_dir = registry.download(version, Path(cache) / version.name / version.version)
    ensure_ray()
    return deploy(
        str(model_dir.resolve()),
        version.name,
        version.version,
        host=host,
        port=port,
        adapters=adapters,
        serve_dir=serve_dir,
        insecure_local=insecure_local,
        engine=engine,
    )


def _wait_until_answering(health_url: str, version_tag: str, timeout_s: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    problem = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(health_url, timeout=5.0)
            found = reply.headers.get(VERSION_HEADER)
            if reply.status_code == 200 and found == version_tag:
                return
            problem = f"HTTP {reply.status_code}, {VERSION_HEADER}={found!r}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise UserError(
        f"serve: {health_url} did not answer as {version_tag} within {timeout_s:.0f}s ({problem}); "
        "is Serve already running with other HTTP options? (serve.shutdown() to reset)"
    )
