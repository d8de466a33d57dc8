"""The batch window on a live deployment: held open only when other requests are in flight."""

from __future__ import annotations

import time

import pytest

from hybridft.serve.launch import ServeModelArgs, build_app

pytestmark = pytest.mark.ray

WAIT_S = 1.0  # the longest window allowed, far longer than a tiny decode: who waits shows


@pytest.fixture(scope="module")
def handle(ray_session, tiny_model_dir):
    from ray import serve

    args = ServeModelArgs(
        model_dir=str(tiny_model_dir), model_name="m", version="1", batch_wait_s=WAIT_S,
        num_cpus=0.25, engine="hf",
    )  # fmt: skip
    yield serve.run(build_app(args), name="test-batching", route_prefix=None)
    serve.shutdown()  # the next module starts Serve with its own HTTP options


def _body(i: int) -> dict:
    return {"model": "m", "prompt": f"Ticket {i}: my laptop cannot reach the VPN", "max_tokens": 2}


def _batching(handle) -> dict:
    return handle.describe.remote().result()["batching"]


def test_a_lone_request_does_not_wait_for_the_window(handle) -> None:
    handle.answer.remote("completion", _body(0)).result()  # warm
    before = _batching(handle)
    started = time.perf_counter()
    reply = handle.answer.remote("completion", _body(1)).result()
    elapsed = time.perf_counter() - started
    assert reply["status"] == 200
    after = _batching(handle)
    assert (after["batches"] - before["batches"], after["requests"] - before["requests"]) == (1, 1)
    assert elapsed < WAIT_S  # with the window held for it alone it would take WAIT_S or more


def test_requests_arriving_during_a_decode_share_a_batch(handle) -> None:
    """Requests that find another in flight wait for the window and go as one batch.

    The first request is a long decode (500 tokens, ~0.5 s here), and the
    others are sent once it is inside it: sent right after a 2-token request they could arrive
    after it ended, on an idle replica, and rightly go alone (a loaded CI machine did that).
    """
    before = _batching(handle)
    long = handle.answer.remote("completion", _body(0) | {"max_tokens": 500})
    deadline = time.monotonic() + 30
    while _batching(handle)["in_flight"] < 1:
        assert time.monotonic() < deadline, "the long request never reached the replica"
        time.sleep(0.005)
    replies = [handle.answer.remote("completion", _body(i)) for i in range(1, 6)]
    first = long.result()
    assert first["status"] == 200 and first["body"]["usage"]["completion_tokens"] > 100
    assert all(r.result()["status"] == 200 for r in replies)
    after = _batching(handle)
    assert after["requests"] - before["requests"] == 6
    # the long one went alone (nobody else in flight yet); the five waited and shared one
    assert after["batches"] - before["batches"] == 2, (before, after)


def test_clients_answered_together_come_back_to_one_batch(handle) -> None:
    """After a batch of several, the first returning request waits for the others: it does
    not go alone while the rest queue behind its whole decode."""
    assert all(
        r.result()["status"] == 200
        for r in [handle.answer.remote("completion", _body(i)) for i in range(4)]
    )
    before = _batching(handle)
    replies = []
    for i in range(3):  # the clients come back one by one, well within the window
        replies.append(handle.answer.remote("completion", _body(10 + i)))
        time.sleep(WAIT_S / 10)
    assert all(r.result()["status"] == 200 for r in replies)
    after = _batching(handle)
    assert (after["batches"] - before["batches"], after["requests"] - before["requests"]) == (1, 3)
