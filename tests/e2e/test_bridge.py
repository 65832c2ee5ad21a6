"""The executor WebSocket, the session multiplexer and /bridge with the real codex exec-server,
on a gateway of two processes sharing Redis and PostgreSQL."""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from executors import captoken, services
from executors.models import Executor
from executors.presence import presence_store
from tests.e2e.harness import (
    ExecServer,
    ExecutorCredentials,
    GatewayCluster,
    GatewayProcess,
    RpcClient,
    RpcConnectionClosed,
    TcpCutProxy,
    http_json,
    shared_secret_headers,
    signed_upgrade_headers,
    wait_for,
)

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-e2e"
# The pinned @openai/codex (package.json) that the executors run.
PINNED_CODEX_VERSION = json.loads((settings.BASE_DIR / "package.json").read_text())["dependencies"]["@openai/codex"]
MiB = 1024 * 1024


@dataclass
class OnlineExecutor:
    credentials: ExecutorCredentials
    server: ExecServer
    proxy: TcpCutProxy
    cluster: GatewayCluster

    @property
    def exe_id(self) -> str:
        return self.credentials.exe_id

    def token(self, workspace: str = WORKSPACE, turn_id: str = "trn_e2e", ttl: float = 600, **kw: Any) -> str:
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn_id, workspace_id=workspace, ttl=ttl, **kw)

    def bridge_url(self, process: int) -> str:
        return f"{self.cluster[process].ws_base_url}/bridge/{self.exe_id}"

    async def bridge(self, process: int, token: str | None = None) -> RpcClient:
        headers = {"Authorization": f"Bearer {token or self.token()}"}
        return await RpcClient.connect(self.bridge_url(process), headers)


@pytest.fixture
def online_executor(gateway_cluster, make_executor_credentials, exec_servers, tcp_proxies) -> OnlineExecutor:
    """A real exec-server connected to gateway process 0 through a cuttable TCP proxy, bound to
    WORKSPACE; bridges may use either process."""
    credentials = make_executor_credentials()
    services.bind_executor(WORKSPACE, credentials.exe_id, "box", "the e2e executor", True)
    proxy = tcp_proxies(gateway_cluster[0].base_url)
    server = exec_servers.remote(proxy.url("http"), credentials)
    assert wait_for(lambda: presence_store().get(credentials.exe_id) is not None, 20), (
        f"executor did not come online\n{server.log()}\n{gateway_cluster.log()}"
    )
    return OnlineExecutor(credentials, server, proxy, gateway_cluster)


async def run_to_close(client: RpcClient, process_id: str, timeout: float = 30.0) -> tuple[bytes, list[dict[str, Any]]]:
    """Collect a process's pushed events until ``process/closed``: (stdout+stderr bytes, events)."""
    output = b""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        event = await client.next_notification(timeout=max(0.1, deadline - time.monotonic()))
        params = event["params"]
        assert params["processId"] == process_id, event
        events.append(event)
        if event["method"] == "process/output":
            output += base64.b64decode(params["chunk"])
        if event["method"] == "process/closed":
            return output, events


def start_params(process_id: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "processId": process_id,
        "argv": argv,
        "cwd": "file:///tmp",
        "env": {"PATH": "/usr/bin:/bin"},
        "tty": False,
        **extra,
    }


def assert_seqs_strictly_increase(events: list[dict[str, Any]]) -> None:
    lost = [event["params"] for event in events if event.get("method") == "gateway/outputLost"]
    assert lost == [], f"the gateway reported output lost: {lost}"
    seqs = [event["params"]["seq"] for event in events]
    assert len(set(seqs)) == len(seqs), f"duplicate events: {seqs}"
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"missing events: {seqs}"


async def test_bridge_on_the_other_process_runs_processes_and_moves_files(online_executor: OnlineExecutor, tmp_path):
    async with await online_executor.bridge(process=1) as client:
        info = await client.initialize("e2e-other-process")
        assert info["environmentInfo"]["executorVersion"] == PINNED_CODEX_VERSION
        assert info["sessionId"]

        # echo
        result = await client.call_result("process/start", start_params("echo", ["/bin/echo", "hello"]))
        assert result["processId"] == "echo"
        output, events = await run_to_close(client, "echo")
        assert output == b"hello\n"
        assert_seqs_strictly_increase(events)

        # a long, streamed command
        script = "for i in $(seq 1 400); do echo line-$i; done"
        await client.call_result("process/start", start_params("long", ["/bin/sh", "-c", script]))
        output, events = await run_to_close(client, "long")
        assert output.decode().splitlines() == [f"line-{i}" for i in range(1, 401)]
        assert_seqs_strictly_increase(events)

        # stdin to cat, with writeId
        await client.call_result("process/start", start_params("cat", ["/bin/cat"], pipeStdin=True))
        written = await client.call_result(
            "process/write", {"processId": "cat", "chunk": base64.b64encode(b"ping\n").decode(), "writeId": "w1"}
        )
        assert written == {"status": "accepted"}
        first = await client.next_notification("process/output")
        assert base64.b64decode(first["params"]["chunk"]) == b"ping\n"
        assert (await client.call_result("process/terminate", {"processId": "cat"}))["running"] is True

        # an 8 MiB file both ways, byte-exact
        payload = os.urandom(8 * MiB + 123)
        target = tmp_path / "big.bin"
        await client.call_result(
            "fs/writeFile", {"path": target.as_uri(), "dataBase64": base64.b64encode(payload).decode()}, timeout=60
        )
        assert target.read_bytes() == payload
        read = await client.call_result("fs/readFile", {"path": target.as_uri()}, timeout=60)
        assert base64.b64decode(read["dataBase64"]) == payload

        # other fs methods
        meta = await client.call_result("fs/getMetadata", {"path": target.as_uri()})
        assert (meta["isFile"], meta["size"]) == (True, len(payload))
        sub = tmp_path / "sub" / "deep"
        await client.call_result("fs/createDirectory", {"path": sub.as_uri(), "recursive": True})
        listing = await client.call_result("fs/readDirectory", {"path": tmp_path.as_uri()})
        assert {entry["fileName"] for entry in listing["entries"]} >= {"big.bin", "sub"}
        await client.call_result("fs/remove", {"path": target.as_uri()})
        assert not target.exists()
        missing = await client.call("fs/readFile", {"path": target.as_uri()})
        assert missing["error"]["code"] == -32004


async def test_two_bridges_with_the_same_process_id_see_only_their_own_output(online_executor: OnlineExecutor):
    async with await online_executor.bridge(0) as first, await online_executor.bridge(1) as second:
        one = await first.initialize("first")
        two = await second.initialize("second")
        assert one["sessionId"] != two["sessionId"]
        await first.call_result("process/start", start_params("p", ["/bin/sh", "-c", "echo from-first"]))
        await second.call_result("process/start", start_params("p", ["/bin/sh", "-c", "echo from-second"]))
        first_output, _ = await run_to_close(first, "p")
        second_output, _ = await run_to_close(second, "p")
        assert first_output == b"from-first\n"
        assert second_output == b"from-second\n"
        # Each sees its own process only, under its own name.
        assert (await first.call_result("process/read", {"processId": "p", "afterSeq": 0}))["closed"] is True
        with pytest.raises(TimeoutError):
            await first.next_notification(timeout=0.3)


async def test_executor_reconnect_loses_no_output(online_executor: OnlineExecutor):
    async with await online_executor.bridge(1) as client:
        await client.initialize("reconnect")
        script = "for i in $(seq 1 300); do echo tick-$i; sleep 0.01; done"
        await client.call_result("process/start", start_params("ticker", ["/bin/sh", "-c", script]))
        first = await client.next_notification("process/output")
        events = [first]
        assert online_executor.proxy.cut() >= 1  # the executor's WebSocket dies mid-stream
        output, rest = await run_to_close(client, "ticker", timeout=60)
        events += rest
        text = base64.b64decode(first["params"]["chunk"]) + output
        # The logs name the multiplexer's drops, should this ever fail (it did once under load).
        diagnosis = f"seqs {[e['params']['seq'] for e in events]}\n{online_executor.cluster.log()}"
        assert text.decode().splitlines() == [f"tick-{i}" for i in range(1, 301)], diagnosis
        assert_seqs_strictly_increase(events)
    assert online_executor.server.alive()
    assert "direct exec-server connection failed" in online_executor.server.log() or online_executor.proxy.cuts == 1
    assert online_executor.proxy.connections_total >= 2  # it really reconnected


async def test_requests_pending_across_a_reconnect_fail_retryably(online_executor: OnlineExecutor):
    async with await online_executor.bridge(0) as client:
        await client.initialize("pending")
        await client.call_result("process/start", start_params("sleeper", ["/bin/sleep", "30"]))
        # A long-poll is held by the gateway; the cut fails it with a retryable error.
        pending = client.call("process/read", {"processId": "sleeper", "afterSeq": 0, "waitMs": 20000}, timeout=30)
        task = asyncio.ensure_future(pending)
        await asyncio.sleep(0.3)
        online_executor.proxy.cut()
        response = await task
        assert response["error"]["code"] == -32000
        assert response["error"]["data"] == {"retryable": True}

        async def back() -> bool:
            reply = await client.call("process/read", {"processId": "sleeper", "afterSeq": 0})
            return "result" in reply

        deadline = time.monotonic() + 20
        while not await back():
            assert time.monotonic() < deadline, "executor did not come back"
            await asyncio.sleep(0.2)
        assert (await client.call_result("process/terminate", {"processId": "sleeper"}))["running"] is True


async def test_unknown_client_notification_does_not_disturb_another_session(online_executor: OnlineExecutor):
    async with await online_executor.bridge(0) as noisy, await online_executor.bridge(1) as quiet:
        await noisy.initialize("noisy")
        await quiet.initialize("quiet")
        await quiet.call_result("process/start", start_params("slow", ["/bin/sh", "-c", "sleep 1; echo still-here"]))
        await noisy.notify("foo/notify", {"x": 1})
        await noisy.send_raw(json.dumps({"id": 999, "result": {}}))  # a stray response
        output, _ = await run_to_close(quiet, "slow")
        assert output == b"still-here\n"
        # The noisy client's own session is intact too.
        await noisy.call_result("process/start", start_params("ok", ["/bin/echo", "ok"]))
        assert (await run_to_close(noisy, "ok"))[0] == b"ok\n"
    assert online_executor.server.alive()


def nested_params(levels: int) -> dict[str, Any]:
    """``fs/getMetadata`` params whose request frame nests ``levels`` deep (the frame's object is
    the first level, ``params`` the second, then arrays)."""
    value: list[Any] = []
    for _ in range(levels - 3):
        value = [value]
    return {"path": "file:///tmp", "x": value}


async def test_a_request_nested_deeper_than_exec_server_reads_is_refused_with_its_own_id(
    online_executor: OnlineExecutor,
):
    """exec-server reads a frame nested 127 levels deep and refuses one of 128 with id -1, which
    no client's request owns: the client would wait for ever. The gateway refuses it first."""
    async with await online_executor.bridge(1) as client:
        await client.initialize("deep")
        assert (await client.call("fs/getMetadata", nested_params(127)))["result"]["isDirectory"] is True
        refused = await client.call("fs/getMetadata", nested_params(128))
        assert refused["error"]["code"] == -32600
        assert "nested too deep" in refused["error"]["message"]
        assert (await client.call("fs/getMetadata", {"path": "file:///tmp"}))["result"]["isDirectory"] is True
    assert online_executor.server.alive()


async def revoke(gateway: GatewayProcess, turn_id: str) -> int:
    url = f"{gateway.base_url}/api/exec-gateway/revoke-turn"
    status, _ = await asyncio.to_thread(http_json, "POST", url, {"turn_id": turn_id}, headers=shared_secret_headers())
    return status


def upgrade_status(url: str, headers: dict[str, str]) -> Callable[[], Any]:
    async def attempt() -> tuple[int, str]:
        try:
            async with ws_connect(url, additional_headers=headers, open_timeout=10):
                return 101, ""
        except InvalidStatus as refused:
            return refused.response.status_code, refused.response.body.decode() if refused.response.body else ""

    return attempt


async def test_bridge_refusals_have_the_right_status(online_executor: OnlineExecutor, gateway_cluster):
    url = online_executor.bridge_url(1)
    exe = online_executor.exe_id
    cases = [
        ({}, 401, "missing Bearer"),
        ({"Authorization": "Bearer garbage"}, 401, "unauthorized"),
        ({"Authorization": "bearer " + online_executor.token()}, 401, "missing Bearer"),
        ({"Authorization": "Bearer " + online_executor.token(ttl=-5)}, 401, "token expired"),
        (
            {"Authorization": "Bearer " + online_executor.token(workspace="someone-else")},
            403,
            "exe_id not in workspace",
        ),
        (
            {"Authorization": "Bearer " + online_executor.token(exe_ids=["exe_other"])},
            403,
            "exe_id not in token allow set",
        ),
    ]
    for headers, status, message in cases:
        got_status, body = await upgrade_status(url, headers)()
        assert (got_status, json.loads(body)["error"]) == (status, message), headers

    assert await revoke(gateway_cluster[0], "trn_revoked") == 204
    revoked = {"Authorization": "Bearer " + online_executor.token(turn_id="trn_revoked")}
    assert await upgrade_status(url, revoked)() == (401, json.dumps({"error": "turn revoked"}))

    offline = await sync_to_async(services.register_executor)("user-e2e", "offline")
    await sync_to_async(services.bind_executor)(WORKSPACE, offline.executor.exe_id, "offline", "", False)
    offline_url = f"{gateway_cluster[1].ws_base_url}/bridge/{offline.executor.exe_id}"
    status, body = await upgrade_status(offline_url, {"Authorization": "Bearer " + online_executor.token()})()
    assert (status, json.loads(body)["error"]) == (503, "executor not connected")
    assert exe


async def test_revoking_a_turn_closes_its_live_bridges(online_executor: OnlineExecutor, gateway_cluster):
    async with (
        await online_executor.bridge(0, online_executor.token(turn_id="trn_live")) as doomed,
        await online_executor.bridge(1, online_executor.token(turn_id="trn_other")) as survivor,
    ):
        await doomed.initialize("doomed")
        await survivor.initialize("survivor")
        assert await revoke(gateway_cluster[1], "trn_live") == 204
        assert await doomed.wait_closed(10) == 4001
        await survivor.call_result("process/start", start_params("alive", ["/bin/echo", "alive"]))
        assert (await run_to_close(survivor, "alive"))[0] == b"alive\n"


async def test_oversize_message_is_closed_with_1009(online_executor: OnlineExecutor):
    async with await online_executor.bridge(1) as client:
        await client.initialize("big")
        # The gateway may close (1009, from the frame header) before the client has finished
        # sending the frame: the send then fails, and the close code still says why.
        with contextlib.suppress(RpcConnectionClosed):
            await client.send_raw(
                json.dumps({"id": 1, "method": "fs/writeFile", "params": {"dataBase64": "A" * (17 * MiB)}})
            )
        assert await client.wait_closed(10) == 1009
    with pytest.raises((RpcConnectionClosed, ConnectionClosed)):
        await client.call("environment/status", timeout=1)


async def test_a_second_executor_connection_evicts_the_first(gateway_cluster, make_executor_credentials):
    """Two executor connections with one identity (played by SigV4-signing test clients, so the
    close codes can be read): the newest wins, on either process, and the loser's departure does
    not clobber the winner's presence or timestamps."""
    credentials = await sync_to_async(make_executor_credentials)()
    exe_id = credentials.exe_id

    async def connect(process: int) -> Any:
        gateway = gateway_cluster[process]
        ws = await ws_connect(
            f"{gateway.ws_base_url}/codex-exec/{exe_id}",
            additional_headers=signed_upgrade_headers(credentials, gateway.host_port),
            compression=None,
        )
        initialize = json.loads(await ws.recv())
        assert initialize["method"] == "initialize"
        return ws, initialize

    first, first_init = await connect(0)
    assert first_init["params"] == {"clientName": "codexgw", "resumeSessionId": None}
    await first.send(json.dumps({"id": first_init["id"], "result": {"sessionId": "sess-1", "environmentInfo": {}}}))
    assert json.loads(await first.recv())["method"] == "initialized"
    held_by_first = presence_store().get(exe_id)
    assert held_by_first is not None

    second, second_init = await connect(1)  # another gateway process
    assert second_init["params"]["resumeSessionId"] == "sess-1"  # the session id is shared via Redis
    with pytest.raises(ConnectionClosed) as closed:
        await first.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4000
    holder = presence_store().get(exe_id)
    assert holder is not None
    assert holder.connection_id != held_by_first.connection_id

    def disconnected_at() -> Any:
        return Executor.objects.get(exe_id=exe_id).disconnected_at

    assert await sync_to_async(disconnected_at)() is None  # the evicted one did not mark it offline
    await second.close()
    assert await sync_to_async(wait_for)(lambda: presence_store().get(exe_id) is None, 10)
    assert await sync_to_async(wait_for)(lambda: disconnected_at() is not None, 10)


async def test_executor_with_wrong_credentials_is_refused_before_the_upgrade(
    gateway_cluster, make_executor_credentials
):
    credentials = await sync_to_async(make_executor_credentials)()
    gateway = gateway_cluster[0]
    wrong = ExecutorCredentials(exe_id=credentials.exe_id, token="not-the-token")
    status, _ = await upgrade_status(
        f"{gateway.ws_base_url}/codex-exec/{credentials.exe_id}", signed_upgrade_headers(wrong, gateway.host_port)
    )()
    assert status == 401
    status, _ = await upgrade_status(f"{gateway.ws_base_url}/codex-exec/{credentials.exe_id}", {})()
    assert status == 401
    assert presence_store().get(credentials.exe_id) is None


@pytest.mark.gateway_cluster(env={"CXG_BRIDGE_RESUME_WINDOW": "3s"})
async def test_a_bridge_resumes_its_session_and_gets_what_it_missed(online_executor: OnlineExecutor):
    first = await online_executor.bridge(1)
    session = (await first.initialize("leaves"))["sessionId"]
    await first.call_result("process/start", start_params("p", ["/bin/sh", "-c", "sleep 0.5; echo while-away"]))
    await first.close()
    await asyncio.sleep(1.0)  # the output happens while no bridge holds the session
    async with await online_executor.bridge(0) as again:
        resumed = await again.initialize("comes-back", resume_session_id=session)
        assert resumed["sessionId"] == session
        output, events = await run_to_close(again, "p")
        assert output == b"while-away\n"
        assert_seqs_strictly_increase(events)


@pytest.mark.gateway_cluster(env={"CXG_BRIDGE_RESUME_WINDOW": "1s"})
async def test_processes_of_a_session_nobody_resumes_are_terminated(online_executor: OnlineExecutor, tmp_path):
    marker = tmp_path / "still-running"
    script = f"while true; do touch {marker}; sleep 0.1; done"
    client = await online_executor.bridge(0)
    session = (await client.initialize("abandons"))["sessionId"]
    await client.call_result("process/start", start_params("loop", ["/bin/sh", "-c", script]))
    assert await asyncio.to_thread(wait_for, marker.exists, 10)
    await client.close()
    await asyncio.sleep(2.5)  # past the resume window: the gateway terminates the process
    marker.unlink()
    await asyncio.sleep(0.5)
    assert not marker.exists(), "the abandoned session's process is still running"
    async with await online_executor.bridge(0) as late:
        refused = await late.call("initialize", {"clientName": "late", "resumeSessionId": session})
        assert refused["error"] == {"code": -32600, "message": f"unknown session id {session}"}


@pytest.mark.gateway_cluster(count=1, env={"CXG_WS_PING_INTERVAL": "1s", "CXG_WS_PING_TIMEOUT": "2s"})
async def test_a_silent_dead_executor_is_detected_by_keepalive(gateway_cluster, make_executor_credentials):
    """An executor that vanished without FIN or RST (here: a raw socket that completed the
    upgrade and then never answers pings) is cleaned up after ping interval + timeout."""
    credentials = await sync_to_async(make_executor_credentials)()
    gateway = gateway_cluster[0]
    host, port = gateway.host_port.split(":")
    headers = signed_upgrade_headers(credentials, gateway.host_port)
    request = (
        f"GET /codex-exec/{credentials.exe_id} HTTP/1.1\r\nHost: {gateway.host_port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request.encode())
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert b" 101 " in status_line
        assert await asyncio.to_thread(wait_for, lambda: presence_store().get(credentials.exe_id) is not None, 10)
        started = time.monotonic()
        # Read nothing more and answer no ping: to the gateway this peer is dead.
        assert await asyncio.to_thread(wait_for, lambda: presence_store().get(credentials.exe_id) is None, 15)
        assert time.monotonic() - started < 12
    finally:
        writer.close()
