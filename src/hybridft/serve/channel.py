"""A direct request channel from the canary router to the model replicas on its node.

Why: the router's extra hop through a Serve DeploymentHandle costs 4-6 ms at p50 on this 2-core
machine (a plain Ray actor call alone is ~1.9 ms: the actor transport, Serve's replica
scheduler, thread hops), and the router must add <= 1 ms. A loopback TCP round trip is ~0.1 ms.
So each ``ModelServer`` replica also listens on a loopback port, and the router sends its
non-streamed requests there when the replica is on its node. Serve still deploys, restarts and
health-checks the replicas; streamed requests, LoRA adapter requests (Serve's multiplexed
routing keeps them on replicas that have the adapter loaded) and replicas on other nodes keep
the handle. Any channel failure (a replica killed mid-request, a stale address) falls back to
the handle, which retries until a replica answers, so no request is lost. A replica Serve stops
(a redeploy, a scale-down) answers what reaches it after its destructor "draining" (Serve only
waits for the requests it routed, then stops the replica's thread pool): the router resends
those through the handle, which Serve routes to the replicas it keeps.

What the channel does not do: requests sent over it are not counted in Serve's ongoing-request
metrics (no Serve autoscaling on them: replica counts are fixed here) nor limited by
``max_ongoing_requests`` (the router's own limit bounds them).

Protocol: frames of a 4-byte big-endian length and a JSON object. The client's first frame is
``{"token": ...}`` (the replica closes the connection on a wrong one); then requests
``{"id", "kind", "body"}``, answered out of order by ``{"id", "status", "body"}``.

Discovery: a replica writes ``<tmp>/hybridft-channels/<cluster>/<app>/<pid>-<hex>.json`` (``host``,
``port``, ``token``, ``pid``; owner-only permissions) and removes it when it shuts down; the
router lists the folder (at most every ``REFRESH_S``) and drops the files of dead processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import secrets
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hybridft import atomic

FRAME = struct.Struct(">I")
MAX_FRAME_BYTES = 64 * 1024 * 1024
REFRESH_S = 5.0  # how stale the router's list of replicas may get (a failure refreshes at once)
CONNECT_TIMEOUT_S = 1.0

Answer = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class ChannelError(Exception):
    """The channel could not carry a request; the caller sends it through the handle."""


class ChannelDraining(ChannelError):
    """The replica is shutting down (a redeploy, a scale-down): it did not answer the request,
    which the caller sends through the handle to a replica Serve still routes to."""


def channel_root() -> Path:
    """This Ray cluster's folder of channel files on this node: two clusters on one machine
    (a test run beside the demo) may serve applications of the same name."""
    import hashlib

    import ray

    cluster = "no-ray"
    if ray.is_initialized():
        cluster = hashlib.sha256(ray.get_runtime_context().gcs_address.encode()).hexdigest()[:12]
    base = Path(os.environ.get("HYBRIDFT_CHANNEL_DIR") or tempfile.gettempdir())
    return base / "hybridft-channels" / cluster


def app_dir(app_name: str, root: Path | None = None) -> Path:
    return (root or channel_root()) / re.sub(r"[^A-Za-z0-9_.-]", "_", app_name)


def _encode(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    return FRAME.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (size,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    if size > MAX_FRAME_BYTES:
        raise ChannelError(f"frame of {size} bytes (limit {MAX_FRAME_BYTES})")
    return json.loads(await reader.readexactly(size))


class ChannelServer:
    """A replica's end: answers framed requests with ``answer(kind, body)``."""

    def __init__(self, answer: Answer, app_name: str, root: Path | None = None) -> None:
        self.answer = answer
        self.app_name = app_name
        self.token = secrets.token_hex(16)
        self.path = app_dir(app_name, root) / f"{os.getpid()}-{secrets.token_hex(4)}.json"
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by close(): Serve calls the replica's destructor after the requests IT knows of
        # are done, then stops the replica's thread pool and kills it; requests on this channel
        # are not among them. From here on a request is answered "draining", never a 500.
        self.closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        address = {"host": "127.0.0.1", "port": port, "token": self.token, "pid": os.getpid()}
        atomic.write_text(self.path, json.dumps(address), mode=0o600)  # it holds a secret

    def close(self) -> None:
        """Stop advertising and listening; requests still arriving on open connections, and
        those that fail from here on (the replica's thread pool stopped under them), are
        answered "draining" so the router sends them elsewhere."""
        self.closing = True
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        try:
            hello = await _read_frame(reader)
            if not hmac.compare_digest(str(hello.get("token", "")), self.token):
                return
            while True:
                request = await _read_frame(reader)
                if self.closing:
                    await self._reply(writer, lock, {"id": request.get("id"), "draining": True})
                    continue
                task = asyncio.get_running_loop().create_task(self._handle(request, writer, lock))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ChannelError, ValueError):
            pass  # the router went away or spoke nonsense: drop the connection
        finally:
            writer.close()

    async def _handle(
        self, request: dict[str, Any], writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        reply: dict[str, Any]
        try:
            reply = await self.answer(str(request["kind"]), request["body"])
        except Exception as exc:  # noqa: BLE001 - reported to the router, which logs it
            if self.closing:  # failed because the replica is shutting down: not the request's
                reply = {"draining": True}
            else:
                message = f"{type(exc).__name__}: {exc}"
                reply = {"status": 500, "body": {"error": {"message": message,
                                                          "type": "server_error"}}}  # fmt: skip
        await self._reply(writer, lock, {"id": request.get("id"), **reply})

    @staticmethod
    async def _reply(
        writer: asyncio.StreamWriter, lock: asyncio.Lock, frame: dict[str, Any]
    ) -> None:
        with contextlib.suppress(ConnectionError):
            async with lock:
                writer.write(_encode(frame))
                await writer.drain()


class ChannelClient:
    """One connection to one replica, shared by concurrent requests (answers matched by id)."""

    def __init__(self, address: dict[str, Any]) -> None:
        self.address = address
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = False
        # the replica said it is shutting down, or stopped advertising: no new requests; the
        # connection stays open for the answers still owed on it
        self.draining = False

    async def connect(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.address["host"], int(self.address["port"])),
            CONNECT_TIMEOUT_S,
        )
        self._writer = writer
        writer.write(_encode({"token": self.address["token"]}))
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        # The reader lives as long as its client: a client the router's pool drops (a replica
        # replaced, the router's own replica stopping) takes its connection and reader with it,
        # and asyncio would print "Task was destroyed but it is pending!" to the user for each.
        setattr(self._reader_task, "_log_destroy_pending", False)  # noqa: B010 - asyncio's switch

    async def call(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.closed or self._writer is None:
            raise ChannelError("connection closed")
        self._ids += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self._ids] = future
        try:
            self._writer.write(_encode({"id": self._ids, "kind": kind, "body": body}))
            await self._writer.drain()
        except ConnectionError as exc:
            self.pending.pop(self._ids, None)
            self._fail(exc)
            raise ChannelError(str(exc)) from exc
        reply = await future
        if reply.get("draining"):
            self.draining = True
            raise ChannelDraining("the replica is shutting down")
        return {"status": int(reply["status"]), "body": reply["body"]}

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await _read_frame(reader)
                frame_id = frame.get("id")
                future = self.pending.pop(frame_id, None) if isinstance(frame_id, int) else None
                if future is not None and not future.done():
                    future.set_result(frame)
        except Exception as exc:  # noqa: BLE001 - EOF, reset, garbage: the connection is over
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ChannelError(f"replica connection lost: {exc!r}"))
        self.pending.clear()
        if self._writer is not None:
            self._writer.close()

    def usable(self) -> bool:
        return not self.closed and not self.draining

    def close(self) -> None:
        self._fail(ChannelError("closed"))
        task = self._reader_task
        if task is not None and not task.done():
            task.cancel()


class ChannelPool:
    """The router's end: per application, clients of the replicas that advertise a channel."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or channel_root()
        self._clients: dict[str, dict[str, ChannelClient]] = {}
        self._listed: dict[str, float] = {}

    async def call(self, app_name: str, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The replica's reply, or ``None`` when no replica of ``app_name`` has a channel here.

        Raises:
            ChannelError: the chosen replica's connection failed (the request may or may not
                have reached it); the caller resends through the handle.
        """
        clients = await self._refresh(app_name)
        if not clients:
            return None
        name, client = min(clients.items(), key=lambda kv: len(kv[1].pending))  # fewest in flight
        try:
            return await client.call(kind, body)
        except ChannelDraining:
            self._listed.pop(app_name, None)  # list again: its successor may be advertised
            raise
        except ChannelError:  # this connection is broken; the app's other replicas are not
            client.close()
            self._clients.get(app_name, {}).pop(name, None)
            self._listed.pop(app_name, None)  # the next call lists the replicas again
            raise

    def _drop(self, app_name: str) -> None:
        """Forget every client of the app: the next call lists the replicas again."""
        for client in self._clients.pop(app_name, {}).values():
            client.close()
        self._listed.pop(app_name, None)

    async def _refresh(self, app_name: str) -> dict[str, ChannelClient]:
        clients = self._clients.setdefault(app_name, {})
        now = time.monotonic()
        open_clients = {k: c for k, c in clients.items() if c.usable()}
        if open_clients and now - self._listed.get(app_name, 0.0) < REFRESH_S:
            return open_clients
        self._listed[app_name] = now
        seen = set()
        for path in app_dir(app_name, self.root).glob("*.json"):
            address = _read_address(path)
            if address is None:
                continue
            seen.add(path.name)
            current = clients.get(path.name)
            if current is not None:
                if not current.closed:
                    continue  # a draining one too: its file goes when the replica does
                current.close()  # its reader task ends with it
            client = ChannelClient(address)
            try:
                await client.connect()
            except (TimeoutError, OSError):
                client.close()
                clients.pop(path.name, None)
                continue
            clients[path.name] = client
        for name in set(clients) - seen:  # the replica stopped advertising, or is gone
            client = clients[name]
            client.draining = True  # no new requests; closed once the answers owed are in
            if not client.pending:
                clients.pop(name).close()
        return {k: c for k, c in clients.items() if c.usable()}

    def close(self) -> None:
        """Close every connection (its reader task too: a pending one left to the garbage
        collector is logged as "Task was destroyed but it is pending!")."""
        for app in list(self._clients):
            self._drop(app)


def _read_address(path: Path) -> dict[str, Any] | None:
    """A replica's advertised address; a dead process's file is removed (on this node)."""
    try:
        address = json.loads(path.read_text())
        pid = int(address["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # being written, or not ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    except PermissionError:
        return None  # another user's process
    return address
