"""The vllm engine's HTTP clients to its vLLM server child (``serve.vllm_engine``).

vLLM's server (uvicorn) closes a keep-alive connection idle for 5 s; httpx's pool kept one 5 s
too, so a request could go out on a connection the server was closing (the likely cause of one
500 in a demo run: "ReadError: [Errno 9] Bad file descriptor"). Ours expire first; a request
whose connection breaks anyway is sent once more on a new one (a completion is idempotent).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from hybridft.serve.vllm_process import VLLMServer

REQUEST_TIMEOUT_S = 600.0
MAX_CONCURRENT = 64  # requests in flight to vLLM from one replica's threads
KEEPALIVE_S = 2.0
RESENT_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)

logger = logging.getLogger(__name__)


def _options(server: VLLMServer) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=MAX_CONCURRENT, keepalive_expiry=KEEPALIVE_S)
    return {
        "base_url": server.url,
        "headers": server.headers,
        "timeout": REQUEST_TIMEOUT_S,
        "limits": limits,
    }


def sync_client(server: VLLMServer) -> httpx.Client:
    return httpx.Client(**_options(server))


def async_client(server: VLLMServer) -> httpx.AsyncClient:
    """One per event loop: an ``httpx.AsyncClient`` is bound to the loop it first ran in."""
    return httpx.AsyncClient(**_options(server))


def post_json(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """``client.post``, sent once more if the connection broke (``RESENT_ERRORS``)."""
    try:
        return client.post(path, json=body)
    except RESENT_ERRORS as exc:
        logger.info("vLLM connection broke (%s: %s); sending again", type(exc).__name__, exc)
        return client.post(path, json=body)


async def apost_json(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """``post_json`` on an ``httpx.AsyncClient``."""
    try:
        return await client.post(path, json=body)
    except RESENT_ERRORS as exc:
        logger.info("vLLM connection broke (%s: %s); sending again", type(exc).__name__, exc)
        return await client.post(path, json=body)
