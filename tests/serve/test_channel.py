"""The router's direct channel to model replicas: answers matched to requests, tokens checked,
dead replicas forgotten, failures raised so the router resends through the Serve handle."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hybridft.serve.channel import (
    ChannelDraining,
    ChannelError,
    ChannelPool,
    ChannelServer,
    _encode,
    _read_frame,
    app_dir,
)

APP = "hybridft-model-m-1"


async def _echo(kind: str, body: dict) -> dict:
    await asyncio.sleep(float(body.get("delay", 0)))
    return {"status": 200, "body": {"kind": kind, "n": body["n"], "pid": os.getpid()}}


def test_concurrent_requests_get_their_own_answers(tmp_path: Path) -> None:
    async def main() -> None:
        server = ChannelServer(_echo, APP, tmp_path)
        await server.start()
        advert = json.loads(server.path.read_text())
        assert advert["host"] == "127.0.0.1" and advert["pid"] == os.getpid()
        assert (server.path.stat().st_mode & 0o777) == 0o600  # the token is the owner's only
        pool = ChannelPool(tmp_path)
        # later requests finish first: answers come back out of order, matched by id
        calls = [pool.call(APP, "chat", {"n": n, "delay": 0.05 * (5 - n)}) for n in range(6)]
        replies = await asyncio.gather(*calls)
        assert [r["body"]["n"] for r in replies] == list(range(6))
        assert all(r["status"] == 200 and r["body"]["kind"] == "chat" for r in replies)
        assert await pool.call("hybridft-model-m-2", "chat", {"n": 0}) is None  # no channel
        server.close()
        assert not server.path.exists()
        pool.close()

    asyncio.run(main())


def test_a_wrong_token_gets_no_answer(tmp_path: Path) -> None:
    async def main() -> None:
        server = ChannelServer(_echo, APP, tmp_path)
        await server.start()
        port = json.loads(server.path.read_text())["port"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_encode({"token": "guess"}) + _encode({"id": 1, "kind": "chat",
                                                          "body": {"n": 1}}))  # fmt: skip
        await writer.drain()
        with pytest.raises(asyncio.IncompleteReadError):  # closed without an answer
            await asyncio.wait_for(_read_frame(reader), 5)
        writer.close()
        # and a pool reading a tampered file (wrong token) gets no answer either: it fails
        advert = json.loads(server.path.read_text())
        server.path.write_text(json.dumps({**advert, "token": "wrong"}))
        with pytest.raises(ChannelError):
            await asyncio.wait_for(ChannelPool(tmp_path).call(APP, "chat", {"n": 1}), 5)
        server.close()

    asyncio.run(main())


def test_a_dead_replicas_file_is_removed_and_not_called(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(proc.stdout)
    folder = app_dir(APP, tmp_path)
    folder.mkdir(parents=True)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stale = folder / f"{dead_pid}-dead.json"
    stale.write_text(json.dumps({"host": "127.0.0.1", "port": port, "token": "t",
                                 "pid": dead_pid}))  # fmt: skip
    (folder / "garbage.json").write_text("{not json")

    async def main() -> None:
        pool = ChannelPool(tmp_path)
        assert await pool.call(APP, "chat", {"n": 1}) is None  # nothing alive to call
        assert not stale.exists()
        server = ChannelServer(_echo, APP, tmp_path)
        await server.start()
        pool._listed.clear()  # don't wait REFRESH_S for the new replica
        reply = await pool.call(APP, "chat", {"n": 7})
        assert reply == {"status": 200, "body": {"kind": "chat", "n": 7, "pid": os.getpid()}}
        server.close()

    asyncio.run(main())


def test_a_replica_dying_mid_request_raises_for_the_fallback(tmp_path: Path) -> None:
    """A real replica process killed while it holds a request: the pending call fails with
    ChannelError (the router then resends through the handle) and the pool lists again."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from hybridft.serve.channel import ChannelServer\n"
        "async def slow(kind, body):\n"
        "    await asyncio.sleep(60)\n"
        "async def main():\n"
        f"    s = ChannelServer(slow, {APP!r}, Path(sys.argv[1]))\n"
        "    await s.start()\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        async def main() -> None:
            pool = ChannelPool(tmp_path)
            call = asyncio.ensure_future(pool.call(APP, "chat", {"n": 1}))
            await asyncio.sleep(0.5)
            proc.kill()
            with pytest.raises(ChannelError, match="connection lost"):
                await asyncio.wait_for(call, 10)
            assert not pool._clients.get(APP)  # forgotten: the next call lists the folder

        asyncio.run(main())
    finally:
        proc.kill()
        proc.wait()


def test_a_closing_replica_answers_draining_never_an_error(tmp_path: Path) -> None:
    """Serve stops a replica (a redeploy, a scale-down): its destructor closes the channel,
    then Serve stops its thread pool. A request that was running finishes; one that fails
    because of the shutdown, or arrives after it, is answered "draining" (the router resends
    it through the handle), never passed on as the replica's 500; the pool stops choosing
    that replica and lists the folder again, and finds its successor."""
    from concurrent.futures import ThreadPoolExecutor

    pool_threads = ThreadPoolExecutor(2)

    async def in_thread(kind: str, body: dict) -> dict:  # as the replica runs its model
        loop = asyncio.get_running_loop()
        await asyncio.sleep(float(body.get("delay", 0)))
        n = await loop.run_in_executor(pool_threads, lambda: body["n"])
        return {"status": 200, "body": {"n": n, "pid": os.getpid()}}

    async def main() -> None:
        old = ChannelServer(in_thread, APP, tmp_path)
        await old.start()
        pool = ChannelPool(tmp_path)
        assert (await pool.call(APP, "chat", {"n": 1}))["body"]["n"] == 1
        # one request inside the replica when Serve stops it
        slow = asyncio.ensure_future(pool.call(APP, "chat", {"n": 2, "delay": 0.3}))
        await asyncio.sleep(0.1)
        old.close()  # the destructor
        pool_threads.shutdown(wait=False)  # what Serve does next
        with pytest.raises(ChannelDraining):  # failed under the shutdown: not a 500
            await asyncio.wait_for(slow, 5)
        # the pool is told to list again, and nothing new is advertised yet
        assert await pool.call(APP, "chat", {"n": 3}) is None
        # its successor advertises itself; the next call reaches it
        new = ChannelServer(_echo, APP, tmp_path)
        await new.start()
        reply = await pool.call(APP, "chat", {"n": 4})
        assert reply is not None and reply["body"] == {"kind": "chat", "n": 4, "pid": os.getpid()}
        new.close()
        pool.close()

    asyncio.run(main())


def test_a_request_arriving_after_close_is_answered_draining(tmp_path: Path) -> None:
    """On a connection opened before the close, a new request gets "draining" at once (not
    silence, which would hold the router until the replica is killed)."""

    async def main() -> None:
        server = ChannelServer(_echo, APP, tmp_path)
        await server.start()
        pool = ChannelPool(tmp_path)
        assert (await pool.call(APP, "chat", {"n": 1}))["status"] == 200
        server.close()
        with pytest.raises(ChannelDraining):
            await asyncio.wait_for(pool.call(APP, "chat", {"n": 2}), 5)
        pool.close()

    asyncio.run(main())


def test_a_request_in_flight_on_a_replica_that_stops_advertising_is_answered(
    tmp_path: Path,
) -> None:
    """A replica whose file is gone is not chosen again, but the answers owed on its
    connection still arrive (not cut off and computed twice elsewhere)."""

    async def main() -> None:
        server = ChannelServer(_echo, APP, tmp_path)
        await server.start()
        pool = ChannelPool(tmp_path)
        slow = asyncio.ensure_future(pool.call(APP, "chat", {"n": 1, "delay": 0.5}))
        await asyncio.sleep(0.1)
        server.path.unlink()  # stops advertising, still answering
        pool._listed.clear()  # as after REFRESH_S
        assert await pool.call(APP, "chat", {"n": 2}) is None  # not chosen
        reply = await asyncio.wait_for(slow, 5)
        assert reply["status"] == 200 and reply["body"]["n"] == 1
        await pool.call(APP, "chat", {"n": 3})  # lists again: the drained client is closed
        assert not pool._clients.get(APP)
        server.close()
        pool.close()

    asyncio.run(main())
