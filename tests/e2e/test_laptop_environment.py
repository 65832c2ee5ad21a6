"""Local codex anywhere: a user's own ``codex app-server``, started outside the gateway and told
about the executor only by the block ``manage.py environmentblock`` prints (appended to its
``$CODEX_HOME/environments.toml``), runs its own ``exec_command`` on that executor through the
gateway's ``/bridge``; revoking the block's token ends the environment's connection.

Real parts: a built-in-mode gateway process, a real ``codex exec-server`` executor, the real
``codex app-server`` (stdio-free, on its own loopback WebSocket), the fake model as the LLM.
A command prints ``$CODEX_HOME``: the executor's answer differs from the laptop's, so the output
shows where it ran.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from executors.models import WorkspaceExecutor
from executors.presence import presence_store
from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.harness import (
    REPO,
    ExecServer,
    ExecutorCredentials,
    GatewayCluster,
    RpcClient,
    exec_server_env,
    gateway_env,
    wait_for,
)
from workspaces import tokens
from workspaces.models import AccessToken, Membership, Role, Workspace

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-laptop"
BINDING = "box"
BUILTIN = {"CODEXGW_IDENTITY_BACKEND": "builtin", "CXG_AGENTSERVER_INTERNAL_URL": ""}
_WS_URL = re.compile(r"ws://127\.0\.0\.1:\d+")


@pytest.fixture
def executor(
    start_gateway_cluster: Callable[..., GatewayCluster],
    make_executor_credentials: Callable[..., ExecutorCredentials],
    codex_bin: Path,
    tmp_path: Path,
) -> Iterator[tuple[GatewayCluster, ExecServer, Path]]:
    """A built-in-mode gateway, the workspace (owned by ``alice``), and a real executor bound to
    it as ``box``, connected. Yields the cluster, the executor and its CODEX_HOME."""
    owner = get_user_model().objects.create_user("alice", password="unused-here")
    workspace = Workspace.objects.create(id=WORKSPACE, name="laptop test")
    Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    credentials = make_executor_credentials()
    WorkspaceExecutor.objects.create(
        workspace_id=WORKSPACE, executor_id=credentials.exe_id, name=BINDING, is_default=True
    )
    cluster = start_gateway_cluster(1, BUILTIN)
    home = tmp_path / "executor-home"
    server = ExecServer.remote(codex_bin, cluster[0].base_url, credentials, home)
    try:
        assert wait_for(lambda: presence_store().get(credentials.exe_id) is not None, 30), server.stderr_lines
        yield cluster, server, home
    finally:
        server.stop()


def environment_block(cluster: GatewayCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "environmentblock", WORKSPACE, BINDING, *args],
        cwd=REPO,
        env=gateway_env(BUILTIN),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def laptop_app_server(codex_bin: Path, codex_home: Path, model: FakeModel) -> ExecServer:
    """The user's own app-server: their model settings in config.toml, the executor only in
    environments.toml (written by the caller)."""
    (codex_home / "config.toml").write_text(
        'model_provider = "fake"\nmodel = "fake-model"\napproval_policy = "never"\n'
        'sandbox_mode = "danger-full-access"\n[features]\napply_patch_freeform = true\n'
        f'[model_providers.fake]\nname = "fake"\nbase_url = "{model.base_url}"\nenv_key = "FAKE_KEY"\n'
        'wire_api = "responses"\n'
    )
    env = {**exec_server_env(codex_home), "FAKE_KEY": "sk-laptop"}
    server = ExecServer.spawn([str(codex_bin), "app-server", "--listen", "ws://127.0.0.1:0"], env)
    assert wait_for(lambda: any(_WS_URL.search(line) for line in server.stderr_lines + server.stdout_lines), 30), (
        server.stderr_lines
    )
    return server


def listen_url(server: ExecServer) -> str:
    for line in server.stderr_lines + server.stdout_lines:
        if match := _WS_URL.search(line):
            return match.group(0)
    raise AssertionError("the app-server printed no URL")


def tool_output(model: FakeModel, index: int) -> Any:
    last = model.responses_requests()[index].body["input"][-1]
    assert last["type"] == "function_call_output", last
    return last["output"]


async def run_turn(client: RpcClient, thread_id: str, text: str) -> None:
    await client.call_result("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text}]})
    await client.next_notification("turn/completed", timeout=60)


@pytest.mark.django_db(transaction=True)
async def test_an_own_codex_uses_the_executor_from_the_printed_block_until_the_token_is_revoked(
    executor: tuple[GatewayCluster, ExecServer, Path], codex_bin: Path, fake_model: FakeModel, tmp_path: Path
) -> None:
    cluster, _, executor_home = executor
    printed = await sync_to_async(environment_block)(cluster, "--ws-base-url", cluster[0].ws_base_url)
    assert printed.returncode == 0, printed.stderr
    block = printed.stdout
    entry = tomllib.loads(block)["environments"][0]
    assert entry["id"] == BINDING
    assert entry["url"].startswith(cluster[0].ws_base_url + "/bridge/exe_")
    prefix = entry["auth_bearer_token"][: len("cxgt_") + 8]
    record = await AccessToken.objects.aget(prefix=prefix)
    assert record.scopes == ["environments"]
    assert record.expires_at is not None  # 90 days unless asked otherwise

    laptop_home = tmp_path / "laptop-codex-home"
    laptop_home.mkdir()
    (laptop_home / "environments.toml").write_text(block)  # as the README says: append it
    app_server = laptop_app_server(codex_bin, laptop_home, fake_model)
    try:
        client = await RpcClient.connect(listen_url(app_server))
        params = {"clientInfo": {"name": "laptop-test", "version": "1"}, "capabilities": {"experimentalApi": True}}
        await client.call_result("initialize", params)
        await client.notify("initialized")
        thread = (await client.call_result("thread/start", {}))["thread"]
        names = [environment["environmentId"] for environment in thread.get("environments") or []]
        # Without a selection codex uses every environment: the laptop's own "local" stays first.
        assert names == ["local", BINDING], thread

        fake_model.script(
            FunctionCall("exec_command", {"cmd": "echo home=$CODEX_HOME", "environment_id": BINDING}), Reply("ok")
        )
        await run_turn(client, thread["id"], "where do you run?")
        output = str(tool_output(fake_model, 1))
        assert f"home={executor_home}" in output, output  # the executor's, not the laptop's
        assert str(laptop_home) not in output

        # Revoked in the admin (here: the same call the admin action makes): the bridge closes.
        revoked = await sync_to_async(tokens.revoke)(AccessToken.objects.filter(prefix=prefix))
        assert revoked == 1

        async def disconnected() -> bool:
            status = await client.call_result("environment/status", {"environmentId": BINDING})
            return bool(status.get("status") != "ready")

        assert await _eventually(disconnected, 15), cluster.log()
        fake_model.script(
            FunctionCall("exec_command", {"cmd": "echo again", "environment_id": BINDING}, call_id="call_2"),
            Reply("refused"),
        )
        await run_turn(client, thread["id"], "once more")
        refused = str(tool_output(fake_model, 3))
        assert "401 Unauthorized" in refused, refused  # codex dials again; the gateway says no
        status = await client.call_result("environment/status", {"environmentId": BINDING})
        assert status["status"] == "disconnected", status
        await client.close()
    finally:
        app_server.stop()


async def _eventually(check: Callable[[], Awaitable[bool]], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.5)
    return False


@pytest.mark.django_db(transaction=True)
def test_the_block_needs_a_loopback_or_tls_url(executor: tuple[GatewayCluster, ExecServer, Path]) -> None:
    cluster, _, _ = executor
    refused = environment_block(cluster, "--ws-base-url", "ws://gateway.example.com")
    assert refused.returncode != 0
    assert "codex refuses a token over plain ws://" in refused.stderr
    assert not AccessToken.objects.exists()  # nothing minted for a block that cannot work
    tls = environment_block(cluster, "--ws-base-url", "wss://gateway.example.com/gw", "--expires", "12h")
    assert tls.returncode == 0, tls.stderr
    assert 'url = "wss://gateway.example.com/gw/bridge/exe_' in tls.stdout
