"""The generation engine: one HF causal LM + tokenizer, a KV-cached decode loop, stop handling.

A hand-written loop rather than ``model.generate``: it gives a per-request seeded
``torch.Generator`` (``generate`` samples from the global RNG), exact stop-string truncation and
token-by-token streaming without a helper thread. It is checked against a full forward pass in
the tests. ``generate_batch`` runs many requests as one left-padded batch (Serve's dynamic
batching), each row answering exactly as it would alone. Every tensor, and every request's RNG,
lives on the engine's device (the model's). A request may ask for its tokens' logprobs, and its
prompt's (``serve.logprobs``: from the same forward passes). ``label_probs`` scores labels with
evaluation's own scorer (``evaluate.scoring``): a task's fitted temperature meets the scores it
was fitted on.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybridft.errors import UserError
from hybridft.model.device import Dtype, load_model_on, model_device, resolve_device
from hybridft.serve.decoding import (
    BatchRow,
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
from hybridft.serve.logprobs import TokenLogprob, prompt_logprobs, step_logprobs
from hybridft.serve.sampling import (
    SamplingParams,
    first_stop,
    pick_token,
    pick_tokens,
    request_generator,
)

__all__ = ["Completion", "FinishReason", "GenerationEngine", "SamplingParams", "StreamStep"]

if TYPE_CHECKING:
    from hybridft.evaluate.scoring import LabelEnd


class GenerationEngine(PromptIds):
    """Generate text from a loaded model and tokenizer (``torch.inference_mode``).

    Thread-safe for concurrent requests: each call owns its cache and generator, the model is
    only read. ``device``: where to run (the model is moved there); None keeps the model's own.
    """

    name = "hf"  # the engine named when a request asks for what it cannot do
    structured_outputs = False  # response_format json_object / json_schema: no constrained decoding

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None) -> None:
        if device is not None:
            model = model.to(resolve_device(device))
        self.model = model.eval()
        self.device = model_device(model)
        self.tokenizer = tokenizer
        self.eos_ids = _eos_ids(model, tokenizer)
        self.max_position = _max_position(model)
        # transformers 5.x is renaming the forward kwarg `past_key_values` to `cache`.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # Only the last position's logits are needed to pick a token: skip the rest of the lm_head.
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        pad = tokenizer.pad_token_id
        self._pad_id = min(self.eos_ids) if pad is None else int(pad)

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, device: str = "cpu", dtype: Dtype = "auto"
    ) -> GenerationEngine:
        """Load a local HF causal-LM directory (safetensors only).

        Args:
            model_dir: Directory with config.json, *.safetensors and the tokenizer files.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when torch sees one).
            dtype: The weights' dtype; ``auto`` is bfloat16 on CUDA, float32 on CPU.

        Returns:
            The engine, ready to generate.
        """

        where = resolve_device(device)  # a bad device fails before anything loads
        tokenizer = load_chat_tokenizer(model_dir)
        return cls(load_model_on(model_dir, where, dtype), tokenizer)

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Generate one whole completion for ``prompt_ids``."""
        pieces: list[str] = []
        entries: list[TokenLogprob] = []
        for step in self.stream(prompt_ids, params):
            pieces.append(step.text)
            entries.extend(step.logprobs)
            if step.finish_reason is not None:
                return Completion(
                    "".join(pieces),
                    step.finish_reason,
                    step.prompt_tokens,
                    step.completion_tokens,
                    logprobs=None if params.logprobs is None else tuple(entries),
                    prompt_logprobs=step.prompt_logprobs,
                )
        raise AssertionError("stream ended without a finish step")  # stream always finishes

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[StreamStep]:
        """Yield new text as it becomes final; the last step has the finish reason.

        Text that could still become the start of a stop sequence, or an unfinished UTF-8
        character, is held back until it is decided, so concatenating the steps always equals
        the non-streamed answer.

        Args:
            prompt_ids: The prompt tokens; must be non-empty and shorter than ``max_position``.
            params: Sampling parameters.

        Yields:
            StreamStep pieces; exactly one (the last) has ``finish_reason`` set. With
            ``params.logprobs``, each step carries the entries of the tokens decoded since the
            step before (so they add up to the answer's); the last, with
            ``params.prompt_logprobs``, the prompt's.
        """
        import torch

        prompt_len = len(prompt_ids)
        budget = self._budget(prompt_ids, params.max_tokens)
        holdback = stop_holdback(params.stop)
        generator = request_generator(params, self.device)

        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        new_ids: list[int] = []
        entries: list[TokenLogprob] = []  # logprobs of the tokens not yet handed out
        scored: tuple[TokenLogprob | None, ...] | None = None
        text, emitted = "", 0
        finish: FinishReason = "length"
        inputs = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        # Scoring the prompt needs its forward pass even when no token is asked for.
        passes = max(budget, int(params.prompt_logprobs is not None))
        with torch.inference_mode():
            for step in range(passes):
                out = self.model(input_ids=inputs, use_cache=True, **{self._cache_kwarg: cache})
                if step == 0 and params.prompt_logprobs is not None:
                    scored = prompt_logprobs(out.logits[0], prompt_ids, params.prompt_logprobs)
                if step == budget:
                    break
                token = pick_token(out.logits[0, -1], params, generator)
                new_ids.append(token)
                if params.logprobs is not None:
                    picked = step_logprobs(out.logits[0, -1:], [token], [params.logprobs])
                    entries.extend(e for e in picked if e is not None)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
                cut = first_stop(text, params.stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
                ready = ready_length(text, holdback)
                if ready > emitted:
                    yield StreamStep(text[emitted:ready], logprobs=tuple(entries))
                    emitted, entries = ready, []
                inputs = torch.tensor([[token]], dtype=torch.long, device=self.device)
        yield StreamStep(
            text[emitted:], finish, prompt_len, len(new_ids), tuple(entries), prompt_logprobs=scored
        )

    def generate_batch(
        self, requests: Sequence[tuple[Sequence[int], SamplingParams]]
    ) -> list[Completion | Exception]:
        """Generate several completions with one batched, KV-cached decode (one forward a step).

        Prompts are left-padded to one length and masked, so each row gets the answer
        ``generate`` gives it alone (same greedy tokens, same seeded samples, same stop rules). A
        row that finishes leaves the batch, cache included, so the others go on without it.

        Args:
            requests: ``(prompt_ids, params)`` pairs.

        Returns:
            One entry per request, in order: its ``Completion``, or the ``UserError`` that
            rejected it (a rejected request does not affect the others).
        """
        results: dict[int, Completion | Exception] = {}
        rows: list[BatchRow] = []
        for slot, (prompt_ids, params) in enumerate(requests):
            try:
                budget = self._budget(prompt_ids, params.max_tokens)
            except UserError as err:
                results[slot] = err
                continue
            generator = request_generator(params, self.device)
            row = BatchRow(slot, list(prompt_ids), params, budget, generator)
            if budget > 0 or params.prompt_logprobs is not None:  # scoring the prompt: a prefill
                rows.append(row)
            else:
                results[slot] = row.completion(self.tokenizer)
        if rows:
            self._decode_batch(rows)
        for row in rows:
            results[row.slot] = row.completion(self.tokenizer)
        return [results[slot] for slot in range(len(requests))]

    def label_probs(
        self,
        prompt: str | Sequence[dict[str, str]],
        labels: Sequence[str],
        temperature: float = 1.0,
        label_end: LabelEnd = "end_of_turn",
    ) -> dict[str, float]:
        """Probability of each candidate label as the answer to ``prompt``.

        Scored by ``evaluate.scoring``, the scorer evaluation fits the task's temperature on:
        chat turns get each label inside the chat template (the tokens past the generation
        prompt are scored), a raw completion prompt gets it right after its text. The scores
        are normalised by ``calibration.apply_temperature``, as evaluation does, so with the
        fitted temperature this is the evaluated calibrated probability.

        Args:
            prompt: The chat turns (``{"role", "content"}``, as ``chat_prompt_ids`` takes
                them) or a raw completion prompt.
            labels: The candidate labels: non-empty, distinct strings, exactly as the answer
                would spell them.
            temperature: Divides the scores before the softmax; ``> 1`` flattens.
            label_end: What ends the label in the task's answers (``evaluate.scoring``):
                ``"end_of_turn"`` when the label is the whole answer, ``"newline"`` when a
                reply follows it.

        Returns:
            ``{label: probability}`` in the order of ``labels``, summing to 1.
        """
        # heavy: the scorer imports torch; the router imports this module and never runs a model
        from hybridft.evaluate import scoring

        encoded = encode_labels(
            self.tokenizer, prompt, labels, temperature, label_end, self.max_position
        )
        scores = scoring.score_continuations(self.model, encoded)
        return label_distribution(labels, scores, temperature)

    def _budget(self, prompt_ids: Sequence[int], max_tokens: int) -> int:
        return token_budget(prompt_ids, max_tokens, self.vocab_size, self.max_position)

    def _decode_batch(self, rows: list[BatchRow]) -> None:
        """Decode ``rows`` together until every one has finished (a row with no budget, there to
        score its prompt, finishes after the prefill)."""
        import torch
        from transformers import DynamicCache

        width, device = max(len(row.prompt) for row in rows), self.device
        with torch.inference_mode():
            inputs = torch.full((len(rows), width), self._pad_id, dtype=torch.long, device=device)
            # Room for every step's column; column `length - 1` is the newest token.
            steps = max(max(row.budget for row in rows) - 1, 0)
            mask = torch.zeros((len(rows), width + steps), dtype=torch.long, device=device)
            for i, row in enumerate(rows):
                inputs[i, width - len(row.prompt) :] = torch.tensor(row.prompt, device=device)
                mask[i, width - len(row.prompt) : width] = 1
            positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model.config)
            kwargs = {self._cache_kwarg: cache, "use_cache": True}
            # The prefill keeps every position's logits when a row scores its prompt (echo):
            # rows x width x vocab of them, for this one forward pass.
            scoring = any(row.params.prompt_logprobs is not None for row in rows)
            length = width
            while True:
                out = self.model(
                    input_ids=inputs,
                    attention_mask=mask[:, :length],
                    position_ids=positions,
                    **kwargs,
                    **({} if scoring else self._last_logits),
                )
                if scoring:
                    for i, row in enumerate(rows):
                        row.score_prompt(out.logits[i, width - len(row.prompt) :])
                    scoring = False
                tokens = pick_tokens(out.logits[:, -1], rows)
                entries = step_logprobs(
                    out.logits[:, -1], tokens, [row.params.logprobs for row in rows]
                )
                keep = [
                    i
                    for i, (row, token, entry) in enumerate(zip(rows, tokens, entries, strict=True))
                    if row.budget > 0 and not row.push(token, entry, self.tokenizer, self.eos_ids)
                ]
                if not keep:
                    return
                if len(keep) < len(rows):
                    # Finished rows leave the batch: no more compute spent on them.
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                    rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]
                mask[:, length] = 1
                length += 1
                positions = positions[:, -1:] + 1
                inputs = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if not ids:
        raise UserError("model has no eos token (tokenizer.eos_token / generation_config)")
    return frozenset(ids)


def _max_position(model: Any) -> int | None:
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if value else None
