"""``codexgw.daphne_server``: the ASGI WebSocket denial response extension on a real daphne.

The server runs in a subprocess (daphne's Twisted reactor is process-global and cannot be
restarted), serving the tiny ASGI app below: ``python -m tests.codexgw.test_daphne_server``.
Clients are the real ``websockets`` library and, for what the statuses are for, the real
``codex exec-server`` (exits on a 4xx upgrade response, retries on a 5xx).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.harness import ExecServer, ExecutorCredentials, wait_for

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"test daphne listening on (\S+)")


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
    """Denies, closes or echoes depending on the path."""
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
        await send({"type": "websocket.http.response.body"})
    elif path == "/accept-after-start":
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})
        await send({"type": "websocket.accept"})  # raises: the app crashes mid-denial, daphne answers 500
    elif path == "/close":
        await send({"type": "websocket.close"})
    else:
        await send({"type": "websocket.accept"})
        # Objects (the flow extension) by their type's name.
        extensions = {
            name: value if isinstance(value, dict) else type(value).__name__
            for name, value in scope.get("extensions", {}).items()
        }
        await send({"type": "websocket.send", "text": json.dumps({"extensions": extensions})})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo:" + event["text"]})


def _serve() -> None:
    from daphne.endpoints import build_endpoint_description_strings

    from codexgw.daphne_server import GatewayServer

    def announce() -> None:
        print("test daphne listening on {}:{}".format(*server.listening_addresses[0]), flush=True)

    server = GatewayServer(
        application=_app,
        endpoints=build_endpoint_description_strings(host="127.0.0.1", port=0),
        ready_callable=announce,
    )
    server.run()


@pytest.fixture(scope="module")
def daphne_url() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.codexgw.test_daphne_server"],
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
            pytest.fail("test daphne did not start:\n" + "".join(lines))
        yield f"ws://{found[0]}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()


async def _denied(url: str) -> Any:
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(10), connect(url, open_timeout=5):
            pass
    return info.value.response


async def test_a_denial_response_carries_the_status_headers_and_body(daphne_url):
    response = await _denied(daphne_url + "/deny401")
    assert response.status_code == 401
    assert response.reason_phrase == "Unauthorized"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-denied-by"] == "test-app"
    assert response.headers["content-length"] == str(len(response.body))
    assert json.loads(response.body) == {"error": "unauthorized"}


async def test_a_503_denial_stays_a_503(daphne_url):
    response = await _denied(daphne_url + "/deny503")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.body == b"executor gateway busy"


async def test_a_denial_with_an_empty_body(daphne_url):
    response = await _denied(daphne_url + "/empty404")
    assert (response.status_code, response.body) == (404, b"")


async def test_a_plain_close_before_accept_is_still_a_403(daphne_url):
    response = await _denied(daphne_url + "/close")
    assert response.status_code == 403


async def test_accepting_after_a_denial_started_is_an_application_error(daphne_url):
    response = await _denied(daphne_url + "/accept-after-start")
    assert response.status_code == 500


async def test_accept_and_echo_still_work_and_the_scope_lists_the_extension(daphne_url):
    async with asyncio.timeout(10), connect(daphne_url + "/echo", open_timeout=5) as ws:
        extensions = {"websocket.http.response": {}, "codexgw.ws.flow": "WsFlow"}
        assert json.loads(await ws.recv()) == {"extensions": extensions}
        await ws.send("hello")
        assert await ws.recv() == "echo:hello"
        await ws.send("again")
        assert await ws.recv() == "echo:again"
    assert ws.close_code == 1000


async def test_the_server_keeps_serving_after_denials(daphne_url):
    for _ in range(3):
        assert (await _denied(daphne_url + "/deny503")).status_code == 503
    async with asyncio.timeout(10), connect(daphne_url + "/echo", open_timeout=5) as ws:
        await ws.recv()
        await ws.send("still")
        assert await ws.recv() == "echo:still"


# --- the real executor against a denial ------------------------------------------------------


def _executor(codex_bin: Path, daphne_url: str, path: str, tmp_path: Path) -> ExecServer:
    base = daphne_url.replace("ws://", "http://") + path
    credentials = ExecutorCredentials(exe_id="env-denial", token="secret")
    return ExecServer.remote(codex_bin, base, credentials, tmp_path / "codex-home")


@pytest.mark.e2e
def test_the_real_executor_exits_on_a_401_denial(daphne_url, codex_bin, tmp_path):
    executor = _executor(codex_bin, daphne_url, "/deny401", tmp_path)
    try:
        assert executor.wait_exit(20) == 1
        assert "HTTP error: 401 Unauthorized" in executor.log(), executor.output()
    finally:
        executor.stop()


@pytest.mark.e2e
def test_the_real_executor_retries_on_a_503_denial(daphne_url, codex_bin, tmp_path):
    executor = _executor(codex_bin, daphne_url, "/deny503", tmp_path)
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
