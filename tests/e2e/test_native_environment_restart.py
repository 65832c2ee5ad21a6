"""A native environment survives a restart of its executor's exec-server process: the new process
dials with the same credentials and a fresh ``initialize`` (a new exec-server session, nothing to
resume), so the virtual session the app-server's bridge holds (on the other gateway process) is
gone. The gateway tells that bridge at once (close 4002, after answering what it queued during
the handshake); the model's next ``exec_command`` on the same thread runs on the restarted
executor or fails fast, never waits out codex's 45 s recovery. Setup as in
``test_native_environments.py``, whose fixtures this module uses."""

from __future__ import annotations

import time
from typing import Any

import pytest

from executors.presence import presence_store
from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.conftest import ExecServers
from tests.e2e.harness import GatewayCluster, async_wait_for
from tests.e2e.test_native_environments import (
    Box,
    agentserver,
    box,
    cluster,
    fake_model,
    gateway_only,
    jailed_exec_servers,
    run_turn,
    tool_output,
    tui,
)

pytestmark = pytest.mark.e2e
__all__ = ["agentserver", "box", "cluster", "fake_model", "gateway_only", "jailed_exec_servers"]  # fixtures


async def test_exec_command_runs_on_the_restarted_exec_server(
    cluster: GatewayCluster, box: Box, fake_model: FakeModel, jailed_exec_servers: ExecServers
):
    exe_id = box.credentials.exe_id
    client = await tui(cluster)
    try:
        thread = (await client.call_result("thread/start", {"environments": None}, timeout=60))["thread"]
        fake_model.script(FunctionCall("exec_command", {"cmd": "echo before-restart"}), Reply("ok"))
        turn: dict[str, Any] = await run_turn(client, thread["id"], "before")
        assert turn["status"] == "completed", cluster.log()
        assert "before-restart" in str(tool_output(fake_model, 1)), cluster.log()

        box.server.stop()
        assert await async_wait_for(lambda: presence_store().get(exe_id) is None, 20), cluster.log()
        box.server = jailed_exec_servers.remote(cluster[0].base_url, box.credentials, cwd=box.cwd)
        assert await async_wait_for(lambda: presence_store().get(exe_id) is not None, 20), box.server.log()

        # The first command after the restart either runs, or (when codex sent it on the old bridge
        # as the gateway closed it) fails at once with codex's own "unknown session id"; never
        # after codex's 45 s recovery timeout.
        fake_model.script(FunctionCall("exec_command", {"cmd": "echo after-restart"}), Reply("ok"))
        started = time.monotonic()
        turn = await run_turn(client, thread["id"], "after")
        took = time.monotonic() - started
        first = str(tool_output(fake_model, 3))
        assert turn["status"] == "completed", cluster.log()
        assert "after-restart" in first or "unknown session id" in first, f"{first}\n{cluster.log()}"
        assert took < 20, f"{took:.1f}s\n{cluster.log()}"
        # The next one runs on the restarted exec-server (codex dialled a fresh session).
        fake_model.script(FunctionCall("exec_command", {"cmd": "echo again-after-restart"}), Reply("ok"))
        turn = await run_turn(client, thread["id"], "again")
        assert turn["status"] == "completed", cluster.log()
        assert "again-after-restart" in str(tool_output(fake_model, 5)), cluster.log()
        print(f"first turn after the restart took {took:.2f}s: {first[:160]}")
    finally:
        await client.close()
