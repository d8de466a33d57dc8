"""The model server's HTTP door as plain ASGI (no Ray): who gets in, the body the routes see,
the closed default and the loopback-only opt-out. The live door: test_serve_openai.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from hybridft.errors import UserError
from hybridft.serve import model_door
from hybridft.serve.keys import KeyStore
from hybridft.serve.model_door import DoorSpec, ModelServerDoor, check_door, door_spec, is_loopback
from hybridft.serve.openai_http import VERSION_HEADER

LOOPBACK, REMOTE = ("127.0.0.1", 40000), ("10.1.2.3", 40000)


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _client(monkeypatch, door: DoorSpec | None, client=LOOPBACK, root_path="") -> TestClient:
    server = SimpleNamespace(door=door, version="3", version_tag="m/3")
    monkeypatch.setattr(model_door, "_servable", lambda: server)
    routes = [Route("/v1/completions", _echo, methods=["POST"]), Route("/health", _health)]
    app = Starlette(routes=routes)
    app.add_middleware(ModelServerDoor)
    return TestClient(app, client=client, root_path=root_path)


@pytest.fixture
def keys(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    return store, store.create("alice")


def test_a_key_of_the_store_lets_the_body_through_intact(monkeypatch, keys) -> None:
    store, key = keys
    http = _client(monkeypatch, DoorSpec(keys=str(store.db.path)))
    ok = http.post(
        "/v1/completions", content=b"x" * 1000, headers={"authorization": f"Bearer {key}"}
    )
    assert ok.status_code == 200 and ok.json() == {"bytes": 1000}
    assert ok.headers[VERSION_HEADER] == "m/3"
    for headers in ({}, {"authorization": "Bearer hft-" + "y" * 43}):
        refused = http.post("/v1/completions", content=b"{}", headers=headers)
        assert refused.status_code == 401 and refused.headers[VERSION_HEADER] == "m/3"
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert http.get("/health").status_code == 200  # open, as on the router
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert 'route="completion",status="401",version="3"} 2.0' in metrics.text


def test_the_body_cap_and_a_route_prefix(monkeypatch, keys) -> None:
    store, key = keys
    door = DoorSpec(keys=str(store.db.path), max_body_bytes=100)
    http = _client(monkeypatch, door, root_path="/m")
    auth = {"authorization": f"Bearer {key}"}
    assert http.post("/m/v1/completions", content=b"x" * 100, headers=auth).status_code == 200
    over = http.post("/m/v1/completions", content=b"x" * 101, headers=auth)
    assert over.status_code == 413 and over.json()["error"]["code"] == "request_too_large"
    assert http.get("/m/health").status_code == 200


def test_an_unconfigured_door_stays_shut(monkeypatch) -> None:
    http = _client(monkeypatch, None)
    reply = http.post("/v1/completions", content=b"{}")
    assert reply.status_code == 401 and "without a key store" in reply.json()["error"]["message"]


def test_insecure_local_lets_loopback_clients_in_without_a_key(monkeypatch) -> None:
    door = DoorSpec(insecure_local=True)
    assert _client(monkeypatch, door).post("/v1/completions", content=b"{}").status_code == 200
    remote = _client(monkeypatch, door, client=REMOTE).post("/v1/completions", content=b"{}")
    assert remote.status_code == 403


def test_check_door_before_serving(tmp_path) -> None:
    assert all(map(is_loopback, ("127.0.0.1", "::1", "localhost", "127.0.0.2")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.0.0.1", "example.org", "")))
    check_door("localhost", door_spec(tmp_path, insecure_local=True))
    with pytest.raises(UserError, match="loopback host only .* got --host 0.0.0.0"):
        check_door("0.0.0.0", door_spec(tmp_path, insecure_local=True))
    with pytest.raises(UserError, match="create one with `hybridft keys create NAME"):
        check_door("127.0.0.1", door_spec(tmp_path))
    KeyStore(tmp_path / "keys.db").create("alice")
    check_door("0.0.0.0", door_spec(tmp_path))
