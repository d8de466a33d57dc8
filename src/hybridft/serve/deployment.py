"""Ray Serve deployment of one model version behind OpenAI-compatible endpoints.

Every response (errors included) names the version that answered: the ``model`` field, the
``system_fingerprint`` field ``<name>/<version>`` and the ``x-hybridft-model-version`` header.

Deploy from Python with :func:`deploy`, or from a Serve config file / ``serve run`` with the
application builder ``hybridft.serve.deployment:build_app`` and the fields of
:class:`ServeModelArgs` as ``args``.
"""

# No `from __future__ import annotations` here: Serve cloudpickles the routes by value with only
# the globals their bytecode uses, so string annotations (the request models) would not resolve in
# the replica and FastAPI would read the body parameter as a query parameter.
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from hybridft.errors import UserError
from hybridft.serve.generation import GenerationEngine, SamplingParams
from hybridft.serve.openai_api import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIError,
    TextCompletion,
    Usage,
    chat_chunks,
    completion_chunks,
    error_from_validation,
    sse_events,
)

logger = logging.getLogger(__name__)

VERSION_HEADER = "x-hybridft-model-version"
DEFAULT_MAX_TOKENS_LIMIT = 512

app = FastAPI(title="hybridft model server", docs_url=None, redoc_url=None)


def _server() -> "ModelServer":
    # The FastAPI app is shared by the class; the replica's instance is reachable the same way
    # Serve itself injects `self` into routes.
    return serve.get_replica_context().servable_object


class _ModelVersionHeader:
    """ASGI middleware: stamp every HTTP response with the serving model version."""

    def __init__(self, asgi_app: Any) -> None:
        self.app = asgi_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tag = getattr(_server(), "version_tag", None)
        header = (VERSION_HEADER.encode(), str(tag).encode())

        async def send_with_version(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and tag is not None:
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_version)


def _error_response(err: OpenAIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _on_openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return _error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _error_response(error_from_validation(list(exc.errors())))


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette still re-raises after answering, so Serve logs the traceback; the client gets JSON.
    err = OpenAIError(500, f"internal error: {type(exc).__name__}", type="server_error")
    return _error_response(err)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return _error_response(OpenAIError(exc.status_code, message), headers=exc.headers)


def _sse(chunks: Iterator[BaseModel]) -> StreamingResponse:
    return StreamingResponse(sse_events(chunks), media_type="text/event-stream")


# Everything the routes use must exist before this point: @serve.ingress pickles the app (routes
# included, by value, with the module globals defined so far) when the class is decorated.
app.add_middleware(_ModelVersionHeader)
app.add_exception_handler(OpenAIError, _on_openai_error)
app.add_exception_handler(RequestValidationError, _on_validation_error)
app.add_exception_handler(StarletteHTTPException, _on_http_error)
app.add_exception_handler(Exception, _on_unexpected_error)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=8)
@serve.ingress(app)
class ModelServer:
    """One model version: loads the HF directory once per replica, answers OpenAI requests."""

    def __init__(
        self,
        model_dir: str,
        model_name: str,
        version: str,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    ) -> None:
        self.engine = GenerationEngine.from_dir(model_dir)
        self.model_name = model_name
        self.version = version
        self.version_tag = f"{model_name}/{version}"
        self.max_tokens_limit = max_tokens_limit
        self.created = int(time.time())

    @app.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self.model_name, "version": self.version}

    @app.get("/v1/models")
    def list_models(self) -> dict[str, Any]:
        return ModelList(data=[self._card()]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    def get_model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return self._card().model_dump()

    @app.post("/v1/chat/completions")
    def chat_completions(self, request: ChatCompletionRequest) -> Response:
        self._check_model(request.model)
        prompt_ids = self._prompt(
            lambda: self.engine.chat_prompt_ids([m.template_dict() for m in request.messages]),
            param="messages",
        )
        params = self._sampling(request)
        if request.stream:
            steps = self.engine.stream(prompt_ids, params)
            return _sse(chat_chunks(steps, self._ids(), request.include_usage()))
        out = self._run(lambda: self.engine.generate(prompt_ids, params))
        body = ChatCompletion(
            model=self.model_name,
            system_fingerprint=self.version_tag,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=out.text), finish_reason=out.finish_reason
                )
            ],
            usage=Usage.of(out.prompt_tokens, out.completion_tokens),
        )
        return JSONResponse(body.model_dump())

    @app.post("/v1/completions")
    def completions(self, request: CompletionRequest) -> Response:
        self._check_model(request.model)
        prompt_ids = self._prompt(
            lambda: self.engine.text_prompt_ids(request.prompt), param="prompt"
        )
        params = self._sampling(request)
        if request.stream:
            steps = self.engine.stream(prompt_ids, params)
            return _sse(completion_chunks(steps, self._ids(), request.include_usage()))
        out = self._run(lambda: self.engine.generate(prompt_ids, params))
        body = TextCompletion(
            model=self.model_name,
            system_fingerprint=self.version_tag,
            choices=[CompletionChoice(text=out.text, finish_reason=out.finish_reason)],
            usage=Usage.of(out.prompt_tokens, out.completion_tokens),
        )
        return JSONResponse(body.model_dump())

    # --- helpers ------------------------------------------------------------------------------

    def _ids(self) -> dict[str, str]:
        return {"model": self.model_name, "system_fingerprint": self.version_tag}

    def _card(self) -> ModelCard:
        return ModelCard(id=self.model_name, created=self.created)

    def _check_model(self, requested: str) -> None:
        if requested != self.model_name:
            raise OpenAIError(
                404,
                f"model {requested!r} does not exist here; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def _prompt(self, encode: Any, param: str) -> list[int]:
        try:
            ids = encode()
        except Exception as exc:  # a template that rejects the conversation is the client's
            raise OpenAIError(400, f"{param}: cannot be encoded: {exc}", param=param) from exc
        if not ids:
            raise OpenAIError(400, f"{param}: encodes to no tokens", param=param)
        limit = self.engine.max_position
        if limit is not None and len(ids) >= limit:
            raise OpenAIError(
                400,
                f"{param}: the prompt has {len(ids)} tokens; this model's context is {limit} "
                "tokens, leaving no room for an answer",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def _sampling(self, request: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
        requested = request.requested_max_tokens()
        if requested is not None and requested > self.max_tokens_limit:
            param = (
                "max_completion_tokens"
                if getattr(request, "max_completion_tokens", None)
                else "max_tokens"
            )
            raise OpenAIError(
                400,
                f"{param}: expected at most {self.max_tokens_limit}, got {requested}",
                param=param,
                code="invalid_value",
            )
        return SamplingParams(
            # Without a limit, answer up to the server's cap; the engine clips to the context.
            max_tokens=requested or self.max_tokens_limit,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_sequences(),
            seed=request.seed,
        )

    def _run(self, generate: Any) -> Any:
        try:
            return generate()
        except OpenAIError:
            raise
        except UserError as exc:
            raise OpenAIError(400, str(exc)) from exc
        except Exception as exc:  # never let one request take the replica down
            logger.exception("generation failed")
            raise OpenAIError(500, f"generation failed: {exc}", type="server_error") from exc


class ServeModelArgs(BaseModel):
    """What one model deployment needs; also the ``args`` of a Serve config file."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: str
    model_name: Annotated[str, Field(min_length=1)]
    version: Annotated[str, Field(min_length=1)]
    num_cpus: Annotated[float, Field(gt=0)] = 0.5
    max_tokens_limit: Annotated[int, Field(ge=1)] = DEFAULT_MAX_TOKENS_LIMIT

    @field_validator("model_dir")
    @classmethod
    def _hf_safetensors_dir(cls, value: str) -> str:
        path = Path(value).expanduser().resolve()  # replicas do not share the caller's cwd
        if not (path / "config.json").is_file():
            raise ValueError(f"expected a Hugging Face model directory, got {value!r}")
        if not any(path.glob("*.safetensors")):
            raise ValueError(f"expected *.safetensors weights in {value!r}")
        return str(path)


def build_app(args: ServeModelArgs) -> serve.Application:
    """The Serve application for one model version (a Serve application builder).

    Args:
        args: The model directory, served name, version and replica resources.

    Returns:
        The bound application, for ``serve.run`` or a Serve config's ``import_path``.
    """
    if not isinstance(args, ServeModelArgs):  # `serve run ... key=value` passes a dict
        args = ServeModelArgs.model_validate(args)
    return ModelServer.options(ray_actor_options={"num_cpus": args.num_cpus}).bind(
        model_dir=args.model_dir,
        model_name=args.model_name,
        version=args.version,
        max_tokens_limit=args.max_tokens_limit,
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

    Returns:
        The base URL for OpenAI clients, e.g. ``http://127.0.0.1:8000/v1``.
    """
    import ray

    if not ray.is_initialized():
        raise UserError("serve: Ray is not initialised; call ray.init() before deploy()")
    try:
        args = ServeModelArgs(
            model_dir=model_dir,
            model_name=model_name,
            version=version,
            num_cpus=num_cpus,
            max_tokens_limit=max_tokens_limit,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"serve: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    # Serve's per-request INFO access lines drown a terminal; warnings and errors still show
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(build_app(args), name=app_name, route_prefix=route_prefix)
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
