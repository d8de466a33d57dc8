"""The HTTP door of a model server served directly (``hybridft serve``, a route prefix): locked
like the canary router's, with the router's own parts, not a copy of them.

A request other than ``/health`` and ``/metrics`` needs an API key from the router's key store
(``authorize``; ``hybridft keys create``), its body is capped before it is read
(``read_capped_body``, the router's limit), and ``/metrics`` is the Prometheus text of the
router's ``Metrics``. ``insecure_local`` serves without keys, to loopback clients only. Behind
the router a model server has no route prefix: no HTTP request reaches this door (the router
calls it through a handle or the loopback channel), and its key store is never opened.
"""

# No `from __future__ import annotations`: Serve pickles the model server's FastAPI app, this
# middleware included, and FastAPI reads real annotations.
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybridft.errors import UserError
from hybridft.serve.canary import ServePaths
from hybridft.serve.http_requests import GenerationFastPath, authorize, read_capped_body
from hybridft.serve.keys import KeyStore
from hybridft.serve.metrics import Metrics
from hybridft.serve.openai_api import OpenAIError
from hybridft.serve.openai_http import (
    MAX_BODY_BYTES,
    VERSION_HEADER,
    error_response,
    unexpected_error_response,
)

OPEN_PATHS = ("/health", "/metrics")  # no key, as on the router
DIRECT_ARM = "direct"  # the metrics' arm label: served directly, not routed by the router


@dataclass(frozen=True)
class DoorSpec:
    """How a model server's HTTP door lets requests in (a ``ModelServer`` argument).

    Neither ``keys`` nor ``insecure_local`` (the default): every request that needs a key is
    refused, so a door nobody configured stays shut.
    """

    keys: str | None = None  # the key store file (the router's keys.db)
    insecure_local: bool = False  # no keys; loopback clients only
    max_body_bytes: int = MAX_BODY_BYTES


def door_spec(
    serve_dir: str | Path, insecure_local: bool = False, max_body_bytes: int = MAX_BODY_BYTES
) -> DoorSpec:
    """The door over the key store of the endpoint state folder ``serve_dir`` (the router's
    and ``hybridft keys``' ``--serve-dir``), or without keys when ``insecure_local``."""
    keys = None if insecure_local else str(ServePaths(serve_dir).keys)
    return DoorSpec(keys, insecure_local, max_body_bytes)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, insecure_local: bool) -> None:
    """No API keys only on a loopback host.

    Raises:
        UserError: ``insecure_local`` on another host.
    """
    if insecure_local and not is_loopback(host):
        raise UserError(
            f"--insecure-local: serving without API keys is allowed on a loopback host only "
            f"(127.0.0.1, ::1, localhost), got --host {host}"
        )


def check_door(host: str, door: DoorSpec) -> None:
    """Before serving on ``host``: no keys only on a loopback host; otherwise a key store with
    at least one active key (a door no key opens is a mistake, said before serving).

    Raises:
        UserError: ``insecure_local`` on another host, or a key store without active keys.
    """
    check_host(host, door.insecure_local)
    if door.insecure_local:
        return
    if door.keys is None:
        raise UserError("serve: no key store for the HTTP door (a serve dir or insecure_local)")
    if not KeyStore(door.keys).list():
        folder = Path(door.keys).parent
        raise UserError(
            f"serve: no API keys in {door.keys}: create one with `hybridft keys create NAME "
            f"--serve-dir {folder}` (clients send it as the OpenAI api_key), or serve without "
            "keys on a loopback host with --insecure-local"
        )


def _servable() -> Any:
    # the replica's ModelServer, reached the way Serve itself injects `self` into routes
    return serve.get_replica_context().servable_object


class ModelServerDoor:
    """ASGI middleware of the model server: the version header on every response, then the
    door (key, body cap, ``/metrics``) in front of its routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = Metrics()  # per replica, as the router's
        self._keys: KeyStore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = _servable()
        tag = getattr(server, "version_tag", None)
        status = [500]

        async def send_stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if tag is not None:
                    header = (VERSION_HEADER.encode(), str(tag).encode())
                    message["headers"] = [*message.get("headers", []), header]
            await send(message)

        path = _route_path(scope)
        if path == "/metrics" and scope.get("method") == "GET":
            body, content_type = self.metrics.exposition()
            await Response(body, media_type=content_type)(scope, receive, send_stamped)
            return
        if path in OPEN_PATHS:
            await self.app(scope, receive, send_stamped)
            return
        started = time.perf_counter()
        door = getattr(server, "door", None) or DoorSpec()
        try:
            receive = await self._let_in(door, scope, receive)
        except ClientDisconnect:
            return
        except OpenAIError as exc:
            await error_response(exc)(scope, receive, send_stamped)
        except Exception as exc:  # noqa: BLE001 - a broken key store answers 500, never crashes
            response = unexpected_error_response(scope.get("method", ""), path, exc)
            await response(scope, receive, send_stamped)
        else:
            try:
                await self.app(scope, receive, send_stamped)
            finally:  # an error the app re-raises (answered 500 outside) is counted too
                self._observe(server, path, status[0], time.perf_counter() - started)
            return
        self._observe(server, path, status[0], time.perf_counter() - started)

    def _observe(self, server: Any, path: str, status: int, latency_s: float) -> None:
        route = GenerationFastPath.ROUTES.get(path) or (
            "models" if path.startswith("/v1/models") else "other"
        )
        version = str(getattr(server, "version", "unknown"))
        self.metrics.observe_request(version, DIRECT_ARM, route, status, latency_s)

    async def _let_in(self, door: DoorSpec, scope: Scope, receive: Receive) -> Receive:
        """Check the request at the door; the ``receive`` the routes read the body from.

        Raises:
            OpenAIError: 401 without a valid key, 403 for a remote client of an insecure-local
                door, 413 for a body over the limit (refused before it is read).
        """
        request = Request(scope, receive)
        if door.insecure_local:
            client = scope.get("client") or ("", 0)
            if not is_loopback(str(client[0])):
                raise OpenAIError(
                    403,
                    "this model server takes requests without API keys from loopback only",
                    type="permission_error",
                )
        elif door.keys is None:
            raise OpenAIError(
                401,
                "this model server takes no HTTP requests without a key store: serve it with "
                "`hybridft serve`, or call it through the canary router",
                type="authentication_error",
                code="invalid_api_key",
            )
        else:
            if self._keys is None:
                self._keys = KeyStore(door.keys)
            authorize(self._keys, request)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return receive
        body = await read_capped_body(request, door.max_body_bytes)
        return _replay(body, receive)


def _route_path(scope: Scope) -> str:
    """The path under the application's route prefix (Serve passes it as ``root_path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the routes the body read at the door, then the client's own
    messages (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
