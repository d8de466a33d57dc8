"""OpenAI-compatible request/response schemas and error bodies.

Requests are strict (``extra="forbid"``, no type coercion) so a client bug surfaces as a 400 naming
the offending field instead of a silently different generation. Responses follow the shapes the
official ``openai`` client parses; only the fields we fill are declared.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from hybridft.serve.generation import FinishReason
from hybridft.serve.openai_logprobs import ChatLogprobs, CompletionLogprobs

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 4  # the OpenAI limit
MAX_CHOICES = 128  # n (times the prompts of a completion): OpenAI's limit on n


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_dict(self) -> dict[str, str]:
        # Chat templates know system/user/assistant; OpenAI's "developer" role is a system turn.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(_Request):
    include_usage: bool = False


StopString = Annotated[str, Field(min_length=1)]
Stop = str | Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
# A completion prompt: a string, a list of strings, token ids, or a list of token-id lists.
Prompt = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[StopString], Field(min_length=1)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1)]
)


class ResponseFormat(_Request):
    """``text``, or structured output (``json_object`` / ``json_schema``: engine-dependent)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _GenerationRequest(_Request):
    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    stop: Stop | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None  # int64, as OpenAI's
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # hybridft extensions (the openai client sends them with ``extra_body``): score the prompt's
    # answer over these candidate labels, or over the labels of one of the model's evaluated tasks
    # (then with the temperature fitted on its calibration split).
    labels: Annotated[list[StopString], Field(min_length=2, max_length=64)] | None = None
    task: str | None = None

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: Prompt
    # The OpenAI default; 0 only with ``echo`` (score the prompt, generate nothing).
    max_tokens: Annotated[int, Field(ge=0)] = 16
    echo: bool | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_error(cls, value: Any, handler: Any) -> Any:
        # One error for the union, not one per form it is not.
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "prompt_type",
                "expected a non-empty string, a list of strings, a list of token ids "
                "(integers >= 0) or a list of token-id lists",
            ) from None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        """Each prompt the request sends (a text or token ids); each gets its own choices."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        ids = [p for p in self.prompt if isinstance(p, int)]
        return [ids] if ids else [p for p in self.prompt if not isinstance(p, int)]


# --- responses --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hybridft"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class TextCompletion(BaseModel):
    """One ``text_completion`` object: a whole answer, or one streamed chunk of it."""

    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- errors -----------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error the server answers with, in OpenAI's ``{"error": {...}}`` shape.

    Args:
        status: HTTP status code.
        message: One line for the client, naming what was expected and what was found.
        param: The request field at fault, if one is.
        code: A machine-readable code (``model_not_found``, ``context_length_exceeded``, ...).
        type: OpenAI's error category.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def error_from_validation(errors: list[Any]) -> OpenAIError:
    """Turn FastAPI/pydantic validation errors into one 400 naming the first bad field."""
    if not errors:
        return OpenAIError(400, "invalid request body", code="invalid_request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return OpenAIError(
            400,
            f"could not parse the JSON body of the request ({detail}); send a JSON object",
            code="invalid_json",
        )
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing":
        message = "field required"
    elif first.get("type") == "extra_forbidden":
        message = "unknown field, or one this server does not support"
    elif "input" in first:
        message = f"{message}, got {_short(first['input'])}"
    where = f"{param}: " if param else "request body: "
    # A field can fail several ways at once (each form of a union): count fields, not errors.
    others = {_field_of(e) for e in errors[1:]} - {_field_of(first)}
    extra = f" (and {len(others)} more invalid field{'s' * (len(others) > 1)})" if others else ""
    return OpenAIError(400, f"{where}{message}{extra}", param=param, code="invalid_value")


def _field_of(error: Any) -> str:
    return next((str(p) for p in error.get("loc", ()) if p != "body"), "")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_request(kind: str, body: Any) -> ChatCompletionRequest | CompletionRequest:
    """Validate a decoded JSON body for ``kind`` (``chat`` or ``completion``) into its request.

    Raises:
        OpenAIError: 400 naming the first bad field (the same error FastAPI's validation gives).
    """
    model = ChatCompletionRequest if kind == "chat" else CompletionRequest
    if not isinstance(body, dict):
        raise OpenAIError(
            400,
            f"request body: expected a JSON object, got {type(body).__name__}",
            code="invalid_request",
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise error_from_validation(list(exc.errors())) from None


def prompt_text(kind: str, parsed: Any) -> str:
    """The user's text of a request: the user turns of a chat, or the completion prompt."""
    if kind == "chat":
        return "\n".join(m.text() for m in parsed.messages if m.role == "user")
    prompt = parsed.prompt
    if isinstance(prompt, str):
        return prompt
    return "\n".join(p if isinstance(p, str) else str(p) for p in prompt) if prompt else ""
