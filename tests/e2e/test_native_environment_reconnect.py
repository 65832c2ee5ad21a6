"""A native environment survives its executor's reconnect mid-turn (issue #14): the model's
``exec_command`` (codex's own, on the default executor) prints numbered lines for a few seconds;
while it runs, the executor's WebSocket to the gateway is cut (RST, at a ``TcpCutProxy``; the
exec-server process lives on) and the executor dials again. The gateway resumes the same
exec-server session, the app-server's bridge (on the other gateway process) stays attached to its
virtual session, the turn completes, and the tool output the model gets holds every line exactly
once. Setup as in ``test_native_environments.py``, whose fixtures this module uses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge import exec_session_store
from codexgw import redis as gwredis
from executors.presence import presence_store
from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.conftest import ExecServers
from tests.e2e.faults import numbered_lines
from tests.e2e.harness import ExecutorCredentials, GatewayCluster, TcpCutProxy, async_wait_for
from tests.e2e.test_native_environments import (
    Box,
    agentserver,
    cluster,
    fake_model,
    gateway_only,
    jailed_exec_servers,
    png,
    run_turn,
    start_box,
    tool_output,
    tui,
)

pytestmark = pytest.mark.e2e
__all__ = ["agentserver", "cluster", "fake_model", "gateway_only", "jailed_exec_servers"]  # fixtures, used by name

LINES = 80
PAUSE = 0.05  # 80 lines over ~4 s
GATE = "reconnected"  # a file in the executor's directory: the second half waits for it
# Numbered lines; after the 40th the command waits (at most 20 s) for the test to create GATE once
# the executor is back, so the cut is always mid-command and the command outlives the reconnect.
COMMAND = (
    f"i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; sleep {PAUSE}; if [ $i -eq {LINES // 2} ]; "
    f"then n=0; while [ ! -e {GATE} ] && [ $n -lt 400 ]; do n=$((n+1)); sleep 0.05; done; fi; done"
)
YIELD_MS = 30_000  # codex's ceiling: the whole run comes back in one tool result


@pytest.fixture
def proxied_box(
    cluster: GatewayCluster,
    tmp_path: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    jailed_exec_servers: ExecServers,
    tcp_proxies: Callable[..., TcpCutProxy],
) -> tuple[Box, TcpCutProxy]:
    """The workspace's default executor, dialling gateway process 0 through a cuttable proxy (the
    app-server, and so the environment's bridge, is on process 1)."""
    proxy = tcp_proxies(cluster[0].base_url)
    box = start_box("box", True, png(3, 2), proxy.url("http"), tmp_path, make_executor_credentials, jailed_exec_servers)
    return box, proxy


def virtual_sessions(exe_id: str) -> list[str]:
    """The executor's virtual-session ids in the gateways' shared table."""
    redis = gwredis.sync_client()
    assert redis is not None
    names = [str(name) for name in redis.hkeys(gwredis.key("vsessions", exe_id))]
    return sorted(name for name in names if name.startswith("vs:"))


def command_lines(output: str) -> list[int]:
    """The numbers of the command's lines in codex's tool output (after its ``Output:`` header)."""
    _, found, text = output.partition("Output:\n")
    assert found, output
    return numbered_lines(text.strip().encode(), "line")


async def test_the_executor_reconnects_mid_command_and_the_turn_gets_every_line(
    cluster: GatewayCluster, proxied_box: tuple[Box, TcpCutProxy], fake_model: FakeModel
):
    box, proxy = proxied_box
    exe_id = box.credentials.exe_id
    client = await tui(cluster)
    thread = (await client.call_result("thread/start", {"environments": None}, timeout=60))["thread"]
    fake_model.script(FunctionCall("exec_command", {"cmd": COMMAND, "yield_time_ms": YIELD_MS}), Reply("counted"))
    turn_task = asyncio.create_task(run_turn(client, thread["id"], "count"))
    try:
        # Cut once the command prints (codex streams its output to the TUI), then let it go on.
        delta = await client.next_notification("item/commandExecution/outputDelta", timeout=60)
        session_before = await exec_session_store.load(exe_id)
        vsessions_before = virtual_sessions(exe_id)
        dialled = proxy.connections_total
        cut_at = time.monotonic()
        assert proxy.cut() >= 1, cluster.log()  # the WebSocket (and the registration's kept-alive HTTP connection)
        assert await async_wait_for(lambda: proxy.connections_total > dialled, 20), box.server.log()
        back_after = time.monotonic() - cut_at
        (box.cwd / GATE).touch()

        turn: dict[str, Any] = await asyncio.wait_for(turn_task, 120)
        assert turn["status"] == "completed", f"{turn}\n{cluster.log()}"
        output = str(tool_output(fake_model, 1))
        assert "Process exited with code 0" in output, output
        numbers = command_lines(output)
        assert numbers == list(range(1, LINES + 1)), f"{output}\n{cluster.log()}"

        # The same exec-server session, resumed by the gateway; the bridge kept its virtual session.
        session_after = await exec_session_store.load(exe_id)
        assert session_before is not None
        assert session_after is not None
        assert session_after.session_id == session_before.session_id
        assert len(vsessions_before) == 1
        assert virtual_sessions(exe_id) == vsessions_before
        assert box.server.alive()
        assert presence_store().get(exe_id) is not None
        status = await client.call_result("environment/status", {"environmentId": "box"})
        assert status["status"] == "ready", status
        assert "output_lost" not in cluster.log()  # nothing fell out of retention, so nothing may be lost
        print(f"executor back {back_after:.2f}s after the cut, made at {delta['params']['delta'].strip()!r}")
    finally:
        turn_task.cancel()
        await client.close()
