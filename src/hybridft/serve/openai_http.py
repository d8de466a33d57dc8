"""OpenAI-shaped HTTP answers for every door (a model server, the canary router): the version
header, error responses, and the FastAPI handlers that put every error in OpenAI's shape."""

# No `from __future__ import annotations`: Serve pickles the apps these handlers are installed
# on, and FastAPI reads real annotations.
import logging
from collections.abc import Mapping
from typing import Any

from hybridft.serve.openai_api import OpenAIError, error_from_validation

logger = logging.getLogger(__name__)

VERSION_HEADER = "x-hybridft-model-version"  # on every response: <model>/<version> that answered
# The largest request body a door reads (router and model server): a chat request with a long
# conversation is a few KiB; past the limit the body is refused before it is read.
MAX_BODY_BYTES = 64 * 1024


def error_response(err: OpenAIError, headers: Mapping[str, str] | None = None) -> Any:
    """The JSON response for ``err`` (status and OpenAI error body)."""
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def unexpected_error_response(method: str, path: str, exc: Exception) -> Any:
    """A 500 naming only the exception's type; the log gets its message."""
    logger.error("%s %s failed: %s: %s", method, path, type(exc).__name__, exc)
    err = OpenAIError(500, f"internal error: {type(exc).__name__}", type="server_error")
    return error_response(err)


def install_error_handlers(app: Any) -> None:
    """Answer every error of a FastAPI app in OpenAI's shape: ours, validation, HTTP, unexpected.

    A 404 names the URL, a 405 the method; anything unexpected is a 500 naming only the
    exception type (the log gets the message), and never takes the replica down.
    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_openai_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, OpenAIError)
        return error_response(exc)

    async def on_validation_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, RequestValidationError)
        return error_response(error_from_validation(list(exc.errors())))

    async def on_http_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return error_response(OpenAIError(exc.status_code, message), headers=exc.headers)

    async def on_unexpected_error(request: Any, exc: Exception) -> Any:
        # Starlette still re-raises after answering, so Serve logs the traceback too.
        return unexpected_error_response(request.method, request.url.path, exc)

    app.add_exception_handler(OpenAIError, on_openai_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
