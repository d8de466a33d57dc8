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
