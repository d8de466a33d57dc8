"""What a model server checks in a request before it runs the model: the model id (an adapter or
the base), the label set to score an answer over, the prompt's size, the sampling parameters.
Each raises the OpenAI-shaped error the client sees (400 / 404, with the parameter named)."""

from typing import Any

from hybridft.serve.generation import SamplingParams
from hybridft.serve.openai_api import ChatCompletionRequest, CompletionRequest, OpenAIError


def served_adapter(requested: str, model_name: str, adapters: Any) -> str | None:
    """The adapter a model id names (None: the base model); 404 for anything else."""
    if requested == model_name:
        return None
    base, _, adapter = requested.partition(":")
    if base == model_name and adapters is not None and adapter in adapters.paths:
        return adapter
    served = [model_name] + [f"{model_name}:{a}" for a in (adapters.names() if adapters else [])]
    raise OpenAIError(
        404,
        f"model {requested!r} does not exist here; this server serves {', '.join(served)}",
        param="model",
        code="model_not_found",
    )


def label_set(
    request: Any, tasks: dict[str, Any]
) -> tuple[list[str], float, str, str | None] | None:
    """``(labels, temperature, label_end, task)`` to score the answer over, or None."""
    if request.task is not None:
        if request.task not in tasks:
            known = ", ".join(sorted(tasks)) or "none"
            raise OpenAIError(
                400,
                f"task: {request.task!r} is not a classification task of this model "
                f"(known: {known})",
                param="task",
            )
        entry = tasks[request.task]
        labels = list(request.labels or entry["labels"])
        temperature = float(entry.get("temperature") or 1.0)
        # How the task's answers end their label (``evaluate.scoring.LabelEnd``).
        label_end = entry.get("label_end") or "end_of_turn"
        return labels, temperature, label_end, request.task
    if request.labels:
        if len(set(request.labels)) != len(request.labels):
            raise OpenAIError(400, "labels: expected distinct labels", param="labels")
        return list(request.labels), 1.0, "end_of_turn", None
    return None


def checked_prompt(ids: list[int], param: str, max_position: int | None) -> list[int]:
    """The encoded prompt, refused when empty or leaving no room for an answer."""
    if not ids:
        raise OpenAIError(400, f"{param}: encodes to no tokens", param=param)
    if max_position is not None and len(ids) >= max_position:
        raise OpenAIError(
            400,
            f"{param}: the prompt has {len(ids)} tokens; this model's context is {max_position} "
            "tokens, leaving no room for an answer",
            param=param,
            code="context_length_exceeded",
        )
    return ids


def sampling_params(
    request: ChatCompletionRequest | CompletionRequest, max_tokens_limit: int
) -> SamplingParams:
    """The request's sampling, its ``max_tokens`` checked against the server's cap."""
    requested = request.requested_max_tokens()
    if requested is not None and requested > max_tokens_limit:
        param = (
            "max_completion_tokens"
            if getattr(request, "max_completion_tokens", None)
            else "max_tokens"
        )
        raise OpenAIError(
            400,
            f"{param}: expected at most {max_tokens_limit}, got {requested}",
            param=param,
            code="invalid_value",
        )
    return SamplingParams(
        # Without a limit, answer up to the server's cap; the engine clips to the context.
        max_tokens=requested or max_tokens_limit,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop_sequences(),
        seed=request.seed,
    )
