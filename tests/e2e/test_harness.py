"""Self-tests of ``tests/e2e/harness.py`` that need no gateway WebSocket routes: ``RpcClient`` and
``TcpCutProxy`` against a real ``codex exec-server --listen``, and ``GatewayCluster``."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from django.conf import settings
from websockets.exceptions import InvalidStatus

from executors.presence import Holder, presence_store
from tests.e2e.harness import (
    RpcClient,
    RpcConnectionClosed,
    http_json,
    http_request,
    internal_secret_headers,
)

pytestmark = pytest.mark.e2e

# The pinned @openai/codex (package.json) that the executors run.
PINNED_CODEX_VERSION = json.loads((settings.BASE_DIR / "package.json").read_text())["dependencies"]["@openai/codex"]

ECHO = {
    "processId": "echo-1",
    "argv": ["/bin/echo", "hi"],
    "cwd": "file:///tmp",
    "env": {"PATH": "/usr/bin:/bin"},
    "tty": False,
    "pipeStdin": False,
    "arg0": None,
}


async def _run_echo(client: RpcClient, process_id: str = "echo-1") -> bytes:
    """process/start of ``/bin/echo hi``; returns its stdout once ``process/closed`` arrived."""
    response = await client.call("process/start", {**ECHO, "processId": process_id})
    assert response == {"id": response["id"], "result": {"processId": process_id, "sandboxType": "none"}}
    output = b""
    # process/exited may come before the last output; only process/closed means "no more output".
    while True:
        event = await client.next_notification(timeout=10)
        assert event["params"]["processId"] == process_id
        if event["method"] == "process/output":
            output += base64.b64decode(event["params"]["chunk"])
        elif event["method"] == "process/closed":
            return output


# --- RpcClient against the real exec-server -----------------------------------------------------


async def test_rpc_client_drives_a_real_exec_server(local_exec_server):
    async with await RpcClient.connect(local_exec_server.listen_url) as client:
        info = await client.initialize("harness")
        assert info["sessionId"]
        assert info["environmentInfo"]["executorVersion"] == PINNED_CODEX_VERSION
        assert await _run_echo(client) == b"hi\n"

        # The whole response object comes back, errors included; ids are integers.
        unknown = await client.call("foo/bar", {})
        assert isinstance(unknown["id"], int)
        assert unknown["error"]["code"] == -32601

        # A raw frame: invalid JSON is answered with id -1, which matches no call.
        await client.send_raw("{not json")
        parse_error = await client.next_unmatched(timeout=5)
        assert (parse_error["id"], parse_error["error"]["code"]) == (-1, -32600)
        assert all("jsonrpc" not in frame for frame in client.frames if isinstance(frame, dict))
    assert client.closed
    # exec-server (0.169.0 and 0.171.0) answers a client's close frame by dropping TCP, without a close frame back.
    assert client.close_code == 1006


async def test_next_notification_filters_by_method_and_keeps_the_rest(local_exec_server):
    async with await RpcClient.connect(local_exec_server.listen_url) as client:
        await client.initialize()
        await client.call_result("process/start", ECHO)
        closed = await client.next_notification("process/closed", timeout=10)
        assert closed["params"]["processId"] == "echo-1"
        # The output and exited notifications that came first are still queued, in order.
        remaining = [n["method"] for n in client.drain_notifications()]
        assert sorted(remaining) == ["process/exited", "process/output"]
        with pytest.raises(TimeoutError):
            await client.next_notification("process/output", timeout=0.3)


async def test_rpc_client_surfaces_a_dropped_connection(local_exec_server):
    async with await RpcClient.connect(local_exec_server.listen_url) as client:
        await client.initialize()
        # exec-server drops the TCP connection (no close frame) on an unknown notification.
        await client.notify("foo/notify", {})
        assert await client.wait_closed(timeout=10) == 1006
        with pytest.raises(RpcConnectionClosed):
            await client.next_notification(timeout=5)
        with pytest.raises(RpcConnectionClosed):
            await client.call("process/read", {"processId": "x"}, timeout=5)


async def test_rpc_client_exposes_a_refused_upgrade(local_exec_server):
    # exec-server serves WebSockets only on "/": another path is an HTTP 404 on the upgrade.
    with pytest.raises(InvalidStatus) as refused:
        await RpcClient.connect(local_exec_server.listen_url.rstrip("/") + "/other")
    assert refused.value.response.status_code == 404


# --- TcpCutProxy ------------------------------------------------------------------------------


async def test_cut_proxy_cuts_live_connections_and_accepts_new_ones(local_exec_server, tcp_proxies):
    proxy = tcp_proxies(local_exec_server.listen_url)
    url = proxy.url("ws", "/")
    client = await RpcClient.connect(url)
    try:
        session = (await client.initialize())["sessionId"]
        assert await _run_echo(client) == b"hi\n"
        assert proxy.active_connections == 1
        assert proxy.bytes_up > 0
        assert proxy.bytes_down > 0

        assert proxy.cut() == 1
        assert await client.wait_closed(timeout=10) == 1006
        assert proxy.active_connections == 0

        # The listener still accepts: a new connection through the proxy resumes the session.
        async with await RpcClient.connect(url) as again:
            resumed = await again.initialize(resume_session_id=session)
            assert resumed["sessionId"] == session
            assert await _run_echo(again, "echo-2") == b"hi\n"
        assert proxy.connections_total == 2
        assert proxy.cuts == 1
    finally:
        await client.close()


async def test_cut_proxy_retargets_new_connections_only(exec_servers, tcp_proxies):
    first = exec_servers.listen()
    second = exec_servers.listen()
    proxy = tcp_proxies(first.listen_url)
    url = proxy.url("ws", "/")
    async with await RpcClient.connect(url) as on_first:
        await on_first.initialize()
        host, port = second.listen_url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
        proxy.retarget(host, int(port))
        async with await RpcClient.connect(url) as on_second:
            await on_second.initialize()
            # Stopping the first exec-server ends only the connection that still goes to it.
            first.stop()
            await on_first.wait_closed(timeout=10)
            assert await _run_echo(on_second) == b"hi\n"


def test_cut_proxy_refuses_cleanly_when_the_target_is_down(tcp_proxies):
    proxy = tcp_proxies("127.0.0.1", 1)  # nothing listens on port 1
    # The proxy accepts, fails to reach the target and aborts the client's connection.
    with pytest.raises(ConnectionError):
        http_request("GET", proxy.url("http", "/healthz"), timeout=5)
    assert proxy.failed_upstream == 1


# --- GatewayCluster -----------------------------------------------------------------------------


def test_gateway_cluster_processes_share_the_test_database_and_redis(gateway_cluster, executor_credentials):
    assert len(gateway_cluster) == 2
    assert len({gateway.port for gateway in gateway_cluster}) == 2
    for gateway in gateway_cluster:
        assert http_request("GET", gateway.base_url + "/healthz") == (200, b"ok"), gateway_cluster.log()

    exe_id = executor_credentials.exe_id
    workspace = f"ws-harness-{time.monotonic_ns()}"
    bindings = f"/api/codex-exec/workspaces/{workspace}/executors"
    status, body = http_json(
        "POST",
        gateway_cluster[0].base_url + bindings,
        {"exe_id": exe_id, "name": "harness"},
        headers=internal_secret_headers(),
    )
    assert (status, body) == (201, {"status": "ok"}), gateway_cluster.log()

    def listed(gateway) -> list[dict[str, Any]]:
        status, body = http_json("GET", gateway.base_url + bindings, headers=internal_secret_headers())
        assert status == 200, gateway.log()
        assert isinstance(body, list)
        return body

    for gateway in gateway_cluster:
        assert [(b["exe_id"], b["is_online"]) for b in listed(gateway)] == [(exe_id, False)]

    # Presence claimed by the test process (same Redis, same prefix) is seen by every process.
    presence_store().claim(exe_id, Holder(channel_name="harness.test", connection_id="c1", since=time.time()))
    for gateway in gateway_cluster:
        assert [(b["exe_id"], b["is_online"]) for b in listed(gateway)] == [(exe_id, True)]


@pytest.mark.gateway_cluster(count=3)
def test_gateway_cluster_size_and_a_killed_process(gateway_cluster):
    assert len(gateway_cluster) == 3
    victim, survivor = gateway_cluster[0], gateway_cluster[1]
    assert victim.kill() == -9
    assert not victim.alive()
    assert [g.name for g in gateway_cluster.alive()] == ["gateway[1]", "gateway[2]"]
    assert http_request("GET", survivor.base_url + "/healthz") == (200, b"ok")
    assert survivor.terminate() is not None
