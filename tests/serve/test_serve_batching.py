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
        num_cpus=0.25,
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


def test_concurrent_requests_share_a_batch(handle) -> None:
    before = _batching(handle)
    replies = [handle.answer.remote("completion", _body(i)) for i in range(6)]
    assert all(r.result()["status"] == 200 for r in replies)
    after = _batching(handle)
    assert after["requests"] - before["requests"] == 6
    # the first may go alone (nobody else in flight yet); the others wait and share one
    assert after["batches"] - before["batches"] <= 2


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
