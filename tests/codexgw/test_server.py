"""``codexgw.server``: the production server's WebSocket behaviour (denial responses, the frame
limit, write backpressure) on a real uvicorn configured as ``manage.py serve`` configures it.

The server runs in a subprocess (it owns the process's signals and event loop), serving the
tiny ASGI app below: ``python -m tests.codexgw.test_server``. Clients are the real
``websockets`` library, raw sockets and, for what the statuses are for, the real ``codex
exec-server`` (exits on a 4xx upgrade response, retries on a 5xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidMessage, InvalidStatus

from tests.e2e.harness import ExecServer, ExecutorCredentials, reap, wait_for

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"test server listening on (\S+)")
MiB = 1024 * 1024
FLOOD_MESSAGE = 256 * 1024
# Messages the /flood app has handed to the server so far (read back on /flooded).
_flooded = 0


REGISTER = re.compile(r"^/(?P<prefix>[^/]+)/cloud/environment/(?P<env>[^/]+)/direct/register$")


async def _registry(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in for the gateway's direct registration: ``POST /<prefix>/cloud/environment/<env>/
    direct/register`` answers with the WebSocket URL ``ws://<host>/<prefix>``, so a real executor
    started with ``--remote http://<host>/deny401`` dials ``/deny401``."""
    while (await receive()).get("more_body"):
        pass
    match = REGISTER.match(scope["path"])
    if scope["method"] != "POST" or match is None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    host = dict(scope["headers"])[b"host"].decode()
    body = json.dumps(
        {
            "environment_id": match["env"],
            "transport": "direct_jsonrpc_v1",
            "registration_id": "reg-1",
            "url": f"ws://{host}/{match['prefix']}",
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Denies, closes, floods or echoes depending on the path."""
    if scope["type"] == "http" and scope["path"] == "/flooded":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(_flooded).encode()})
        return
    if scope["type"] == "http":
        await _registry(scope, receive, send)
        return
    if scope["type"] != "websocket":
        return
    assert (await receive())["type"] == "websocket.connect"
    path = scope["path"]
    if path == "/deny401":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"x-denied-by", b"test-app")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b'{"error":', "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b'"unauthorized"}'})
    elif path == "/deny503":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"1")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"executor gateway busy"})
    elif path == "/empty404":
        await send({"type": "websocket.http.response.start", "status": 404, "headers": []})
        # uvicorn needs the "body" key the ASGI spec makes optional; every denial here sends it.
        await send({"type": "websocket.http.response.body", "body": b""})
    elif path == "/accept-after-start":
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.accept"})  # raises: the app crashes mid-denial
    elif path == "/close":
        await send({"type": "websocket.close"})
    elif path == "/flood":
        await send({"type": "websocket.accept"})
        await _flood(send)
    else:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({"extensions": scope.get("extensions")})})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo:" + event["text"]})


async def _flood(send: Any) -> None:
    global _flooded
    payload = b"x" * FLOOD_MESSAGE
    while True:
        await send({"type": "websocket.send", "bytes": payload})
        _flooded += 1


def _serve() -> None:
    from codexgw.server import GatewayServer, gateway_config

    def announce(addresses: list[tuple[str, int]]) -> None:
        print("test server listening on {}:{}".format(*addresses[0]), flush=True)

    config = gateway_config(_app, "127.0.0.1", 0, ping_interval=20.0, ping_timeout=30.0)
    GatewayServer(config, drain_timeout=1.0, on_ready=announce).run()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.codexgw.test_server"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = READY.search(line)
            if match and not ready.is_set():
                found.append(match.group(1))
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not ready.wait(30):
            pytest.fail("test server did not start:\n" + "".join(lines))
        yield f"ws://{found[0]}"
    finally:
        reap(process, signal.SIGTERM, 10)
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()


async def _denied(url: str) -> Any:
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(10), connect(url, open_timeout=5):
            pass
    return info.value.response


async def test_a_denial_response_carries_the_status_headers_and_body(server_url):
    response = await _denied(server_url + "/deny401")
    assert response.status_code == 401
    assert response.reason_phrase == "Unauthorized"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-denied-by"] == "test-app"
    assert response.headers["content-length"] == str(len(response.body))
    assert json.loads(response.body) == {"error": "unauthorized"}


async def test_a_503_denial_stays_a_503(server_url):
    response = await _denied(server_url + "/deny503")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.body == b"executor gateway busy"


async def test_a_denial_with_an_empty_body(server_url):
    response = await _denied(server_url + "/empty404")
    assert (response.status_code, response.body) == (404, b"")


async def test_a_plain_close_before_accept_is_still_a_403(server_url):
    response = await _denied(server_url + "/close")
    assert response.status_code == 403


async def test_accepting_after_a_denial_started_is_an_application_error(server_url):
    # The application crashed with its denial half-sent: no response, and no WebSocket either.
    with pytest.raises(InvalidMessage):
        async with asyncio.timeout(10), connect(server_url + "/accept-after-start", open_timeout=5):
            pass


async def test_accept_and_echo_still_work_and_the_scope_lists_the_extension(server_url):
    async with asyncio.timeout(10), connect(server_url + "/echo", open_timeout=5) as ws:
        assert json.loads(await ws.recv()) == {"extensions": {"websocket.http.response": {}}}
        await ws.send("hello")
        assert await ws.recv() == "echo:hello"
        await ws.send("again")
        assert await ws.recv() == "echo:again"
    assert ws.close_code == 1000


async def test_the_server_keeps_serving_after_denials(server_url):
    for _ in range(3):
        assert (await _denied(server_url + "/deny503")).status_code == 503
    async with asyncio.timeout(10), connect(server_url + "/echo", open_timeout=5) as ws:
        await ws.recv()
        await ws.send("still")
        assert await ws.recv() == "echo:still"


async def test_a_frame_over_16_mib_is_closed_with_1009(server_url):
    async with asyncio.timeout(20), connect(server_url + "/echo", open_timeout=5, max_size=None) as ws:
        await ws.recv()
        await ws.send("ok")
        assert await ws.recv() == "echo:ok"
        # The server closes from the frame header, possibly before the whole frame is sent.
        with contextlib.suppress(ConnectionClosedError):
            await ws.send("x" * (16 * MiB + 1))
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
    assert ws.close_code == 1009


def test_sending_to_a_client_that_does_not_read_waits(server_url):
    """Write backpressure: the application's ``send`` waits once the client stops reading, so
    the server holds no more than its buffer (64 KiB) and the kernel's socket buffers."""
    host, port = server_url.removeprefix("ws://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.sendall(
            (
                f"GET /flood HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert sock.recv(12) == b"HTTP/1.1 101"
        time.sleep(1.0)  # the client reads nothing more
        first = _flooded_count(server_url)
        time.sleep(1.0)
        second = _flooded_count(server_url)
    # Loopback buffers hold a few MiB; an unbounded server would have queued gigabytes by now.
    assert second == first, (first, second)
    assert 0 < second * FLOOD_MESSAGE < 64 * MiB, second


def _flooded_count(server_url: str) -> int:
    response = httpx.get(server_url.replace("ws://", "http://") + "/flooded", timeout=5)
    return int(response.text)


# --- the real executor against a denial ------------------------------------------------------


def _executor(codex_bin: Path, server_url: str, path: str, tmp_path: Path) -> ExecServer:
    base = server_url.replace("ws://", "http://") + path
    credentials = ExecutorCredentials(exe_id="env-denial", token="secret")
    return ExecServer.remote(codex_bin, base, credentials, tmp_path / "codex-home")


@pytest.mark.e2e
def test_the_real_executor_exits_on_a_401_denial(server_url, codex_bin, tmp_path):
    executor = _executor(codex_bin, server_url, "/deny401", tmp_path)
    try:
        assert executor.wait_exit(20) == 1
        assert "HTTP error: 401 Unauthorized" in executor.log(), executor.output()
    finally:
        executor.stop()


@pytest.mark.e2e
def test_the_real_executor_retries_on_a_503_denial(server_url, codex_bin, tmp_path):
    executor = _executor(codex_bin, server_url, "/deny503", tmp_path)
    try:
        # The first retry comes after ~0.7 s, the second ~1.2 s later (codex-wire §B.4).
        retrying = re.compile(r"direct exec-server connection failed; retrying")
        executor.wait_for_log(retrying, 20)
        assert wait_for(lambda: len(retrying.findall(executor.log())) >= 2, 20), executor.output()
        assert executor.alive(), executor.output()
    finally:
        executor.stop()


if __name__ == "__main__":
    _serve()
