"""Bad input at the edges of the native environments (issue #14), with the real codex app-server
and exec-servers of ``test_native_environments``:

* **Frames over 16 MiB.** codex and exec-server drop the connection on a WebSocket frame over
  16 MiB (codex-wire A.9, C.9); the gateway's server closes such a frame with 1009 from its header.
  Two tools produce one: ``view_image`` (the executor answers ``fs/readFile`` with the whole file,
  base64, in one frame) and ``apply_patch`` (codex sends the whole new file in one ``fs/writeFile``).
  ``exec_command`` never does: its output comes in ``process/output`` chunks of about 11 KB.
* **A binding name codex refuses as an environment id** (``local`` is reserved in codex). The
  reference allows any non-empty binding name, so the gateway does too; the app-server leaves
  that one binding out.

Gateway logs are JSON here, so the close codes and registration details can be read."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from executors import captoken, services
from tests.appgateway.fake_model import CustomToolCall, FakeModel, FunctionCall, Reply
from tests.e2e.conftest import ExecServers
from tests.e2e.harness import ExecutorCredentials, GatewayCluster, MiB, RpcClient
from tests.e2e.test_bridge import assert_seqs_strictly_increase, run_to_close, start_params
from tests.e2e.test_metrics import json_lines
from tests.e2e.test_native_environments import (
    MARKER,
    WORKSPACE,
    Box,
    agentserver,
    box,
    cluster,
    fake_model,
    gateway_only,
    jailed_exec_servers,
    other,
    run_turn,
    tool_output,
    tui,
)

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_cluster(env={"CODEXGW_LOG_FORMAT": "json"})]
__all__ = ["agentserver", "box", "cluster", "fake_model", "gateway_only", "jailed_exec_servers", "other"]

# Base64 makes this 16 MiB and 1,366 bytes: one frame just over the limit, either way.
OVER_THE_LIMIT = 12 * MiB + 1024
NEIGHBOUR = "ws-native-neighbour"  # another workspace on the same executor


def records(cluster: GatewayCluster, message: str) -> list[dict[str, Any]]:
    """The JSON log records of both gateway processes with this message."""
    return [line for gateway in cluster for line in json_lines(gateway) if line["msg"] == message]


def executor_closes(cluster: GatewayCluster, box: Box) -> list[int]:
    """The close code of every connection of ``box``'s executor that ended so far."""
    exe_id = box.credentials.exe_id
    return [line["code"] for line in records(cluster, "executor disconnected") if line["exe_id"] == exe_id]


async def neighbour_bridge(cluster: GatewayCluster, box: Box) -> RpcClient:
    """A client of another workspace bound to the same executor, on the other gateway process."""
    await database_sync_to_async(services.bind_executor)(NEIGHBOUR, box.credentials.exe_id, "shared", "", True)
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_neighbour", workspace_id=NEIGHBOUR, ttl=600)
    url = f"{cluster[1].ws_base_url}/bridge/{box.credentials.exe_id}"
    client = await RpcClient.connect(url, {"Authorization": f"Bearer {token}"})
    await client.initialize("neighbour")
    return client


async def test_a_frame_over_16_mib_fails_its_tool_call_and_nothing_else(
    cluster: GatewayCluster, box: Box, fake_model: FakeModel
):
    client = await tui(cluster)
    neighbour = await neighbour_bridge(cluster, box)
    try:
        thread_id = (await client.call_result("thread/start", {"environments": None}, timeout=60))["thread"]["id"]
        assert executor_closes(cluster, box) == []

        # The executor's answer to view_image's fs/readFile is one frame over the limit: the gateway
        # closes that executor connection with 1009, and the read gets the bridge's answer. The
        # executor reconnects and resumes its session: the neighbour's process, running meanwhile,
        # loses nothing.
        argv = ["/bin/sh", "-c", "echo before; sleep 4; echo after"]
        await neighbour.call_result("process/start", start_params("through", argv))
        (box.cwd / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(OVER_THE_LIMIT))
        fake_model.script(FunctionCall("view_image", {"path": "huge.png"}), Reply("too big to see"))
        turn = await run_turn(client, thread_id, "look at it")
        assert turn["status"] == "completed", cluster.log()
        refused = str(tool_output(fake_model, 1))
        assert "unable to read image" in refused, refused
        assert "executor connection lost before the response" in refused, refused
        assert executor_closes(cluster, box) == [1009]
        assert "process/closed" not in [frame.get("method") for frame in neighbour.frames]  # still running
        output, events = await run_to_close(neighbour, "through", 30)
        assert output == b"before\nafter\n"
        assert_seqs_strictly_increase(events)

        # codex's fs/writeFile of the patched file is one frame over the limit: the gateway closes
        # codex's own bridge connection (1009) and codex reports the write failed. The frame never
        # reached the executor (exec-server would have dropped the connection every client shares).
        lines = OVER_THE_LIMIT // 1024
        patch = "*** Begin Patch\n*** Add File: huge.txt\n" + ("+" + "a" * 1023 + "\n") * lines + "*** End Patch\n"
        fake_model.script(CustomToolCall("apply_patch", patch), Reply("not written"))
        turn = await run_turn(client, thread_id, "write it")
        assert turn["status"] == "completed", cluster.log()
        assert "Failed to write file" in str(tool_output(fake_model, 3)), tool_output(fake_model, 3)
        assert not (box.cwd / "huge.txt").exists()
        assert executor_closes(cluster, box) == [1009]

        # The app-server and the environment work on; every gateway process is up.
        fake_model.script(FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}"}), Reply("still here"))
        turn = await run_turn(client, thread_id, "and now?")
        assert turn["status"] == "completed"
        assert box.marker in tool_output(fake_model, 5)
        assert len(cluster.alive()) == 2
    finally:
        await neighbour.close()
        await client.close()


@pytest.fixture
def bound_as_local(
    cluster: GatewayCluster,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    jailed_exec_servers: ExecServers,
) -> ExecutorCredentials:
    """An executor bound to the workspace as ``local``, before the others (requested first)."""
    credentials = make_executor_credentials(display_name="local")
    services.bind_executor(WORKSPACE, credentials.exe_id, "local", "", False)
    return credentials


async def test_a_binding_named_local_is_left_out_and_the_others_are_selected(
    cluster: GatewayCluster, bound_as_local: ExecutorCredentials, box: Box, other: Box, fake_model: FakeModel
):
    client = await tui(cluster)
    try:
        # The TUI's thread/start: the app-server started, and the thread has the two bindings codex took.
        thread = (await client.call_result("thread/start", {"environments": None}, timeout=60))["thread"]
        assert [(env["environmentId"], env["cwd"]) for env in thread["environments"]] == [
            ("box", str(box.cwd)),
            ("other", str(other.cwd)),
        ], f"{thread}\n{cluster.log()}"
        (refusal,) = records(cluster, "executor not added as an environment")
        assert refusal["environment"] == "local"
        assert "environment id `local` is reserved for EnvironmentManager" in refusal["error"], refusal
        assert [line["environments"] for line in records(cluster, "executors added as environments")] == [
            ["box", "other"]
        ]

        # The model reaches the bindings codex took, never one named local.
        fake_model.script(
            FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}", "environment_id": "other"}),
            FunctionCall("exec_command", {"cmd": "hostname", "environment_id": "local"}, call_id="call_2"),
            Reply("done"),
        )
        turn = await run_turn(client, thread["id"], "everywhere")
        assert turn["status"] == "completed"
        assert other.marker in tool_output(fake_model, 1)
        assert "unknown turn environment id `local`" in str(tool_output(fake_model, 2))
    finally:
        await client.close()
