"""BridgeClient and Pool against the real gateway (two processes) and a real executor, over the
``/bridge`` WebSocket of the process that does not hold the executor and over the in-process
bridge of this test process (which holds no executor either: frames cross the channel layer)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from bridge import inproc
from bridge.client import (
    BridgeClient,
    BridgeClosed,
    BridgeDialError,
    BridgeError,
    BridgeRPCError,
    BridgeTimeout,
    Connector,
)
from bridge.client_pool import Pool
from executors import captoken, services
from tests.bridge_dial import websocket_connector
from tests.e2e import conftest as e2e
from tests.e2e.harness import GatewayCluster, GatewayProcess, http_json, shared_secret_headers

pytestmark = pytest.mark.e2e

# The e2e fixtures (tests/e2e/conftest.py): a real gateway cluster and real executors.
start_gateway_cluster = e2e.start_gateway_cluster
gateway_cluster = e2e.gateway_cluster
make_executor_credentials = e2e.make_executor_credentials
exec_servers = e2e.exec_servers
tcp_proxies = e2e.tcp_proxies
bound_executors = e2e.bound_executors

WORKSPACE = "ws-client"
# The pinned @openai/codex (package.json) that the executors run.
PINNED_CODEX_VERSION = json.loads((settings.BASE_DIR / "package.json").read_text())["dependencies"]["@openai/codex"]


def start_params(process_id: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    env = {"PATH": "/usr/bin:/bin"}
    return {"processId": process_id, "argv": argv, "cwd": "file:///tmp", "env": env, "tty": False, **extra}


async def revoke(gateway: GatewayProcess, turn_id: str) -> int:
    url = f"{gateway.base_url}/api/exec-gateway/revoke-turn"
    status, _ = await asyncio.to_thread(http_json, "POST", url, {"turn_id": turn_id}, headers=shared_secret_headers())
    return status


class Tokens:
    """A token provider that counts its calls; each token has its own turn id (so one can be
    revoked without affecting the next)."""

    def __init__(self, workspace: str = WORKSPACE) -> None:
        self.workspace = workspace
        self.turns: list[str] = []
        self._ids = itertools.count(1)

    async def __call__(self) -> str:
        turn = f"trn_client_{next(self._ids)}"
        self.turns.append(turn)
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn, workspace_id=self.workspace, ttl=600)


async def collect(client: BridgeClient, process_id: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    closed = asyncio.Event()

    def on_event(method: str, params: dict[str, Any]) -> None:
        events.append((method, params))
        if method == "process/closed":
            closed.set()

    with client.subscribe(on_event, process_id=process_id):
        await client.call(
            "process/start", start_params(process_id, ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
        )
        async with asyncio.timeout(20):
            await closed.wait()
    return events


@pytest.fixture
def executor(bound_executors: Callable[..., e2e.BoundExecutor]) -> e2e.BoundExecutor:
    """On gateway process 0; the pools below dial process 1."""
    return bound_executors(WORKSPACE, "box", 0)


@pytest.fixture(params=["websocket", "in-process"])
def gateway(request: pytest.FixtureRequest, gateway_cluster: GatewayCluster) -> Connector:
    if request.param == "websocket":
        return websocket_connector(gateway_cluster[1].ws_base_url)
    request.getfixturevalue("fresh_channel_layer")
    return inproc.connect


@pytest.fixture
async def pool(executor: e2e.BoundExecutor, gateway: Connector):
    tokens = Tokens()
    pool = Pool(gateway, tokens, client_name="test-client")
    pool.tokens = tokens  # type: ignore[attr-defined]
    try:
        yield pool
    finally:
        await pool.close()


async def test_concurrent_gets_share_one_initialized_client(pool, executor: e2e.BoundExecutor):
    clients = await asyncio.gather(*(pool.get(executor.exe_id) for _ in range(10)))
    assert len({id(client) for client in clients}) == 1
    assert len(pool.tokens.turns) == 1  # one dial
    client = clients[0]
    assert client.environment_info["executorVersion"] == PINNED_CODEX_VERSION
    assert client.session_id
    assert await client.call("environment/status") == {"status": "ready"}


async def test_calls_and_notifications(pool, executor: e2e.BoundExecutor):
    client = await pool.get(executor.exe_id)
    events = await collect(client, "p1")
    methods = [method for method, _ in events]
    assert methods[-1] == "process/closed"
    assert set(methods) == {"process/output", "process/exited", "process/closed"}
    output = {p["stream"]: base64.b64decode(p["chunk"]) for m, p in events if m == "process/output"}
    assert output == {"stdout": b"out\n", "stderr": b"err\n"}
    assert next(p["exitCode"] for m, p in events if m == "process/exited") == 3

    # A cancelled subscription hears nothing more.
    later: list[str] = []
    subscription = client.subscribe(lambda method, params: later.append(method), process_id="p2")
    subscription.cancel()
    await collect(client, "p2")
    assert later == []

    with pytest.raises(BridgeRPCError) as unknown:
        await client.call("foo/bar")
    assert unknown.value.code == -32601
    assert not unknown.value.retryable
    with pytest.raises(BridgeRPCError) as missing:
        await client.call("fs/readFile", {"path": "file:///nonexistent/file"})
    assert (missing.value.code, missing.value.message) == (-32004, "No such file or directory (os error 2)")


async def test_a_call_times_out_cleanly_and_the_client_goes_on(pool, executor: e2e.BoundExecutor):
    client = await pool.get(executor.exe_id)
    await client.call("process/start", start_params("sleeper", ["/bin/sleep", "30"]))
    with pytest.raises(BridgeTimeout):
        await client.call("process/read", {"processId": "sleeper", "afterSeq": 0, "waitMs": 3000}, timeout=0.3)
    await asyncio.sleep(3)  # the late answer arrives and is dropped
    assert (await client.call("process/terminate", {"processId": "sleeper"}))["running"] is True


async def test_redial_after_close_resumes_the_session(pool, executor: e2e.BoundExecutor):
    first = await pool.get(executor.exe_id)
    await first.call(
        "process/start", start_params("survivor", ["/bin/sh", "-c", "read x; echo got-$x"], pipeStdin=True)
    )
    await first.close()
    await first.close()  # idempotent
    assert first.closed
    with pytest.raises(BridgeClosed):
        await first.call("environment/status")
    with pytest.raises(BridgeClosed):
        first.subscribe(lambda method, params: None, process_id="survivor")

    second = await pool.get(executor.exe_id)
    assert second is not first
    assert len(pool.tokens.turns) == 2
    assert second.session_id == first.session_id  # resumed: its processes live on
    closed = asyncio.Event()
    output: list[bytes] = []

    def on_event(method: str, params: dict[str, Any]) -> None:
        if method == "process/output":
            output.append(base64.b64decode(params["chunk"]))
        if method == "process/closed":
            closed.set()

    with second.subscribe(on_event, process_id="survivor"):
        write = {"processId": "survivor", "chunk": base64.b64encode(b"yes\n").decode(), "writeId": "w1"}
        assert await second.call("process/write", write) == {"status": "accepted"}
        async with asyncio.timeout(10):
            await closed.wait()
    assert b"".join(output) == b"got-yes\n"


async def test_revoking_the_turn_fails_pending_calls_and_the_pool_redials(
    pool, executor: e2e.BoundExecutor, gateway_cluster
):
    client = await pool.get(executor.exe_id)
    await client.call("process/start", start_params("held", ["/bin/sleep", "30"]))
    closes: list[BridgeClosed] = []
    client.subscribe(lambda method, params: None, process_id="held", on_close=closes.append)
    pending = asyncio.ensure_future(
        client.call("process/read", {"processId": "held", "afterSeq": 0, "waitMs": 20000}, timeout=30)
    )
    await asyncio.sleep(0.3)
    assert await revoke(gateway_cluster[0], pool.tokens.turns[-1]) == 204
    with pytest.raises(BridgeClosed) as closed:
        await asyncio.wait_for(pending, 10)
    assert closed.value.code == 4001
    assert [error.code for error in closes] == [4001]
    assert (await client.wait_closed()).code == 4001

    again = await pool.get(executor.exe_id)  # a new token, a new turn
    assert again is not client
    assert (await again.call("process/terminate", {"processId": "held"}))["running"] is True


async def test_an_idempotent_call_rides_out_an_executor_reconnect(pool, executor: e2e.BoundExecutor):
    client = await pool.get(executor.exe_id)
    await client.call("process/start", start_params("steady", ["/bin/sh", "-c", "sleep 2; echo done"]))
    read = {"processId": "steady", "afterSeq": 0, "waitMs": 15000}
    plain = asyncio.ensure_future(client.call("process/read", read, timeout=30))
    retried = asyncio.ensure_future(client.call("process/read", read, timeout=30, idempotent=True))
    await asyncio.sleep(0.3)
    assert executor.proxy.cut() >= 1
    with pytest.raises(BridgeRPCError) as lost:
        await plain
    assert lost.value.retryable
    result = await retried
    assert b"".join(base64.b64decode(chunk["chunk"]) for chunk in result["chunks"]) == b"done\n"


async def test_refused_dials_say_why(executor: e2e.BoundExecutor, gateway, make_executor_credentials):
    stranger = Pool(gateway, Tokens(workspace="someone-else"))
    with pytest.raises(BridgeDialError) as refused:
        await stranger.get(executor.exe_id)
    assert (refused.value.status, str(refused.value)) == (403, "exe_id not in workspace (HTTP 403)")

    offline = await database_sync_to_async(make_executor_credentials)()
    await database_sync_to_async(services.bind_executor)(WORKSPACE, offline.exe_id, "offline", "", False)
    with pytest.raises(BridgeDialError) as unavailable:
        await Pool(gateway, Tokens()).get(offline.exe_id)
    assert (unavailable.value.status, str(unavailable.value)) == (503, "executor not connected (HTTP 503)")

    with pytest.raises(BridgeDialError, match="cannot connect"):
        await Pool(websocket_connector("ws://127.0.0.1:1"), Tokens()).get(executor.exe_id)
    with pytest.raises(BridgeError, match="exe_id is required"):
        await stranger.get("")


async def test_a_closed_pool_closes_its_clients_and_refuses_more(pool, executor: e2e.BoundExecutor):
    client = await pool.get(executor.exe_id)
    await pool.close()
    assert client.closed
    with pytest.raises(BridgeError, match="pool is closed"):
        await pool.get(executor.exe_id)


async def test_a_pool_with_a_grace_waits_for_an_executor_that_is_between_processes(
    gateway, gateway_cluster, make_executor_credentials, exec_servers
):
    """After a failover or drain the executor is offline for about a second: a dial refused with
    503 is retried within ``unavailable_grace``, and only then reported."""
    credentials = await database_sync_to_async(make_executor_credentials)()
    await database_sync_to_async(services.bind_executor)(WORKSPACE, credentials.exe_id, "late", "", False)
    with pytest.raises(BridgeDialError) as refused:
        await Pool(gateway, Tokens(), unavailable_grace=0.5).get(credentials.exe_id)
    assert refused.value.status == 503

    pool = Pool(gateway, Tokens(), unavailable_grace=30)
    dial = asyncio.ensure_future(pool.get(credentials.exe_id))
    await asyncio.sleep(1.0)
    assert not dial.done()  # still retrying the 503s
    exec_servers.remote(gateway_cluster[0].base_url, credentials)
    client = await asyncio.wait_for(dial, 30)
    assert client.environment_info
    await pool.close()
