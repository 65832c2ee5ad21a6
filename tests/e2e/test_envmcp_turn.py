"""A model turn whose env-mcp tool call reaches the workspace's executors: TUI client → gateway ``/`` → the
workspace's real ``codex app-server`` (spawned by the supervisor with the spawn builder's env-mcp
block) → env-mcp over streamable HTTP (the gateway's ``/mcp/env/<workspace_id>``, with the spawn's
token from codex's environment) → the gateway's ``/bridge`` → a real ``codex exec-server`` bound
to the workspace. The model is the fake Responses server, the token verifier the fake
agentserver."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.conftest import BoundExecutor
from tests.e2e.harness import GatewayCluster, RpcClient, TcpCutProxy, app_gateway_env, async_wait_for, http_json
from tests.e2e.processes import pids_of, process_alive
from tests.fake_agentserver import FakeAgentserver

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-envmcp-turn"
TOKEN = "ast_envmcp_e2e"


@pytest.fixture
def agentserver() -> Iterator[FakeAgentserver]:
    with FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        fake.add_token(TOKEN, user_id="user-envmcp", workspace_id=WORKSPACE)
        yield fake


@pytest.fixture
def cluster(
    tmp_path: Path,
    codex_bin: Path,
    fake_model: FakeModel,
    agentserver: FakeAgentserver,
    start_gateway_cluster: Callable[..., GatewayCluster],
    tcp_proxies: Callable[..., TcpCutProxy],
) -> GatewayCluster:
    env = app_gateway_env(tmp_path, codex_bin, fake_model.model, fake_model.base_url, agentserver.base_url)
    # The byte relay on, for copy_path: its public URL must be known before the processes start,
    # so it is a proxy, pointed at process 0 once that is up (the executors' curl reaches it).
    front = tcp_proxies("127.0.0.1", 1)
    env["CXG_PUBLIC_HTTPS_BASE_URL"] = front.url("http")
    cluster = start_gateway_cluster(2, env)
    front.retarget("127.0.0.1", cluster[0].port)
    return cluster


@pytest.fixture
def box(cluster: GatewayCluster, bound_executors: Callable[..., BoundExecutor]) -> BoundExecutor:
    """The executor, attached to process 0; the TUI uses process 1 (which then owns the
    app-server), so env-mcp's bridge crosses processes."""
    return bound_executors(WORKSPACE, "box", 0, cluster=cluster)


async def mcp_startup(client: RpcClient, thread_id: str) -> dict[str, Any]:
    """The agentserver MCP server's final startup status for the thread (ready or failed)."""
    while True:
        update = await client.next_notification("mcpServer/startupStatus/updated", timeout=60)
        params: dict[str, Any] = update["params"]
        if params["threadId"] == thread_id and params["name"] == "agentserver" and params["status"] != "starting":
            return params


def completed_items(client: RpcClient, thread_id: str, item_type: str) -> list[dict[str, Any]]:
    return [
        frame["params"]["item"]
        for frame in client.frames
        if isinstance(frame, dict)
        and frame.get("method") == "item/completed"
        and frame["params"]["threadId"] == thread_id
        and frame["params"]["item"]["type"] == item_type
    ]


async def test_a_model_tool_call_reaches_the_workspace_executors(
    cluster: GatewayCluster, box: BoundExecutor, fake_model: FakeModel, tmp_path: Path
):
    fake_model.script(FunctionCall("list_environments", {}, namespace="mcp__agentserver"), Reply("box is there"))

    client = await RpcClient.connect(cluster[1].ws_base_url + "/", {"Authorization": f"Bearer {TOKEN}"})
    try:
        await client.call_result(
            "initialize", {"clientInfo": {"name": "codex-tui", "version": "0.169.0"}, "capabilities": {}}, timeout=60
        )
        await client.notify("initialized")
        started = await client.call_result("thread/start", {"cwd": str(tmp_path / "work")}, timeout=60)
        thread_id = started["thread"]["id"]
        # codex starts a thread's MCP servers in the background and does not hold a turn for them.
        status = await mcp_startup(client, thread_id)
        assert status["status"] == "ready", f"{status}\n{cluster.log()}"
        await client.call_result(
            "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "where am I?"}]}, timeout=30
        )
        while True:
            done = await client.next_notification("turn/completed", timeout=120)
            if done["params"]["threadId"] == thread_id:
                break
    finally:
        await client.close()

    assert done["params"]["turn"]["status"] == "completed", cluster.log()
    # codex offered env-mcp's tools to the model under the server's namespace.
    first_request = fake_model.responses_requests()[0].body
    namespaces = {tool.get("name"): tool for tool in first_request["tools"] if tool.get("type") == "namespace"}
    offered = sorted(tool["name"] for tool in namespaces["mcp__agentserver"]["tools"])
    assert offered == ["copy_path", "list_environments"]
    # The MCP tool call listed the online executor.
    (call,) = completed_items(client, thread_id, "mcpToolCall")
    assert call["server"] == "agentserver"
    assert call["tool"] == "list_environments"
    assert call["status"] == "completed", call
    assert [env["name"] for env in call["result"]["structuredContent"]["environments"]] == ["box"]
    # The model saw the output, and the turn ended with its final message.
    output = fake_model.responses_requests()[1].body["input"][-1]
    assert output["type"] == "function_call_output"
    assert "box" in json.dumps(output["output"]), output
    assert [item["text"] for item in completed_items(client, thread_id, "agentMessage")] == ["box is there"]


def test_the_same_turn_through_the_turns_api(cluster: GatewayCluster, box: BoundExecutor, fake_model: FakeModel):
    """POST /api/turns on the process that does not hold the executor: the broker starts the
    thread, waits for env-mcp to be up, and returns the turn with every item it produced."""
    fake_model.script(FunctionCall("list_environments", {}, namespace="mcp__agentserver"), Reply("box is there"))
    status, body = http_json(
        "POST",
        f"{cluster[1].base_url}/api/turns",
        {"workspaceId": WORKSPACE, "params": {"input": [{"type": "text", "text": "where am I?"}]}, "timeoutMs": 120000},
        headers={"X-Internal-Secret": settings.CXG_AGENTSERVER_INTERNAL_SECRET},
        timeout=180,
    )
    assert status == 200, body
    assert "transport" not in body, f"{body}\n{cluster.log()}"
    turn = body["turn"]
    assert turn["status"] == "completed"
    (call,) = [item for item in turn["items"] if item["type"] == "mcpToolCall"]
    assert (call["server"], call["tool"], call["status"]) == ("agentserver", "list_environments", "completed")
    assert [env["name"] for env in call["result"]["structuredContent"]["environments"]] == ["box"]
    assert [item["text"] for item in turn["items"] if item["type"] == "agentMessage"] == ["box is there"]


async def test_interrupting_a_turn_kills_the_env_mcp_call_on_the_executor(
    cluster: GatewayCluster, box: BoundExecutor, fake_model: FakeModel, tmp_path: Path
):
    """codex sends ``notifications/cancelled`` for the env-mcp call of an interrupted turn; the
    gateway cancels the call, which terminates the processes it started on the executor. The call
    is a ``copy_path`` through the relay whose source is a FIFO nobody writes: the source's curl
    waits for it until it is killed (the executor runs on this machine: its files and processes
    are visible here)."""
    source = tmp_path / "never-written.fifo"
    os.mkfifo(source)
    copy = {
        "source_environment_id": "box",
        "source_path": str(source),
        "destination_environment_id": "box",
        "destination_path": str(tmp_path / "copy.bin"),
    }
    fake_model.script(FunctionCall("copy_path", copy, namespace="mcp__agentserver"), Reply("never"))
    client = await RpcClient.connect(cluster[1].ws_base_url + "/", {"Authorization": f"Bearer {TOKEN}"})
    try:
        await client.call_result(
            "initialize", {"clientInfo": {"name": "codex-tui", "version": "0.171.0"}, "capabilities": {}}, timeout=60
        )
        await client.notify("initialized")
        thread_id = (await client.call_result("thread/start", {}, timeout=60))["thread"]["id"]
        assert (await mcp_startup(client, thread_id))["status"] == "ready", cluster.log()
        params = {"threadId": thread_id, "input": [{"type": "text", "text": "copy it"}]}
        turn = (await client.call_result("turn/start", params, 30))["turn"]
        assert await async_wait_for(lambda: pids_of("curl", str(source)), 60), cluster.log()
        (pid,) = pids_of("curl", str(source))
        await client.call_result("turn/interrupt", {"threadId": thread_id, "turnId": turn["id"]}, 30)
        while True:
            done = await client.next_notification("turn/completed", timeout=60)
            if done["params"]["threadId"] == thread_id:
                break
        assert done["params"]["turn"]["status"] == "interrupted"
        assert await async_wait_for(lambda: not process_alive(pid), 10), f"{pid} still runs\n{cluster.log()}"
        assert "env-mcp call cancelled" in cluster[1].log()
    finally:
        await client.close()
