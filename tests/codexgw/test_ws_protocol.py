"""``codexgw.ws_protocol``: reading pauses on a backlog, not after every message.

A real uvicorn server in this process (so the connection's protocol and transport can be looked
at) serves an app that accepts and then reads (or closes) only when told to; the client is the
real ``websockets`` library (its sans-I/O protocol where the test must order frames itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from codexgw.server import gateway_config
from codexgw.ws_protocol import PAUSE_BYTES, PAUSE_MESSAGES, BacklogPausingProtocol


@dataclass
class _App:
    reading: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[str] = field(default_factory=list)
    closes: bool = False  # once reading is set: close without reading, then wait for finished
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await self.reading.wait()
        if self.closes:
            await send({"type": "websocket.close", "code": 1000})
            await self.finished.wait()
            return
        while (message := await receive())["type"] == "websocket.receive":
            self.received.append(message["text"])


@dataclass
class _Served:
    app: _App
    server: uvicorn.Server
    url: str

    def protocol(self) -> BacklogPausingProtocol:
        (found,) = [c for c in self.server.server_state.connections if isinstance(c, BacklogPausingProtocol)]
        return found


@pytest.fixture
async def served() -> AsyncIterator[_Served]:
    app = _App()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = gateway_config(app, "127.0.0.1", 0, ping_interval=20.0, ping_timeout=30.0)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server._serve([sock]))  # serve() would take this process's signals
    try:
        await _until(lambda: server.started)
        yield _Served(app, server, "ws://{}:{}/".format(*sock.getsockname()))
    finally:
        app.reading.set()
        app.finished.set()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Polls on the loop: the conditions read the server's state, which the loop owns."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - nothing to wait on for the server's state
            await asyncio.sleep(0.005)


async def _send(client: ClientConnection, texts: list[str]) -> None:
    for text in texts:
        await client.send(text)


async def test_a_few_waiting_messages_do_not_pause_reading(served):
    async with connect(served.url) as client:
        await _send(client, [f"m{i}" for i in range(PAUSE_MESSAGES - 1)])
        await _until(lambda: served.protocol().queue.qsize() == PAUSE_MESSAGES - 1)
        protocol = served.protocol()
        assert protocol.transport.is_reading()
        assert not protocol.read_paused


async def test_a_backlog_of_messages_pauses_reading_until_the_app_took_them_all(served):
    first = [f"m{i}" for i in range(PAUSE_MESSAGES)]
    later = [f"n{i}" for i in range(PAUSE_MESSAGES)]
    async with connect(served.url) as client:
        await _send(client, first)
        await _until(lambda: served.protocol().queue.qsize() == PAUSE_MESSAGES)
        protocol = served.protocol()
        assert protocol.read_paused
        assert not protocol.transport.is_reading()
        await _send(client, later)
        await asyncio.sleep(0.2)  # time to read them, were reading still on
        assert protocol.queue.qsize() == PAUSE_MESSAGES
        served.app.reading.set()
        await _until(lambda: len(served.app.received) == len(first + later))
        assert served.app.received == first + later
        assert protocol.transport.is_reading()
        assert not protocol.read_paused


async def test_a_backlog_of_bytes_pauses_reading(served):
    big = "x" * PAUSE_BYTES
    async with connect(served.url) as client:
        await _send(client, [big])
        await _until(lambda: served.protocol().queue.qsize() == 1)
        protocol = served.protocol()
        assert protocol.read_paused
        assert not protocol.transport.is_reading()
        await _send(client, ["after"])
        served.app.reading.set()
        await _until(lambda: len(served.app.received) == 2)
        assert served.app.received == [big, "after"]
        assert protocol.transport.is_reading()


async def test_after_the_apps_close_the_peers_close_reply_is_read_past_a_backlog(served):
    served.app.closes = True
    host, port = served.url.removeprefix("ws://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    client = ClientProtocol(parse_uri(served.url))
    client.send_request(client.connect())
    writer.write(b"".join(client.data_to_send()))
    while client.state is State.CONNECTING:
        client.receive_data(await reader.read(65536))
    for number in range(PAUSE_MESSAGES):
        client.send_text(f"m{number}".encode())
    writer.write(b"".join(client.data_to_send()))
    await _until(lambda: served.protocol().read_paused)
    served.app.reading.set()  # the app closes, leaving the backlog unread
    await _until(lambda: served.protocol().close_sent)
    # A message in flight before the client sees the close: uvicorn reads and discards it.
    client.send_text(b"late")
    writer.write(b"".join(client.data_to_send()))
    await asyncio.sleep(0.2)  # read on its own, before the close reply below
    client.receive_data(await reader.read(65536))  # the server's close: the client answers it
    writer.write(b"".join(client.data_to_send()))
    # The reply is read and the connection ends cleanly (uvicorn's close timer would reset it
    # after 10 s had reading stayed paused).
    async with asyncio.timeout(5):
        while await reader.read(65536):
            pass
    writer.close()
