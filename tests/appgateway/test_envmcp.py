"""env-mcp over MCP's streamable HTTP (``/mcp/env/<workspace_id>``): its authentication as a
plain ASGI app (no sockets), the spawn builder's ``[mcp_servers.agentserver]`` block, and the
MCP protocol and tool calls spoken over real HTTP to a real gateway process, whose tools reach a
real executor. Also ``/api/exec-gateway/connected`` with a capability token."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from appgateway import envmcp, envmcp_auth, spawn_builder
from appgateway.envmcp_auth import Caller
from appgateway.envmcp_http import env_mcp_app
from bridge.ws_auth import Denial
from executors import captoken, services
from executors.presence import Holder, presence_store
from executors.revocation import revoke_turn, revoked_set
from sdk.tools import tool_specs
from tests.e2e import conftest as e2e
from tests.e2e.harness import GatewayCluster, async_wait_for
from tests.e2e.processes import pids_of, process_alive

# The e2e fixtures (tests/e2e/conftest.py): a real gateway cluster and real executors.
start_gateway_cluster = e2e.start_gateway_cluster
make_executor_credentials = e2e.make_executor_credentials
exec_servers = e2e.exec_servers
tcp_proxies = e2e.tcp_proxies
bound_executors = e2e.bound_executors

WORKSPACE = "ws-envmcp"
PROTOCOL = "2025-06-18"


def mint(workspace: str = WORKSPACE, ttl: float = 600, **kwargs: Any) -> tuple[str, str]:
    turn_id = f"trn_test{secrets.token_hex(4)}"
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn_id, workspace_id=workspace, ttl=ttl, **kwargs)
    return turn_id, token


# --- authentication, as an ASGI app without sockets -----------------------------------------


async def asgi_request(path: str, authorization: str | None) -> tuple[int, dict[str, str], Any]:
    """One POST through ``env_mcp_app``; (status, headers, JSON body)."""
    headers = [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b""}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await env_mcp_app(scope, receive, send)
    start = sent[0]
    payload = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(payload)


@pytest.mark.django_db
async def test_a_request_without_a_valid_token_is_401_and_never_reaches_mcp():
    path = f"/mcp/env/{WORKSPACE}"
    _, expired = mint(ttl=10, now=time.time() - 60)
    _, good = mint()
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    cases = {
        None: "missing Bearer token (the spawn's capability token)",
        "Basic abc": "missing Bearer token (the spawn's capability token)",
        "Bearer ": "missing Bearer token (the spawn's capability token)",
        "Bearer not-a-token": "invalid token: unauthorized",
        f"Bearer {forged}": "invalid token: unauthorized",
        f"Bearer {expired}": "invalid token: token expired",
    }
    for authorization, error in cases.items():
        status, headers, body = await asgi_request(path, authorization)
        assert (status, body) == (401, {"error": error}), authorization
        assert headers["www-authenticate"] == 'Bearer realm="env-mcp"'


@pytest.mark.django_db
async def test_a_revoked_turn_is_401_and_another_workspaces_token_403():
    turn_id, token = mint()
    await asyncio.to_thread(revoke_turn, turn_id, int(time.time()) + 600)
    assert (await asgi_request(f"/mcp/env/{WORKSPACE}", f"Bearer {token}"))[::2] == (
        401,
        {"error": "invalid token: turn revoked"},
    )
    _, other = mint(workspace="ws-other")
    status, headers, body = await asgi_request(f"/mcp/env/{WORKSPACE}", f"Bearer {other}")
    assert (status, body) == (403, {"error": "token is for another workspace"})
    assert "www-authenticate" not in headers
    # A path that names no single workspace is not env-mcp's.
    for path in ("/mcp/env/", f"/mcp/env/{WORKSPACE}/x"):
        assert (await asgi_request(path, f"Bearer {other}"))[0] == 404


@pytest.mark.django_db
async def test_an_expired_token_passes_while_its_spawn_turn_lives_on_renewed(monkeypatch):
    # The token sits in the app-server's environment; the spawn builder renews its turn instead.
    turn_id, expired = mint(ttl=10, now=time.time() - 60)
    later = int(time.time()) + 600
    monkeypatch.setitem(spawn_builder._turns, WORKSPACE, spawn_builder.SpawnTurn(turn_id, later))
    caller = await envmcp_auth.authorize(WORKSPACE, f"Bearer {expired}")
    assert isinstance(caller, Caller)
    assert caller.turn_id == turn_id
    fresh = captoken.verify(caller.token, settings.CXG_CAPTOKEN_HMAC_SECRET)  # what the tools present
    assert (fresh.turn_id, fresh.workspace_id, fresh.exe_ids) == (turn_id, WORKSPACE, None)
    assert later - 2 <= fresh.exp <= later
    again = await envmcp_auth.authorize(WORKSPACE, f"Bearer {expired}")
    assert isinstance(again, Caller)
    assert again.token == caller.token  # one stand-in per renewal: the tools' context is reused
    refused = Denial(401, "invalid token: token expired")
    # Its turn ended, or another turn is the workspace's live one: expired.
    monkeypatch.setitem(spawn_builder._turns, WORKSPACE, spawn_builder.SpawnTurn(turn_id, int(time.time()) - 1))
    assert await envmcp_auth.authorize(WORKSPACE, f"Bearer {expired}") == refused
    monkeypatch.setitem(spawn_builder._turns, WORKSPACE, spawn_builder.SpawnTurn("trn_other", later))
    assert await envmcp_auth.authorize(WORKSPACE, f"Bearer {expired}") == refused
    # Revocation still wins.
    monkeypatch.setitem(spawn_builder._turns, WORKSPACE, spawn_builder.SpawnTurn(turn_id, later))
    await asyncio.to_thread(revoke_turn, turn_id, later)
    assert await envmcp_auth.authorize(WORKSPACE, f"Bearer {expired}") == Denial(401, "invalid token: turn revoked")


async def test_tool_contexts_follow_the_token_and_close_with_the_turn(settings):
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:6161"
    turn_id, token = mint()
    limited = captoken.mint(
        settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn_id, workspace_id=WORKSPACE, ttl=600, exe_ids=["exe_1"]
    )
    workspace_wide = envmcp.context_for(Caller(WORKSPACE, turn_id, token))
    assert envmcp.context_for(Caller(WORKSPACE, turn_id, token)) is workspace_wide
    # A token of the same turn limited to one executor never gets the workspace-wide bridges.
    assert envmcp.context_for(Caller(WORKSPACE, turn_id, limited)) is not workspace_wide
    assert token not in repr(Caller(WORKSPACE, turn_id, token))
    await envmcp.close_turn(turn_id)
    assert envmcp.context_for(Caller(WORKSPACE, turn_id, token)) is not workspace_wide
    await envmcp.close_turn(turn_id)


# --- the spawn builder ------------------------------------------------------------------------


async def test_builder_points_env_mcp_at_this_process_with_a_fresh_revocable_turn(settings):
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:6161"
    settings.CXG_AGENTSERVER_INTERNAL_URL = ""  # static model key: no model env from the builder
    first = await spawn_builder.build(WORKSPACE)
    (server,) = first.mcp_servers
    assert server.name == "agentserver"
    assert server.url == f"http://127.0.0.1:6161/mcp/env/{WORKSPACE}"
    assert server.bearer_token_env_var == "CXG_WORKSPACE_TOKEN"
    assert server.default_tools_approval_mode == "approve"
    # The token is in the app-server's environment only (codex reads it from there).
    token = first.env[spawn_builder.TOKEN_ENV]
    assert token not in repr(server)
    payload = captoken.verify(token, settings.CXG_CAPTOKEN_HMAC_SECRET)
    assert payload.workspace_id == WORKSPACE
    assert payload.turn_id.startswith("trn_")
    assert payload.exe_ids is None
    assert payload.user_id == ""
    assert payload.exp - payload.iat == int(settings.CXG_CAPTOKEN_TTL) == 24 * 3600
    # The next spawn of the workspace (a restart or a crash respawn) revokes this one's turn.
    assert not revoked_set().contains(payload.turn_id)
    second = await spawn_builder.build(WORKSPACE)
    renewed = captoken.verify(second.env[spawn_builder.TOKEN_ENV], settings.CXG_CAPTOKEN_HMAC_SECRET)
    assert renewed.turn_id != payload.turn_id
    assert revoked_set().contains(payload.turn_id)
    assert not revoked_set().contains(renewed.turn_id)
    await spawn_builder.revoke(WORKSPACE)
    assert revoked_set().contains(renewed.turn_id)


async def test_builder_outside_a_serving_process_spawns_without_env_mcp(settings):
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:6161"
    settings.CXG_AGENTSERVER_INTERNAL_URL = ""
    served = await spawn_builder.build(WORKSPACE)
    turn = captoken.verify(served.env[spawn_builder.TOKEN_ENV], settings.CXG_CAPTOKEN_HMAC_SECRET)
    settings.CXG_SELF_HTTP_BASE_URL = ""  # and this test process never ran manage.py serve
    unserved = await spawn_builder.build(WORKSPACE)
    assert unserved.mcp_servers == ()
    assert spawn_builder.TOKEN_ENV not in unserved.env
    assert revoked_set().contains(turn.turn_id)  # the earlier spawn's turn is revoked all the same


# --- /api/exec-gateway/connected with a capability token --------------------------------------


@pytest.fixture
def online(db) -> Callable[[str, str], str]:
    def bind(workspace: str, name: str) -> str:
        created = services.register_executor("user-envmcp", name)
        exe_id = created.executor.exe_id
        services.bind_executor(workspace, exe_id, name, "", False)
        presence_store().claim(exe_id, Holder(channel_name="test.channel", connection_id=name, since=time.time()))
        return exe_id

    return bind


def connected(api, token: str, workspace: str | None = None) -> tuple[int, Any]:
    query = f"?workspace_id={workspace}" if workspace is not None else ""
    response = api.get(f"/api/exec-gateway/connected{query}", HTTP_AUTHORIZATION=f"Bearer {token}")
    return response.status_code, response.json()


def test_connected_takes_the_workspace_from_a_capability_token(api, online):
    box = online(WORKSPACE, "box")
    online("ws-other", "elsewhere")
    _, token = mint()
    for query in (None, WORKSPACE):
        status, body = connected(api, token, query)
        assert status == 200
        assert [item["exe_id"] for item in body] == [box]
    assert connected(api, token, "ws-other") == (403, {"error": "token is for another workspace"})
    # The shared secret still lists any workspace.
    status, body = connected(api, settings.CXG_INTERNAL_SHARED_SECRET, "ws-other")
    assert status == 200
    assert [item["name"] for item in body] == ["elsewhere"]


def test_connected_limits_a_token_to_its_executors(api, online):
    online(WORKSPACE, "box")
    allowed = online(WORKSPACE, "other-box")
    _, token = mint(exe_ids=[allowed])
    status, body = connected(api, token)
    assert status == 200
    assert [item["exe_id"] for item in body] == [allowed]


def test_connected_refuses_bad_expired_and_revoked_tokens(api, online):
    online(WORKSPACE, "box")
    _, expired = mint(ttl=10, now=time.time() - 60)
    turn_id, revoked = mint()
    revoke_turn(turn_id, int(time.time()) + 600)
    _, forged = mint()
    forged = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
    assert connected(api, expired) == (401, {"error": "token expired"})
    assert connected(api, revoked) == (401, {"error": "turn revoked"})
    assert connected(api, forged) == (401, {"error": "unauthorized"})
    assert connected(api, "not-the-secret") == (401, {"error": "unauthorized"})


@pytest.mark.django_db(transaction=True)
async def test_env_mcp_names_come_in_process_with_the_routes_checks(online):
    """The names env-mcp's tools resolve are what ``connected`` would answer for the same token,
    read in this process (an app-only process serves no exec-gateway routes)."""
    await database_sync_to_async(online)(WORKSPACE, "box")
    allowed = await database_sync_to_async(online)(WORKSPACE, "other-box")
    _, token = mint(exe_ids=[allowed])
    assert [b["exe_id"] for b in await envmcp.connected_fetcher(WORKSPACE, token)()] == [allowed]
    with pytest.raises(RuntimeError, match="another workspace"):
        await envmcp.connected_fetcher("ws-other", token)()
    turn_id, revoked = mint()
    await database_sync_to_async(revoke_turn)(turn_id, int(time.time()) + 600)
    with pytest.raises(RuntimeError, match="token refused: turn revoked"):
        await envmcp.connected_fetcher(WORKSPACE, revoked)()


# --- MCP over real HTTP to a real gateway, tools on a real executor ---------------------------


class McpHttp:
    """A minimal streamable-HTTP MCP client: POSTs JSON-RPC, reads the JSON or SSE answer."""

    def __init__(self, base_url: str, token: str, workspace: str = WORKSPACE) -> None:
        self.url = f"{base_url}/mcp/env/{workspace}"
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(60.0))
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }

    async def post(self, message: dict[str, Any]) -> httpx.Response:
        return await self.client.post(self.url, json=message, headers=self.headers)

    async def request(self, request_id: int, method: str, params: Any = None) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        response = await self.post(message)
        assert response.status_code == 200, response.text
        if "mcp-session-id" in response.headers:
            self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
            self.headers["Mcp-Protocol-Version"] = PROTOCOL
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                answer: dict[str, Any] = json.loads(line[5:])
                if answer.get("id") == request_id:
                    return answer
        raise AssertionError(f"no answer to {request_id}: {response.text!r}")

    async def notify(self, method: str, params: Any = None) -> int:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        return (await self.post(message)).status_code

    async def initialize(self) -> dict[str, Any]:
        params = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}
        answer = await self.request(0, "initialize", params)
        assert await self.notify("notifications/initialized") == 202
        return answer

    async def call_tool(self, request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        answer = await self.request(request_id, "tools/call", {"name": name, "arguments": arguments})
        result: dict[str, Any] = answer["result"]
        return result

    async def close(self) -> None:
        await self.client.aclose()


@pytest.fixture
def relay_cluster(start_gateway_cluster, tcp_proxies) -> GatewayCluster:
    """Two gateway processes with the byte relay on. Its public URL must be known before they
    start, so it is a proxy, pointed at process 0 once that is up; the executors' curl reaches it."""
    front = tcp_proxies("127.0.0.1", 1)
    cluster: GatewayCluster = start_gateway_cluster(2, {"CXG_PUBLIC_HTTPS_BASE_URL": front.url("http")})
    front.retarget("127.0.0.1", cluster[0].port)
    return cluster


@pytest.fixture
def box(bound_executors: Callable[..., e2e.BoundExecutor], relay_cluster: GatewayCluster) -> e2e.BoundExecutor:
    return bound_executors(WORKSPACE, "box", 0, cluster=relay_cluster)


@pytest.fixture
async def live(box: e2e.BoundExecutor, relay_cluster: GatewayCluster) -> AsyncIterator[tuple[McpHttp, str]]:
    """An MCP client of gateway process 1, the executor "box" on process 0."""
    turn_id, token = mint()
    client = McpHttp(relay_cluster[1].base_url, token)
    try:
        yield client, turn_id
    finally:
        await client.close()


@pytest.mark.e2e
async def test_handshake_listing_and_tools_on_the_executor(live, box: e2e.BoundExecutor, tmp_path: Path):
    client, _ = live
    initialized = (await client.initialize())["result"]
    assert initialized["serverInfo"]["name"] == "agentserver"
    assert initialized["serverInfo"]["version"] == envmcp.SERVER_VERSION
    assert initialized["instructions"] == envmcp.INSTRUCTIONS
    assert "tools" in initialized["capabilities"]
    tools = (await client.request(1, "tools/list"))["result"]["tools"]
    # Only what codex's own tools lack, with the shared tools' schemas.
    assert [(tool["name"], tool["inputSchema"]) for tool in tools] == [
        (spec["name"], spec["inputSchema"]) for spec in tool_specs() if spec["name"] in envmcp.OFFERED
    ]
    assert envmcp.OFFERED == ("list_environments", "copy_path")
    listed = await client.call_tool(2, "list_environments", {})
    assert listed["isError"] is False
    (environment,) = listed["structuredContent"]["environments"]
    assert environment["name"] == "box"
    source = tmp_path / "source.txt"
    source.write_text("copied through the relay\n")
    copy = {
        "source_environment_id": "box",
        "source_path": str(source),
        "destination_environment_id": "box",
        "destination_path": str(tmp_path / "copy.txt"),
    }
    copied = await client.call_tool(3, "copy_path", copy)
    assert copied["isError"] is False, copied
    assert copied["structuredContent"]["transport"] == "http"
    assert (tmp_path / "copy.txt").read_text() == "copied through the relay\n"
    # Bad arguments are a result the model can act on; a tool not offered is a protocol error.
    invalid = await client.call_tool(4, "copy_path", {"source_path": "/x"})
    assert invalid["isError"] is True
    assert "required" in invalid["content"][0]["text"]
    for name in ("rm_rf", "shell"):
        unknown = await client.request(5, "tools/call", {"name": name, "arguments": {}})
        assert unknown["error"]["message"] == f"unknown tool: {name}"
    # list_environments lists the executors that are online.
    await asyncio.to_thread(box.server.stop)
    assert await async_wait_for(lambda: presence_store().get(box.exe_id) is None, 20)
    offline = await client.call_tool(6, "list_environments", {})
    assert offline["structuredContent"]["environments"] == []


@pytest.mark.e2e
async def test_a_session_belongs_to_the_turn_that_opened_it(live, relay_cluster: GatewayCluster):
    client, _ = live
    await client.initialize()
    _, other_token = mint()
    intruder = McpHttp(relay_cluster[1].base_url, other_token)
    intruder.headers["Mcp-Session-Id"] = client.headers["Mcp-Session-Id"]
    try:
        response = await intruder.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert response.status_code == 404, response.text
    finally:
        await intruder.close()


@pytest.mark.e2e
async def test_a_cancelled_call_kills_its_process_on_the_executor(live, tmp_path: Path):
    client, _ = live
    await client.initialize()
    source = tmp_path / "never-written.fifo"  # the source's curl waits for a writer until killed
    os.mkfifo(source)
    copy = {
        "source_environment_id": "box",
        "source_path": str(source),
        "destination_environment_id": "box",
        "destination_path": str(tmp_path / "copy.bin"),
    }
    call = asyncio.ensure_future(client.call_tool(7, "copy_path", copy))
    assert await async_wait_for(lambda: pids_of("curl", str(source)), 20)
    (pid,) = pids_of("curl", str(source))  # the executor runs on this machine: ps sees its processes
    assert await client.notify("notifications/cancelled", {"requestId": 7, "reason": "test"}) == 202
    assert await async_wait_for(lambda: not process_alive(pid), 10), f"curl {pid} still runs on the executor"
    call.cancel()  # a cancelled request is never answered
    await asyncio.gather(call, return_exceptions=True)


@pytest.mark.e2e
async def test_a_revoked_turn_is_refused_at_once(live):
    client, turn_id = live
    await client.initialize()
    assert (await client.call_tool(1, "list_environments", {}))["isError"] is False
    await asyncio.to_thread(revoke_turn, turn_id, int(time.time()) + 600)
    refused = await client.post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}})
    assert (refused.status_code, refused.json()) == (401, {"error": "invalid token: turn revoked"})


async def test_an_app_server_that_is_gone_has_its_spawn_turn_revoked():
    """The supervisor's stop hooks (stopped, crashed or taken over) revoke the spawn's turn, so
    its env-mcp capability token opens no new bridge."""
    import time as _time

    from appgateway import spawn_builder
    from appgateway.supervisor import get_supervisor
    from executors.revocation import revoked_set

    turn = spawn_builder.SpawnTurn(turn_id="trn_stop_hook_test", exp=int(_time.time()) + 600)
    spawn_builder._turns["ws-stop-hook"] = turn
    assert not revoked_set().contains(turn.turn_id)
    await get_supervisor()._stopped("ws-stop-hook")
    assert revoked_set().contains(turn.turn_id)
    assert "ws-stop-hook" not in spawn_builder._turns
