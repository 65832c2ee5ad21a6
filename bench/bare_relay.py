"""The floor of any ASGI gateway on the machine at hand: a bare WebSocket relay.

Served exactly as the gateway is (``codexgw.server.gateway_config``: uvicorn, uvloop,
httptools, websockets-sansio, no permessage-deflate, the same frame limit and pings; the
allocator tuned by ``codexgw.allocator``), each client gets its own upstream WebSocket to a
listening exec-server and frames pass through unchanged: no Django, no Channels, no
multiplexer, no JSON. What the gateway costs above this relay is the gateway's own; what this
relay costs above a direct connection is the price of a Python ASGI hop on this machine
(reference/stack-notes.md §2.4b measured 2.0 to 2.3 x direct for the round-trip p50 on another
machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from codexgw.allocator import keep_large_buffers
from codexgw.server import gateway_config

REPO = Path(__file__).resolve().parents[1]

UPSTREAM_ENV = "BENCH_RELAY_UPSTREAM"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI application: a WebSocket upgrade opens the upstream, then frames go both ways."""
    if scope["type"] != "websocket" or (await receive())["type"] != "websocket.connect":
        return
    async with connect(os.environ[UPSTREAM_ENV], max_size=None, compression=None) as upstream:
        await send({"type": "websocket.accept"})
        down = asyncio.create_task(_downstream(upstream, send))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                await upstream.send(text if text is not None else message["bytes"])
        finally:
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await down


async def _downstream(upstream: ClientConnection, send: Any) -> None:
    async for frame in upstream:
        key = "text" if isinstance(frame, str) else "bytes"
        await send({"type": "websocket.send", key: frame})


@contextlib.contextmanager
def serving(upstream_url: str, ping_interval: float, ping_timeout: float) -> Iterator[tuple[str, int]]:
    """The relay in a process of its own, in front of ``upstream_url``; yields its ws:// URL and
    its process id."""
    from tests.e2e.harness import reap  # here: the relay's own process needs none of the harness

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = str(listener.fileno())
    command = [sys.executable, "-m", "bench.bare_relay", fd, str(ping_interval), str(ping_timeout)]
    env = {**os.environ, UPSTREAM_ENV: upstream_url}
    # The listening socket is inherited: the relay accepts on it from its first moment.
    relay = subprocess.Popen(command, cwd=REPO, env=env, pass_fds=[listener.fileno()])  # noqa: S603 - our own command
    listener.close()
    try:
        yield f"ws://127.0.0.1:{port}/", relay.pid
    finally:
        reap(relay, signal.SIGTERM, 10)


def main(fd: str, ping_interval: str, ping_timeout: str) -> None:
    """Serve ``app`` on the inherited listening socket ``fd`` with the gateway's own server settings."""
    listener = socket.socket(fileno=int(fd))
    host, port = listener.getsockname()[:2]
    config = gateway_config(app, host, port, ping_interval=float(ping_interval), ping_timeout=float(ping_timeout))
    keep_large_buffers()
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main(*sys.argv[1:])
