"""The vllm engine's HTTP client to its vLLM server: a request whose pooled connection breaks
(the server closing it as the request goes out) is sent once more, not answered 500.

The fault is real: a TCP server that reads the first request and closes the connection without
answering, then answers the next one."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest

from hybridft.serve.vllm_client import apost_json, post_json


class DropsFirstRequest:
    """Closes the first connection once a request arrived on it; answers every later one."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests += 1
                if self.requests == 1:
                    continue  # closed without a reply
                body = json.dumps({"choices": [{"text": "ok"}]}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    s = DropsFirstRequest()
    yield s
    s.close()


def test_a_broken_connection_is_sent_again(server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # the fault, as a plain client sees it
            client.post("/v1/completions", json={"prompt": [1]})
        server.requests = 0
        reply = post_json(client, "/v1/completions", {"prompt": [1]})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "ok"
    assert server.requests == 2


def test_a_broken_connection_is_sent_again_async(server) -> None:
    async def main() -> httpx.Response:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            return await apost_json(client, "/v1/completions", {"prompt": [1]})

    reply = asyncio.run(main())
    assert reply.status_code == 200 and server.requests == 2
