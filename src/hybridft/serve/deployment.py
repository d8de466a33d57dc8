"""Ray Serve deployment of one model version behind OpenAI-compatible endpoints.

Every response (errors included) names the version that answered: the ``model`` field, the
``system_fingerprint`` field ``<name>/<version>`` and the ``x-hybridft-model-version`` header.

Deploy it with :mod:`hybridft.serve.launch` (``deploy``, or the Serve application builder
``hybridft.serve.launch:build_app``).
"""

# No `from __future__ import annotations` here: Serve cloudpickles the routes by value with only
# the globals their bytecode uses, so string annotations (the request models) would not resolve in
# the replica and FastAPI would read the body parameter as a query parameter.
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from ray import serve

from hybridft.errors import UserError
from hybridft.model.device import Dtype
from hybridft.serve.adapters import AdapterHandle, AdapterSet
from hybridft.serve.channel import ChannelServer
from hybridft.serve.engines import DEFAULT_ENGINE, EngineName, load_engine
from hybridft.serve.model_door import DoorSpec, ModelServerDoor
from hybridft.serve.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIError,
    parse_request,
)
from hybridft.serve.openai_choices import Row, answer_body, choice_rows, token_text_of
from hybridft.serve.openai_http import install_error_handlers
from hybridft.serve.openai_stream import chat_chunks, completion_chunks, sse_events
from hybridft.serve.request_checks import (
    check_fields,
    checked_prompt,
    label_set,
    sampling_params,
    served_adapter,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_LIMIT = 512
# How long a request waits for others to join its batch (a full batch starts at once), when
# the replica is busy (a lone request on an idle replica starts at once). Measured with
# benchmarks/serve_throughput.py at 16 clients on 2 cores: 4 ms gave 1.24x the one-at-a-time
# baseline, 20 ms 2.2-2.7x, 40 ms 6.3x.
DEFAULT_BATCH_WAIT_S = 0.04
# "Busy": other requests in flight, or the last batch served several requests and ended less
# than this long ago. Clients answered together come back one by one; without this memory the
# first of them found nothing in flight, went alone, and the rest waited for its whole decode.
BUSY_MEMORY_S = 1.0
MAX_ADAPTERS_PER_REPLICA = 4  # LoRA adapters one replica keeps loaded (Serve unloads by LRU)

app = FastAPI(title="hybridft model server", docs_url=None, redoc_url=None)


def _sse(chunks: Iterator[BaseModel]) -> StreamingResponse:
    return StreamingResponse(sse_events(chunks), media_type="text/event-stream")


# Everything the routes use must exist before this point: @serve.ingress pickles the app (routes
# included, by value, with the module globals defined so far) when the class is decorated.
app.add_middleware(ModelServerDoor)  # version header; API key, body cap, /metrics (model_door)
install_error_handlers(app)


def _start_channel(answer: Any) -> Any:
    """The replica's direct channel for the canary router (``serve.channel``), listening on
    loopback; ``None`` outside a Serve replica or without a running loop."""
    try:
        app_name = serve.get_replica_context().app_name
        loop = asyncio.get_running_loop()
    except (RuntimeError, AttributeError):
        return None
    server = ChannelServer(answer, app_name)

    async def start() -> None:
        try:
            await server.start()
        except OSError as exc:  # the router keeps using the handle
            logger.warning("direct channel not started: %s", exc)

    loop.create_task(start())
    return server


async def _in_thread(events: Iterator[str]) -> AsyncIterator[str]:
    """Drive a blocking generator from a thread, one item at a time, off the event loop."""
    done = object()
    while True:
        item = await asyncio.to_thread(next, events, done)
        if item is done:
            return
        yield item  # type: ignore[misc]


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
@serve.ingress(app)
class ModelServer:
    """One model version: loads the HF directory once per replica, answers OpenAI requests.

    Reachable two ways: over HTTP (its own routes, when the application has a route prefix) and
    through a DeploymentHandle (``answer`` / ``answer_stream``), which is how the canary router
    calls it. Non-streamed generations from concurrent requests are decoded together in one
    batched, KV-cached loop (``serve.batch``).

    With ``adapters`` (name -> peft LoRA directory), model id ``<name>:<adapter>`` answers with
    that adapter on the shared base (``serve.multiplexed``: loaded on first use, LRU-unloaded;
    callers that set the multiplexed model id reach a replica that has it loaded) on the hf
    engine; on the vllm engine every replica's server has them all (vLLM's multi-LoRA).

    ``device`` / ``dtype``: where and in which dtype the replica runs the model (``"cuda"`` when
    the deployment reserves GPUs, see ``launch.build_app``). ``door``: who its HTTP routes let
    in (``model_door``: the router's API keys and body cap; not used behind the router).
    """

    def __init__(
        self,
        model_dir: str,
        model_name: str,
        version: str,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        tasks: dict[str, dict[str, Any]] | None = None,
        max_batch_size: int = 16,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        adapters: dict[str, str] | None = None,
        channel: bool = True,
        device: str = "cpu",
        dtype: Dtype = "auto",
        door: DoorSpec | None = None,
        engine: EngineName = DEFAULT_ENGINE,
        engine_threads: int = 1,
        deployed_as: str = "",
    ) -> None:
        self.engine = load_engine(engine, model_dir, device, dtype, engine_threads, adapters)
        # vllm batches concurrent requests itself (no serve.batch window), and an adapter is a
        # request argument (vLLM's multi-LoRA, every adapter loaded at start; ``self.adapters``
        # then only names them); hf: serve.batch's window, an adapter swapped in under a lock
        self._engine_batches = getattr(self.engine, "continuous_batching", False)
        self.adapters = AdapterSet(self.engine.model, adapters) if adapters else None
        self.model_name = model_name
        self.version = version
        self.version_tag = f"{model_name}/{version}"
        self.door = door  # read by ModelServerDoor; None: HTTP requests need a key, none opens
        self.max_tokens_limit = max_tokens_limit
        self.tasks = tasks or {}
        self.created = int(time.time())
        self.deployed_as = deployed_as  # launch.deployment_digest: what it was built from
        batched: Any = self._generate_batched  # @serve.batch's setters (untyped in Ray)
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(batch_wait_s)
        self.batch_wait_s = batch_wait_s
        self._in_flight = 0  # non-streamed requests waiting for or inside a decode batch
        self.batches = {"batches": 0, "requests": 0}  # decode loops run, requests they served
        self._last_batch = (0, float("-inf"))  # (requests, monotonic end) of the latest batch
        self.channel = _start_channel(self.answer) if channel else None

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        channel = getattr(self, "channel", None)  # None, or absent if __init__ failed
        if channel is not None:
            channel.close()
        close = getattr(getattr(self, "engine", None), "close", None)  # vllm: its server
        if close is not None:
            close()

    def check_health(self) -> None:
        """Serve's periodic replica health check: a replica whose vLLM server died is replaced."""
        alive = getattr(self.engine, "alive", None)
        if alive is not None and not alive():
            raise RuntimeError(f"the {self.engine.name} engine's server is not running")

    # --- the handle API (the canary router) ---------------------------------------------------

    async def answer(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a ``chat`` or ``completion`` body: ``{"status": int, "body": dict}``."""
        try:
            request = parse_request(kind, body)
            if request.stream:
                raise OpenAIError(400, "stream: use answer_stream for streamed requests")
            return {"status": 200, "body": await self._complete(kind, request)}
        except OpenAIError as err:
            return {"status": err.status, "body": err.body()}

    async def answer_stream(self, kind: str, body: dict[str, Any]) -> AsyncIterator[str]:
        """Server-sent events for a streamed request (errors in-band, as ``sse_events`` does)."""
        try:
            request = parse_request(kind, body)
            steps = self._stream_steps(kind, request)
        except OpenAIError as err:
            yield f"data: {json.dumps(err.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        async for event in _in_thread(sse_events(steps)):
            yield event

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "version": self.version,
            "engine": self.engine.name,
            "created": self.created,
            "deployed_as": self.deployed_as,
            "pid": os.getpid(),
            "tasks": {k: v.get("labels", []) for k, v in self.tasks.items()},
            "adapters": self.adapters.names() if self.adapters else [],
            "batching": {"wait_s": self.batch_wait_s, "in_flight": self._in_flight, **self.batches},
        }

    # --- HTTP routes ----------------------------------------------------------------------------

    @app.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok", "model": self.model_name, "version": self.version}

    @app.get("/v1/models")
    def list_models(self) -> dict[str, Any]:
        names = [f"{self.model_name}:{a}" for a in (self.adapters.names() if self.adapters else [])]
        return ModelList(data=[self._card(), *(self._card(n) for n in names)]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    def get_model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return self._card(model_id).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatCompletionRequest) -> Response:
        if request.stream:
            return _sse(self._stream_steps("chat", request))
        return JSONResponse(await self._complete("chat", request))

    @app.post("/v1/completions")
    async def completions(self, request: CompletionRequest) -> Response:
        if request.stream:
            return _sse(self._stream_steps("completion", request))
        return JSONResponse(await self._complete("completion", request))

    # --- helpers ------------------------------------------------------------------------------

    async def _complete(self, kind: str, request: Any) -> dict[str, Any]:
        adapter = self._check_model(request.model)
        if adapter is not None and not self._engine_batches:
            await self._adapter(adapter)  # Serve's multiplexed cache (LRU per replica)
        check_fields(request, self.engine)
        prompts = self._prompts(kind, request)
        scoring = label_set(request, self.tasks)
        params = sampling_params(request, self.max_tokens_limit)
        rows = choice_rows(prompts, request.n, params)
        if self._engine_batches:
            # vLLM batches concurrent requests itself: no window to wait in.
            outs = await self.engine.agenerate_batch(rows, adapter)
        else:
            outs = await self._generate_in_window(rows, adapter)
        for out in outs:
            if isinstance(out, Exception):
                self._raise(out)
        body = answer_body(kind, request, prompts, outs, self._ids(), self.engine.tokenizer)
        if scoring is not None:
            labels, temperature, label_end, task = scoring
            # Scored as evaluation scores (``evaluate.scoring``): from the turns, not the ids.
            if kind == "chat":
                scored: Any = [m.template_dict() for m in request.messages]
            else:
                scored = request.prompt
            args = (scored, labels, temperature, label_end)
            try:
                probs = await asyncio.to_thread(self._label_probs, adapter, *args)
            except Exception as exc:
                self._raise(exc)
            top = max(probs, key=probs.__getitem__)
            body["hybridft"] = {
                "task": task,
                "label_probs": probs,
                "label": top,
                "confidence": probs[top],
                "calibrated": temperature != 1.0,
            }
        return body

    async def _generate_in_window(self, rows: list[Row], adapter: str | None) -> list[Any]:
        """The hf engine's rows, decoded with whatever requests join them in the batch window."""
        self._in_flight += 1
        try:
            # Hold a batch open only when the replica is busy: a lone request on an idle
            # replica has nobody to wait for (with the 40 ms window it took ~57 ms instead of
            # ~20 ms); under load the window fills batches as before.
            wait = self.batch_wait_s if self._busy() else 0.0
            batched: Any = self._generate_batched  # @serve.batch's setter (untyped in Ray)
            batched.set_batch_wait_timeout_s(wait)
            # Every choice of the request (prompts x n) rides in the same decode batch.
            outs: list[Any] = await self._generate_batched((rows, adapter))
            return outs
        finally:
            self._in_flight -= 1

    def _stream_steps(self, kind: str, request: Any) -> Iterator[BaseModel]:
        adapter = self._check_model(request.model)
        if request.labels or request.task:
            raise OpenAIError(
                400,
                "labels/task: label probabilities are not returned on streamed requests",
                param="stream",
            )
        check_fields(request, self.engine)  # one choice only: n=1, one prompt
        prompt_ids = self._prompts(kind, request)[0]
        params = sampling_params(request, self.max_tokens_limit)
        if self._engine_batches:
            steps = self.engine.stream(prompt_ids, params, adapter)
        else:
            steps = self.engine.stream(prompt_ids, params)
            if self.adapters is not None:
                steps = self.adapters.stepwise(steps, adapter)
        chunks = chat_chunks if kind == "chat" else completion_chunks
        token_text = token_text_of(self.engine.tokenizer)
        return chunks(steps, self._ids(), request.include_usage(), token_text)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _generate_batched(self, items: list[tuple[list[Row], str | None]]) -> list[Any]:
        # One decode loop for every request that arrived within the wait window (one per
        # adapter when several adapters' requests share the window); a request brings its
        # rows (choices) and gets their answers back in order.
        return await asyncio.to_thread(self._generate_groups, items)

    def _generate_groups(self, items: list[tuple[list[Row], str | None]]) -> list[list[Any]]:
        self.batches["batches"] += 1
        self.batches["requests"] += len(items)
        out: list[list[Any]] = [[] for _ in items]
        try:
            for adapter in dict.fromkeys(a for _, a in items):
                idx = [i for i, item in enumerate(items) if item[1] == adapter]
                with self._using(adapter):
                    results = self.engine.generate_batch([r for i in idx for r in items[i][0]])
                answers = iter(results)
                for i in idx:
                    out[i] = [next(answers) for _ in items[i][0]]
        finally:
            self._last_batch = (len(items), time.monotonic())
        return out

    def _busy(self) -> bool:
        """Other requests in flight, or a batch of several ended within ``BUSY_MEMORY_S``."""
        size, ended = self._last_batch
        return self._in_flight > 1 or (size > 1 and time.monotonic() - ended < BUSY_MEMORY_S)

    def _label_probs(self, adapter: str | None, *args: Any) -> dict[str, float]:
        if self._engine_batches:
            return self.engine.label_probs(*args, adapter=adapter)
        with self._using(adapter):
            return self.engine.label_probs(*args)

    def _using(self, adapter: str | None) -> Any:
        return self.adapters.using(adapter) if self.adapters else contextlib.nullcontext()

    @serve.multiplexed(max_num_models_per_replica=MAX_ADAPTERS_PER_REPLICA)
    async def _adapter(self, adapter: str) -> AdapterHandle:
        assert self.adapters is not None
        await asyncio.to_thread(self.adapters.load, adapter)
        return AdapterHandle(self.adapters, adapter)

    def _ids(self) -> dict[str, str]:
        return {"model": self.model_name, "system_fingerprint": self.version_tag}

    def _card(self, model_id: str | None = None) -> ModelCard:
        return ModelCard(id=model_id or self.model_name, created=self.created)

    def _check_model(self, requested: str) -> str | None:
        return served_adapter(requested, self.model_name, self.adapters)

    def _prompts(self, kind: str, request: Any) -> list[list[int]]:
        """Each prompt's token ids: the chat's, or each completion prompt (text or ids)."""
        if kind == "chat":
            messages = [m.template_dict() for m in request.messages]
            return [self._prompt(lambda: self.engine.chat_prompt_ids(messages), "messages")]
        return [
            self._prompt(lambda p=p: p if isinstance(p, list) else self.engine.text_prompt_ids(p))
            for p in request.prompts()
        ]

    def _prompt(self, encode: Any, param: str = "prompt") -> list[int]:
        try:
            ids = encode()
        except Exception as exc:  # a template that rejects the conversation is the client's
            raise OpenAIError(400, f"{param}: cannot be encoded: {exc}", param=param) from exc
        return checked_prompt(ids, param, self.engine.max_position, self.engine.vocab_size)

    def _raise(self, exc: BaseException) -> NoReturn:
        if isinstance(exc, OpenAIError):
            raise exc
        if isinstance(exc, UserError):
            raise OpenAIError(400, str(exc)) from exc
        # never let one request take the replica down
        logger.error("generation failed: %s: %s", type(exc).__name__, exc)
        raise OpenAIError(500, f"generation failed: {exc}", type="server_error") from exc
