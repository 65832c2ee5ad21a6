"""Bindings changed while the workspace's app-server runs (issue #14): an executor bound after the
spawn becomes an environment of the running app-server (its owner is told and registers the
bindings again), an executor unbound mid-turn stops being reachable at once (its bridge closes,
the turn still completes, new threads no longer get it), and the environments' tokens are renewed
before they expire, so a thread started after the spawn's token lifetime still reaches them.
Same rig as ``test_native_environments``: two gateway processes (executors on 0, the TUI and the
app-server on 1), real jailed exec-servers, the fake model calling codex's own tools."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from executors import services
from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.conftest import ExecServers
from tests.e2e.harness import ExecutorCredentials, GatewayCluster, RpcClient, app_gateway_env, http_json
from tests.e2e.test_native_environments import (  # noqa: F401 - fixtures used by name
    MARKER,
    WORKSPACE,
    agentserver,
    box,
    fake_model,
    gateway_only,
    jailed_exec_servers,
    png,
    run_turn,
    start_box,
    tui,
)
from tests.fake_agentserver import FakeAgentserver

pytestmark = pytest.mark.e2e

TOKEN_LIFETIME = 15.0  # CXG_CAPTOKEN_TTL of this rig: renewed 3 s before it ends


@pytest.fixture
def cluster(
    tmp_path: Path,
    codex_bin: Path,
    fake_model: FakeModel,  # noqa: F811
    agentserver: FakeAgentserver,  # noqa: F811
    start_gateway_cluster: Callable[..., GatewayCluster],
) -> GatewayCluster:
    env = app_gateway_env(tmp_path, codex_bin, fake_model.model, fake_model.base_url, agentserver.base_url)
    env["CXG_SANDBOX_MODE"] = "danger-full-access"  # as test_native_environments: not under test
    env["CXG_CAPTOKEN_TTL"] = f"{TOKEN_LIFETIME}s"
    return start_gateway_cluster(2, env)


def last_tool_output(model: FakeModel) -> str:
    """What codex returned to the model for the latest tool call."""
    for request in reversed(model.responses_requests()):
        last = request.body["input"][-1]
        if last["type"] == "function_call_output":
            return str(last["output"])
    raise AssertionError("no tool output reached the model")


async def thread_environments(client: RpcClient) -> tuple[str, list[str]]:
    started = await client.call_result("thread/start", {"environments": None}, timeout=60)
    return started["thread"]["id"], [env["environmentId"] for env in started["thread"]["environments"]]


async def thread_with(client: RpcClient, expected: list[str]) -> str:
    """A new thread once the gateway gives new threads ``expected`` (within 20 s); its id."""
    deadline = time.monotonic() + 20
    while True:
        thread_id, names = await thread_environments(client)
        if names == expected:
            return thread_id
        assert time.monotonic() < deadline, f"new threads still get {names}, not {expected}"
        await asyncio.sleep(0.5)


async def test_bindings_changed_while_the_app_server_runs(
    cluster: GatewayCluster,
    box: Any,  # noqa: F811
    fake_model: FakeModel,  # noqa: F811
    tmp_path: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    jailed_exec_servers: ExecServers,  # noqa: F811
):
    client = await tui(cluster)
    spawned = time.monotonic()
    try:
        assert (await thread_environments(client))[1] == ["box"]

        # Bound after the spawn: registered with the running app-server, and reached by name.
        late = await sync_to_async(start_box)(
            "late", False, png(2, 2), cluster[0].base_url, tmp_path, make_executor_credentials, jailed_exec_servers
        )
        thread_id = await thread_with(client, ["box", "late"])
        fake_model.script(
            FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}", "environment_id": "late"}), Reply("ok")
        )
        turn = await run_turn(client, thread_id, "on late")
        assert turn["status"] == "completed", cluster.log()
        assert late.marker in last_tool_output(fake_model), cluster.log()

        # Past the spawn's token lifetime: each renewal added the environments again (a new
        # environment object in codex, which dials afresh), so a new thread reaches the executor
        # with a renewed token; an expired one would be refused (401).
        await asyncio.sleep(max(0.0, spawned + TOKEN_LIFETIME + 2 - time.monotonic()))
        fresh = await thread_with(client, ["box", "late"])
        fake_model.script(FunctionCall("exec_command", {"cmd": "pwd"}), Reply("ok"))
        turn = await run_turn(client, fresh, "still there?")
        assert turn["status"] == "completed", cluster.log()
        output = last_tool_output(fake_model)
        assert str(box.cwd) in output, f"{output}\n{cluster.log()}"

        # Unbound mid-turn: its bridge closes, the command's output stops, the turn completes, and
        # new threads no longer get it.
        fake_model.script(
            FunctionCall(
                "exec_command",
                {"cmd": "echo started; sleep 4; echo finished", "environment_id": "late", "yield_time_ms": 10000},
            ),
            Reply("ok"),
        )
        running = asyncio.create_task(run_turn(client, thread_id, "long one on late"))
        await asyncio.sleep(1.5)
        await sync_to_async(services.unbind_executor)(WORKSPACE, late.credentials.exe_id)
        turn = await asyncio.wait_for(running, 120)
        assert turn["status"] == "completed", cluster.log()
        output = last_tool_output(fake_model)
        assert "finished" not in output, output
        assert await thread_with(client, ["box"])
    finally:
        await client.close()


async def test_a_forked_thread_gets_the_default_executor_on_its_next_turn(
    cluster: GatewayCluster,
    box: Any,  # noqa: F811
    fake_model: FakeModel,  # noqa: F811
):
    """codex forks a thread without its environments (0.171.0: ``environments: []``, whatever
    the request names); the TUI's next turn on it, naming none, gets the workspace's."""
    client = await tui(cluster)
    try:
        thread_id, names = await thread_environments(client)
        assert names == ["box"]
        fake_model.script(Reply("first"))
        assert (await run_turn(client, thread_id, "hello"))["status"] == "completed"
        forked = await client.call_result("thread/fork", {"threadId": thread_id}, timeout=60)
        assert forked["thread"]["environments"] == [], forked
        fake_model.script(FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}"}), Reply("ok"))
        turn = await run_turn(client, forked["thread"]["id"], "on the fork")
        assert turn["status"] == "completed", cluster.log()
        assert box.marker in last_tool_output(fake_model), cluster.log()
        read = await client.call_result("thread/read", {"threadId": forked["thread"]["id"]}, timeout=30)
        assert [env["environmentId"] for env in read["thread"]["environments"]] == ["box"]

        # Another fork, continued through /api/turns: the broker resumes it (codex: still none)
        # and its turn gets the workspace's environments too.
        again = await client.call_result("thread/fork", {"threadId": thread_id}, timeout=60)
        fake_model.script(FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}"}), Reply("ok"))
        status, body = await sync_to_async(http_json)(
            "POST",
            f"{cluster[0].base_url}/api/turns",
            {"workspaceId": WORKSPACE, "threadId": again["thread"]["id"], "params": {"input": []}, "timeoutMs": 60000},
            headers={"X-Internal-Secret": settings.CXG_AGENTSERVER_INTERNAL_SECRET},
            timeout=90,
        )
        assert status == 200, f"{body}\n{cluster.log()}"
        assert body["turn"]["status"] == "completed", f"{body}\n{cluster.log()}"
        assert box.marker in last_tool_output(fake_model), cluster.log()
    finally:
        await client.close()
