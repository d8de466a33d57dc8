"""The canary router: an ingress deployment composed over one model deployment per version.

Ray Serve splits traffic only within a deployment, so the split between versions is ours: the
router reads the routing table from the canary state file (written by the controller and the
manual gates), picks a version per request (weighted, sticky by user, forced by header, or
shadowed), calls that version's ``ModelServer`` through a DeploymentHandle, and records the
answer (request log, Parquet traffic log, Prometheus metrics, review queue). Every response names the version that
answered: the body's ``system_fingerprint`` and ``hybridft.version``, and the
``x-hybridft-model-version`` header.
"""

# No `from __future__ import annotations`: Serve pickles the FastAPI routes by value (see
# deployment.py), so annotations must be real objects.
import asyncio
import json
import logging
import random
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.background import BackgroundTask

from hybridft.errors import UserError
from hybridft.serve.canary import RouteWatcher, ServePaths, manual_action
from hybridft.serve.channel import ChannelDraining, ChannelError, ChannelPool
from hybridft.serve.http_requests import GenerationFastPath, authorize, read_json_body
from hybridft.serve.keys import KeyStore
from hybridft.serve.metrics import CanaryGauges, Metrics
from hybridft.serve.openai_api import (
    ModelCard,
    ModelList,
    OpenAIError,
    parse_request,
    prompt_text,
)
from hybridft.serve.openai_http import MAX_BODY_BYTES, VERSION_HEADER, install_error_handlers
from hybridft.serve.review import FeedbackStore, ReviewQueue
from hybridft.serve.routing import Route, choose_route
from hybridft.serve.traffic import (
    Answer,
    RequestLogWriter,
    is_retryable,
    model_app_name,
    open_traffic_log,
)

logger = logging.getLogger(__name__)

ARM_HEADER = "x-hybridft-arm"
FORCE_HEADER = "x-hybridft-version"
USER_HEADER = "x-hybridft-user"
REQUEST_ID_HEADER = "x-request-id"
RETRY_BUDGET_S = 20.0  # a request whose replica died is re-sent until a replica answers

router_app = FastAPI(title="hybridft canary router", docs_url=None, redoc_url=None)


install_error_handlers(router_app)


router_app.add_middleware(GenerationFastPath)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(router_app)
class CanaryRouter:
    """Route OpenAI requests between the primary and the canary version of one model."""

    def __init__(
        self,
        serve_dir: str,
        max_body_bytes: int = MAX_BODY_BYTES,
        review_threshold: float = 0.5,
        traffic_log: dict[str, Any] | None = None,
        direct_channel: bool = True,
    ) -> None:
        self.paths = ServePaths(serve_dir)
        self.traffic = open_traffic_log(self.paths.traffic_log, traffic_log or {})
        self.watcher = RouteWatcher(self.paths.state)
        self.keys = KeyStore(self.paths.keys)
        # not `self.feedback`: that name is the /v1/feedback route
        self.feedback_store = FeedbackStore(self.paths.traffic)
        self.review = ReviewQueue(self.paths.review)
        self.log = RequestLogWriter(
            self.feedback_store,
            self.review,
            self.traffic,
            float((traffic_log or {}).get("flush_s", 2.0)),
        )
        self.metrics = Metrics()
        self.max_body_bytes = max_body_bytes
        self.review_threshold = review_threshold
        self._handles: dict[str, Any] = {}
        # non-streamed requests to replicas on this node: loopback, ~0.1 ms (serve.channel)
        self.channels = ChannelPool() if direct_channel else None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Decisions are made by the controller; a router counts those it sees after it starts.
        self.gauges = CanaryGauges(self.metrics, len(self.watcher.store.read().history))

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        # the buffered traffic events and queued request-log rows are written, not dropped
        self.log.close()
        if self.channels is not None:
            self.channels.close()

    # --- routes -----------------------------------------------------------------------------

    @router_app.get("/health")
    def health(self) -> dict[str, Any]:
        table = self.watcher.table()
        return {"status": "ok", "model": table.model, "versions": list(table.versions())}

    @router_app.get("/metrics")
    def metrics_route(self) -> Response:
        self.gauges.show(self.watcher.store.read())
        body, content_type = self.metrics.exposition()
        return Response(body, media_type=content_type)

    @router_app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        authorize(self.keys, request)
        table = self.watcher.table()
        card = ModelCard(id=table.model, created=0)
        return JSONResponse(ModelList(data=[card]).model_dump())

    @router_app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self.generate("chat", request)

    @router_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.generate("completion", request)

    @router_app.post("/v1/feedback")
    async def feedback(self, request: Request) -> Response:
        """``{"request_id", "success": bool, "score"?: float}``: task success of one answer."""
        authorize(self.keys, request)
        body = await read_json_body(request, self.max_body_bytes)
        if not isinstance(body, dict):
            raise OpenAIError(400, f"feedback: expected a JSON object, got {type(body).__name__}")
        request_id, success = body.get("request_id"), body.get("success")
        if not isinstance(request_id, str) or not isinstance(success, bool):
            raise OpenAIError(
                400,
                "feedback: expected {'request_id': str, 'success': bool}, got "
                f"request_id={request_id!r}, success={success!r}",
                param="request_id" if not isinstance(request_id, str) else "success",
            )
        score = body.get("score")
        if score is not None and not isinstance(score, int | float):
            raise OpenAIError(400, f"score: expected a number, got {score!r}", param="score")
        await asyncio.to_thread(self.log.flush)  # the answer's log row must be written first
        try:
            version = await asyncio.to_thread(
                self.feedback_store.record, request_id, None, success, "user", score
            )
        except UserError as exc:  # unknown request (404); duplicate, failed or shadow-only (409)
            raise OpenAIError(404 if "unknown" in str(exc) else 409, str(exc)) from None
        self.log.put_event(
            "feedback",
            request_id=request_id,
            model=self.watcher.table().model,
            version=version,
            success=success,
            feedback_source="user",
        )
        return JSONResponse({"request_id": request_id, "version": version, "recorded": True})

    # --- admin (manual gates; an admin key) ------------------------------------------------

    @router_app.get("/admin/canary")
    async def canary_state(self, request: Request) -> Response:
        authorize(self.keys, request, admin=True)
        return JSONResponse(self.watcher.store.read().model_dump(mode="json"))

    @router_app.post("/admin/canary/{action}")
    async def canary_action(self, action: str, request: Request) -> Response:
        """``weight`` (body ``{"weight": w}``), ``pause``, ``resume``, ``promote``, ``rollback``.

        Weight, pause and resume change the routing at once; promote and rollback are requests
        the controller carries out on its next tick (they move registry aliases, through gates).
        """
        who = authorize(self.keys, request, admin=True)
        body = (
            await read_json_body(request, self.max_body_bytes)
            if int(request.headers.get("content-length") or 0)
            else {}
        )
        if not isinstance(body, dict):
            raise OpenAIError(400, "request body: expected a JSON object")
        try:
            state = await asyncio.to_thread(
                manual_action,
                self.watcher.store,
                action,
                f"key:{who.name}",
                str(body.get("reason", "")),
                body.get("weight"),
            )
        except UserError as exc:
            raise OpenAIError(409 if "not running" in str(exc) else 400, str(exc)) from None
        return JSONResponse(state.model_dump(mode="json"))

    # --- generation ---------------------------------------------------------------------------

    async def generate(self, kind: str, request: Request) -> Response:
        started = time.perf_counter()
        authorize(self.keys, request)
        body = await read_json_body(request, self.max_body_bytes)
        parsed = parse_request(kind, body)
        table = self.watcher.table()
        # "<model>:<adapter>": a LoRA adapter of the version (the version checks it exists)
        base, _, adapter = parsed.model.partition(":")
        if base != table.model:
            raise OpenAIError(
                404,
                f"model {parsed.model!r} does not exist here; this endpoint serves {table.model!r}",
                param="model",
                code="model_not_found",
            )
        forced = request.headers.get(FORCE_HEADER)
        sticky = request.headers.get(USER_HEADER) or parsed.user
        try:
            route = choose_route(table, sticky_key=sticky, forced=forced)
        except KeyError:
            raise OpenAIError(
                400,
                f"{FORCE_HEADER}: version {forced!r} is not served here; serving "
                f"{', '.join(table.versions())}",
                param=FORCE_HEADER,
            ) from None
        request_id = f"req-{uuid.uuid4().hex}"  # ours: a client-sent id may repeat
        headers = {VERSION_HEADER: f"{table.model}/{route.version}", ARM_HEADER: route.arm}
        headers[REQUEST_ID_HEADER] = request_id
        prompt = prompt_text(kind, parsed)
        if route.shadow is not None:
            self._mirror(kind, body, route.shadow, request_id, prompt)
        if parsed.stream:
            events = self._stream(kind, body, route, request_id, started, prompt, adapter)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        reply = await self._call(route.version, kind, body, adapter)
        out = reply["body"]
        flagged = False
        if reply["status"] == 200:
            ext = out.setdefault("hybridft", {})
            confidence = ext.get("confidence")
            flagged = confidence is not None and confidence < self.review_threshold
            ext.update(request_id=request_id, version=route.version, arm=route.arm)
            ext["flagged_for_review"] = flagged
            if flagged and route.arm != "forced":  # forced: tests and probes, not users
                self.metrics.flagged(route.version)
                self.log.put_review_of(
                    kind,
                    out,
                    (route.version, request_id, table.model, prompt),
                    self.review_threshold,
                )
        # Metrics and logs once the response is handed over, off the answer's path. They run
        # before this loop serves another request, so feedback on this answer (which flushes
        # the log first) finds its row.
        record = BackgroundTask(
            self._record_soon, route, kind, reply["status"], out, request_id, started, prompt
        )
        return JSONResponse(out, status_code=reply["status"], headers=headers, background=record)

    async def _call(
        self, version: str, kind: str, body: dict[str, Any], adapter: str = ""
    ) -> dict[str, Any]:
        if not adapter and self.channels is not None:  # adapters: Serve's multiplexed routing
            try:
                reply = await self.channels.call(self._app(version), kind, body)
                if reply is not None:
                    self.metrics.upstream_call(version, "channel")
                    return reply
            except ChannelDraining:  # a redeploy or scale-down: expected, not worth a warning
                self.metrics.upstream_call(version, "channel_draining")
            except ChannelError as exc:  # resent through the handle, which retries
                self.metrics.upstream_call(version, "channel_failed")
                logger.warning("version %s: direct channel failed (%s); using the handle",
                               version, exc)  # fmt: skip
        self.metrics.upstream_call(version, "handle")
        deadline = time.monotonic() + RETRY_BUDGET_S
        attempt = 0
        handle = self._handle(version)
        if adapter:  # Serve routes to a replica that has the adapter loaded, when one has
            handle = handle.options(multiplexed_model_id=adapter)
        while True:
            attempt += 1
            try:
                return await handle.answer.remote(kind, body)
            except Exception as exc:
                if time.monotonic() > deadline or not is_retryable(exc):
                    logger.error("version %s failed: %s: %s", version, type(exc).__name__, exc)
                    err = OpenAIError(
                        503,
                        f"version {version} is unavailable: {type(exc).__name__}",
                        type="server_error",
                    )
                    return {"status": err.status, "body": err.body()}
                # A dead replica: Serve starts another; wait a little and send it again.
                await asyncio.sleep(min(1.0, 0.1 * attempt) + random.random() * 0.1)

    async def _stream(
        self,
        kind: str,
        body: dict[str, Any],
        route: Route,
        request_id: str,
        started: float,
        prompt: str,
        adapter: str = "",
    ) -> Any:
        chars, status = 0, 200
        try:
            handle = self._handle(route.version).options(stream=True)
            if adapter:
                handle = handle.options(multiplexed_model_id=adapter)
            async for event in handle.answer_stream.remote(kind, body):
                if event.startswith("data: {"):
                    chunk = json.loads(event[6:])
                    if "error" in chunk:
                        status = 500
                    for choice in chunk.get("choices", []):
                        delta = choice.get("delta", {}).get("content") or choice.get("text") or ""
                        chars += len(delta)
                yield event
        except Exception as exc:
            status = 503
            logger.error("version %s failed mid-stream: %s", route.version, exc)
            err = OpenAIError(
                503,
                f"version {route.version} failed mid-stream: {type(exc).__name__}",
                type="server_error",
            )
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            model, latency = self.watcher.table().model, time.perf_counter() - started
            answer = Answer(request_id, model, route.version, route.arm, status, latency, prompt,
                            completion_chars=chars)  # fmt: skip
            self._observe(kind, answer)

    def _mirror(
        self, kind: str, body: dict[str, Any], version: str, request_id: str, prompt: str
    ) -> None:
        """Shadow: send the request to ``version`` too; record its answer, never return it."""

        async def shadow() -> None:
            started = time.perf_counter()
            reply = await self._call(version, kind, {**body, "stream": False})
            self._record(
                Route(version, "shadow"),
                kind,
                reply["status"],
                reply["body"],
                request_id,
                started,
                prompt,
            )

        task = asyncio.get_running_loop().create_task(shadow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_soon(self, *args: Any) -> None:
        """``_record`` as a background task: a coroutine, so Starlette runs it on this loop
        (a plain function would go to a thread pool)."""
        self._record(*args)

    def _record(
        self,
        route: Route,
        kind: str,
        status: int,
        out: dict[str, Any],
        request_id: str,
        started: float,
        prompt: str,
    ) -> None:
        latency = time.perf_counter() - started
        model = self.watcher.table().model
        answer = Answer.from_body(request_id, model, route, status, latency, prompt, out)
        self._observe(kind, answer)

    def _observe(self, kind: str, a: Answer) -> None:
        """Metrics now; the request log and the traffic log off the request path."""
        self.metrics.observe_request(
            a.version, a.arm, kind, a.status_code, a.latency_s, a.prompt_tokens,
            a.completion_tokens, a.ext.get("confidence"),
        )  # fmt: skip
        self.log.log_answer(a)

    # --- helpers ------------------------------------------------------------------------------

    def _app(self, version: str) -> str:
        return model_app_name(self.watcher.table().model, version)

    def _handle(self, version: str) -> Any:
        handle = self._handles.get(version)
        if handle is None:
            handle = serve.get_deployment_handle("ModelServer", self._app(version))
            self._handles[version] = handle
        return handle
