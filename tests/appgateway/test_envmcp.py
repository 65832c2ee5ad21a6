"""env-mcp (``manage.py envmcp``) as codex runs it: a subprocess spoken to over real pipes, with
the command line and environment the spawn builder renders; tool calls go through a real gateway
to a real executor. Also the builder itself and ``/api/exec-gateway/connected`` with a
capability token."""

# ruff: noqa: ASYNC109 - the helpers take per-call timeouts

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from django.conf import settings

from appgateway import envmcp, spawn_builder
from codexgw import runtime
from executors import captoken, services
from executors.presence import Holder, presence_store
from executors.revocation import revoke_turn, revoked_set
from sdk.tools import tool_specs
from tests.e2e import conftest as e2e
from tests.e2e.harness import GatewayCluster

# The e2e fixtures (tests/e2e/conftest.py): a real gateway cluster and real executors.
start_gateway_cluster = e2e.start_gateway_cluster
gateway_cluster = e2e.gateway_cluster
make_executor_credentials = e2e.make_executor_credentials
exec_servers = e2e.exec_servers
tcp_proxies = e2e.tcp_proxies
bound_executors = e2e.bound_executors

WORKSPACE = "ws-envmcp"
NO_GATEWAY = "http://127.0.0.1:9"  # nothing listens: protocol tests make no tool calls


class EnvMcp:
    """One ``manage.py envmcp`` child; every stdout line must be a JSON-RPC message."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: dict[Any, dict[str, Any]] = {}
        self.order: list[Any] = []  # response ids, in the order they arrived

    @classmethod
    async def start(cls, token: str, workspace: str = WORKSPACE, **env_changes: str | None) -> EnvMcp:
        server = spawn_builder.env_mcp_server(workspace, token, runtime.self_ws_base_url())
        # What codex gives an MCP child (codex-wire §C.6): a few basics plus the block's env.
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", **server.env}
        for name, value in env_changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        process = await asyncio.create_subprocess_exec(
            server.command,
            *server.args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=envmcp.MAX_LINE,
        )
        return cls(process)

    async def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.process.stdin is not None
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def request(self, request_id: int, method: str, params: Any = None, timeout: float = 30.0) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return await self.response(request_id, timeout)

    async def call_tool(self, request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        response = await self.request(request_id, "tools/call", {"name": name, "arguments": arguments}, timeout=60)
        result: dict[str, Any] = response["result"]
        return result

    async def response(self, request_id: Any, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while request_id not in self.pending:
                await self._read_one()
        return self.pending.pop(request_id)

    async def _read_one(self) -> None:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise AssertionError(f"env-mcp closed stdout:\n{await self.stderr()}")
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0", message
        assert "id" in message, message
        self.pending[message["id"]] = message
        self.order.append(message["id"])

    async def close_stdin(self, timeout: float = 20.0) -> int:
        """EOF on stdin; returns the exit code. Whatever it printed meanwhile must be JSON-RPC."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        async with asyncio.timeout(timeout):
            rest = await self.process.stdout.read()
            code = await self.process.wait()
        for line in rest.splitlines():
            message = json.loads(line)
            self.pending[message["id"]] = message
            self.order.append(message["id"])
        return code

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        return (await self.process.stderr.read()).decode(errors="replace")


def mint(workspace: str = WORKSPACE, ttl: float = 600, **kwargs: Any) -> tuple[str, str]:
    turn_id = f"trn_test{secrets.token_hex(4)}"
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn_id, workspace_id=workspace, ttl=ttl, **kwargs)
    return turn_id, token


@pytest.fixture
async def server(settings) -> AsyncIterator[EnvMcp]:
    settings.CXG_SELF_HTTP_BASE_URL = NO_GATEWAY
    child = await EnvMcp.start(mint()[1])
    try:
        yield child
    finally:
        if child.process.returncode is None:
            child.process.kill()
            await child.process.wait()


# --- the MCP protocol -----------------------------------------------------------------------


async def test_handshake_and_listings(server: EnvMcp):
    initialized = await server.request(
        0,
        "initialize",
        {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "codex-mcp-client"}},
    )
    assert initialized["result"] == {
        "protocolVersion": "2025-06-18",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "agentserver", "version": envmcp.SERVER_VERSION},
        "instructions": envmcp.INSTRUCTIONS,
    }
    assert "executors" in envmcp.INSTRUCTIONS.splitlines()[0]
    await server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    tools = await server.request(1, "tools/list", {"_meta": {"progressToken": 0}})
    assert tools["result"] == {"tools": tool_specs()}
    assert (await server.request(2, "prompts/list"))["result"] == {"prompts": []}
    assert (await server.request(3, "resources/list"))["result"] == {"resources": []}
    assert (await server.request(4, "resources/templates/list"))["result"] == {"resourceTemplates": []}
    unknown = await server.request(5, "sampling/createMessage", {})
    assert unknown["error"] == {"code": -32601, "message": "method not found: sampling/createMessage"}
    assert await server.close_stdin() == 0
    # Nothing answered the notification: every line was the answer to a request, in order.
    assert server.order == [0, 1, 2, 3, 4, 5]


async def test_the_client_protocol_version_is_echoed(server: EnvMcp):
    initialized = await server.request(7, "initialize", {"protocolVersion": "2025-03-26"})
    assert initialized["result"]["protocolVersion"] == "2025-03-26"


async def test_bad_tool_calls_are_json_rpc_errors(server: EnvMcp):
    unknown = await server.request(1, "tools/call", {"name": "rm_rf", "arguments": {}})
    assert unknown["error"] == {"code": -32601, "message": "unknown tool: rm_rf"}
    bad = await server.request(2, "tools/call", {"name": "shell", "arguments": ["ls"]})
    assert bad["error"]["code"] == -32602
    # Bad arguments to a real tool are a result the model can act on, not a protocol error.
    invalid = await server.request(3, "tools/call", {"name": "shell", "arguments": {"command": ["ls"]}})
    assert invalid["result"]["isError"] is True
    assert "environment_id is required" in invalid["result"]["content"][0]["text"]


async def test_malformed_and_overlong_lines_are_dropped(server: EnvMcp):
    await server.send(b"this is not json\n")
    await server.send(b"[1, 2, 3]\n\n")
    # Over 16 MiB: it would be answered (id 99) if it were not dropped whole.
    padding = "x" * (envmcp.MAX_LINE + 1024)
    await server.send(
        json.dumps({"jsonrpc": "2.0", "id": 99, "method": "ping", "params": {"p": padding}}).encode() + b"\n"
    )
    assert (await server.request(1, "ping"))["result"] == {}
    assert await server.close_stdin() == 0
    assert server.order == [1]
    log = await server.stderr()
    assert "dropping a malformed line: b'this is not json\\n'" in log
    assert "dropping a line longer than" in log


async def test_a_failed_stdout_write_stops_it(settings):
    settings.CXG_SELF_HTTP_BASE_URL = NO_GATEWAY
    server = spawn_builder.env_mcp_server(WORKSPACE, mint()[1], runtime.self_ws_base_url())
    read_end, write_end = os.pipe()
    os.close(read_end)  # codex went away: every write to stdout fails
    try:
        process = await asyncio.create_subprocess_exec(
            server.command,
            *server.args,
            env={"PATH": os.environ["PATH"], **server.env},
            stdin=asyncio.subprocess.PIPE,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    assert process.stdin is not None
    assert process.stderr is not None
    process.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    await process.stdin.drain()  # stdin stays open: only the failed write can stop it
    async with asyncio.timeout(20):
        assert await process.wait() == 1
    assert "stdout write failed, stopping" in (await process.stderr.read()).decode()


@pytest.mark.parametrize(
    ("env_changes", "message"),
    [({spawn_builder.TOKEN_ENV: ""}, "$CXG_WORKSPACE_TOKEN is empty"), ({spawn_builder.TOKEN_ENV: None}, "is empty")],
)
async def test_without_a_token_it_exits_1_and_prints_nothing(settings, env_changes, message):
    settings.CXG_SELF_HTTP_BASE_URL = NO_GATEWAY
    child = await EnvMcp.start("unused", **env_changes)
    assert child.process.stdout is not None
    assert await child.process.wait() == 1
    assert await child.process.stdout.read() == b""
    assert message in await child.stderr()


async def test_builder_renders_env_mcp_with_a_fresh_revocable_turn(settings):
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:6161"
    settings.CXG_AGENTSERVER_INTERNAL_URL = ""  # static model key: no model env from the builder
    first = await spawn_builder.build(WORKSPACE)
    (server,) = first.mcp_servers
    token = server.env[spawn_builder.TOKEN_ENV]
    assert server.name == "agentserver"
    assert server.default_tools_approval_mode == "approve"
    assert server.args[1:] == [
        "envmcp",
        "--workspace-id",
        WORKSPACE,
        "--exec-gateway-url",
        "ws://127.0.0.1:6161",
        "--token-env",
        "CXG_WORKSPACE_TOKEN",
    ]
    assert token not in " ".join([server.command, *server.args])  # never in /proc/<pid>/cmdline
    assert server.env["DJANGO_SETTINGS_MODULE"] == "appgateway.envmcp_settings"
    for secret in (settings.CXG_INTERNAL_SHARED_SECRET, settings.CXG_CAPTOKEN_HMAC_SECRET, settings.SECRET_KEY):
        assert secret not in json.dumps(dict(server.env))
    payload = captoken.verify(token, settings.CXG_CAPTOKEN_HMAC_SECRET)
    assert payload.workspace_id == WORKSPACE
    assert payload.turn_id.startswith("trn_")
    assert payload.exe_ids is None
    assert payload.user_id == ""
    assert payload.exp - payload.iat == int(settings.CXG_CAPTOKEN_TTL) == 24 * 3600
    # The next spawn of the workspace (a restart or a crash respawn) revokes this one's turn.
    assert not revoked_set().contains(payload.turn_id)
    second = await spawn_builder.build(WORKSPACE)
    renewed = captoken.verify(second.mcp_servers[0].env[spawn_builder.TOKEN_ENV], settings.CXG_CAPTOKEN_HMAC_SECRET)
    assert renewed.turn_id != payload.turn_id
    assert revoked_set().contains(payload.turn_id)
    assert not revoked_set().contains(renewed.turn_id)
    await spawn_builder.revoke(WORKSPACE)
    assert revoked_set().contains(renewed.turn_id)


async def test_builder_outside_a_serving_process_spawns_without_env_mcp(settings):
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:6161"
    settings.CXG_AGENTSERVER_INTERNAL_URL = ""
    served = await spawn_builder.build(WORKSPACE)
    turn_id = captoken.verify(served.mcp_servers[0].env[spawn_builder.TOKEN_ENV], settings.CXG_CAPTOKEN_HMAC_SECRET)
    settings.CXG_SELF_HTTP_BASE_URL = ""  # and this test process never ran manage.py serve
    unserved = await spawn_builder.build(WORKSPACE)
    assert unserved.mcp_servers == ()
    assert revoked_set().contains(turn_id.turn_id)  # the earlier spawn's turn is revoked all the same


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


# --- tool calls through a real gateway to a real executor -------------------------------------


@pytest.fixture
def box(bound_executors: Callable[..., e2e.BoundExecutor]) -> e2e.BoundExecutor:
    return bound_executors(WORKSPACE, "box", 0)


@pytest.fixture
async def live(settings, box: e2e.BoundExecutor, gateway_cluster: GatewayCluster) -> AsyncIterator[tuple[EnvMcp, str]]:
    """env-mcp against gateway process 1, the executor "box" on process 0; yields (child, turn id)."""
    settings.CXG_SELF_HTTP_BASE_URL = gateway_cluster[1].base_url
    turn_id, token = mint()
    child = await EnvMcp.start(token)
    await child.request(0, "initialize", {"protocolVersion": "2025-06-18"})
    try:
        yield child, turn_id
    finally:
        if child.process.returncode is None:
            child.process.kill()
            await child.process.wait()


@pytest.mark.e2e
async def test_tools_run_on_the_workspace_executor(live):
    child, _ = live
    listed = await child.call_tool(1, "list_environments", {})
    assert listed["isError"] is False
    assert [env["name"] for env in listed["structuredContent"]["environments"]] == ["box"]
    marker = f"marker-{secrets.token_hex(4)}"
    ran = await child.call_tool(2, "shell", {"environment_id": "box", "command": ["sh", "-c", f"echo {marker}"]})
    assert ran["isError"] is False
    assert ran["structuredContent"]["stdout"] == f"{marker}\n"
    assert ran["structuredContent"]["exit_code"] == 0
    assert await child.close_stdin() == 0


@pytest.mark.e2e
async def test_a_slow_call_does_not_hold_up_the_others(live):
    child, _ = live
    slow = {"environment_id": "box", "command": ["sh", "-c", "sleep 3; echo slept"]}
    await child.send(
        {"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {"name": "shell", "arguments": slow}}
    )
    await child.send({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {"name": "list_environments"}})
    listed = await child.response(11)
    assert 10 not in child.pending  # answered while the shell call still runs
    assert listed["result"]["isError"] is False
    slept = await child.response(10)
    assert slept["result"]["structuredContent"]["stdout"] == "slept\n"
    assert child.order == [0, 11, 10]


@pytest.mark.e2e
async def test_stdin_eof_cancels_calls_in_flight_and_exits_0(live):
    child, _ = live
    await child.call_tool(1, "list_environments", {})  # the bridge is up
    endless = {"environment_id": "box", "command": ["sleep", "60"]}
    await child.send(
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "shell", "arguments": endless}}
    )
    await asyncio.sleep(1)
    started = time.monotonic()
    assert await child.close_stdin(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert 2 not in child.pending  # cancelled, never answered


@pytest.mark.e2e
async def test_a_revoked_turn_loses_the_workspace(live):
    child, turn_id = live
    assert (await child.call_tool(1, "list_environments", {}))["isError"] is False
    await asyncio.to_thread(revoke_turn, turn_id, int(time.time()) + 600)
    refused = await child.call_tool(2, "list_environments", {})
    assert refused["isError"] is True
    assert "turn revoked" in refused["content"][0]["text"]


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
