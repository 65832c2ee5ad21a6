"""Executors as native Codex environments (issue #14): the gateway registers the workspace's bound
executors with its real ``codex app-server`` (``environment/add`` to this gateway's ``/bridge``),
and a thread started without environments, as the TUI starts it, gets the default executor first,
in its own working directory, then the others. codex's own ``view_image`` tool then reads through
the executors (the default one, or another by ``environment_id``); codex's local environment (the
gateway host) can be named by no client. The model's shell and patch tools stay switched off
(docs/app-gateway.md, "Native environments"), so ``view_image`` is the native tool exercised.

Two gateway processes: the executor holds process 0, the TUI and ``/api/turns`` use process 1
(which owns the app-server), so the environment's bridge crosses processes."""

from __future__ import annotations

import base64
import re
import secrets
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from executors import captoken, services
from executors.presence import presence_store
from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.conftest import ExecServers
from tests.e2e.harness import (
    ExecServer,
    ExecutorCredentials,
    GatewayCluster,
    RpcClient,
    app_gateway_env,
    http_json,
    wait_for,
)
from tests.fake_agentserver import FakeAgentserver

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-native-env"
TOKEN = "ast_native_env_e2e"
IMAGE = "only-on-box.png"


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG; its size makes it recognisable."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x10\x20\x30" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@dataclass
class Box:
    credentials: ExecutorCredentials
    server: ExecServer
    cwd: Path
    image: bytes


def start_box(
    name: str,
    is_default: bool,
    image: bytes,
    gateway: str,
    base_dir: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: ExecServers,
) -> Box:
    """An executor bound to the workspace as ``name``, run in a directory of its own that holds
    ``image`` as IMAGE."""
    cwd = base_dir / f"{name}-{secrets.token_hex(4)}"
    cwd.mkdir()
    (cwd / IMAGE).write_bytes(image)
    credentials = make_executor_credentials(display_name=name)
    services.bind_executor(WORKSPACE, credentials.exe_id, name, "", is_default)
    server = exec_servers.remote(gateway, credentials, cwd=cwd)
    assert wait_for(lambda: presence_store().get(credentials.exe_id) is not None, 20), server.log()
    return Box(credentials, server, cwd, image)


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    with FakeModel(default_text="unexpected extra request") as model:
        yield model


@pytest.fixture
def agentserver() -> Iterator[FakeAgentserver]:
    with FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        fake.add_token(TOKEN, user_id="user-native", workspace_id=WORKSPACE)
        yield fake


@pytest.fixture
def cluster(
    tmp_path: Path,
    codex_bin: Path,
    fake_model: FakeModel,
    agentserver: FakeAgentserver,
    start_gateway_cluster: Callable[..., GatewayCluster],
) -> GatewayCluster:
    env = app_gateway_env(tmp_path, codex_bin, fake_model.model, fake_model.base_url, agentserver.base_url)
    return start_gateway_cluster(2, env)


@pytest.fixture
def box(
    cluster: GatewayCluster,
    tmp_path: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: ExecServers,
) -> Box:
    """The workspace's default executor."""
    return start_box("box", True, png(3, 2), cluster[0].base_url, tmp_path, make_executor_credentials, exec_servers)


@pytest.fixture
def other(
    cluster: GatewayCluster,
    tmp_path: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: ExecServers,
) -> Box:
    """A second executor of the workspace, not the default, with another image under the same name."""
    return start_box("other", False, png(5, 4), cluster[0].base_url, tmp_path, make_executor_credentials, exec_servers)


TOKEN_SHAPE = re.compile(rb"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def app_server_pid(codex_home: Path) -> int:
    """The pid of the codex app-server that runs with ``codex_home``."""
    marker = b"CODEX_HOME=" + str(codex_home).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"app-server" in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no app-server runs with CODEX_HOME={codex_home}")


def app_server_blobs(codex_home: Path) -> list[bytes]:
    """The app-server's argv and environment, and every file of its CODEX_HOME."""
    pid = app_server_pid(codex_home)
    blobs = [Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/environ").read_bytes()]
    return blobs + [path.read_bytes() for path in codex_home.rglob("*") if path.is_file()]


def capability_tokens(blobs: list[bytes]) -> list[captoken.CapPayload]:
    """Every valid capability token found in ``blobs``, decoded."""
    found = []
    for blob in blobs:
        for candidate in TOKEN_SHAPE.findall(blob):
            try:
                found.append(captoken.verify(candidate.decode(), settings.CXG_CAPTOKEN_HMAC_SECRET))
            except (captoken.CapTokenError, ValueError):
                continue
    return found


def tool_output(model: FakeModel, index: int) -> Any:
    """What codex returned to the model for the tool call answered by request ``index``."""
    last = model.responses_requests()[index].body["input"][-1]
    assert last["type"] == "function_call_output", last
    return last["output"]


def image_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


async def run_turn(
    client: RpcClient, thread_id: str, text: str, tui_cwd: str = "/somewhere/on/a/laptop"
) -> dict[str, Any]:
    """A turn as the TUI starts it: with its own machine's directory as ``cwd``."""
    params = {
        "threadId": thread_id,
        "input": [{"type": "text", "text": text}],
        "cwd": tui_cwd,
        "runtimeWorkspaceRoots": [tui_cwd],
    }
    await client.call_result("turn/start", params, 30)
    while True:
        done = await client.next_notification("turn/completed", timeout=120)
        if done["params"]["threadId"] == thread_id:
            turn: dict[str, Any] = done["params"]["turn"]
            return turn


async def test_a_tui_thread_gets_the_default_executor_and_codexs_own_tool_runs_there(
    cluster: GatewayCluster, box: Box, other: Box, fake_model: FakeModel, tmp_path: Path
):
    client = await RpcClient.connect(cluster[1].ws_base_url + "/", {"Authorization": f"Bearer {TOKEN}"})
    try:
        await client.call_result(
            "initialize",
            {"clientInfo": {"name": "codex-tui", "version": "0.171.0"}, "capabilities": {"experimentalApi": True}},
            timeout=60,
        )
        await client.notify("initialized")
        # The TUI starts its thread with environments: null; the gateway fills in the default
        # executor, in the executor's own working directory.
        started = await client.call_result("thread/start", {"environments": None}, timeout=60)
        thread = started["thread"]
        # The default executor first, then the others.
        assert [(env["environmentId"], env["cwd"]) for env in thread["environments"]] == [
            ("box", str(box.cwd)),
            ("other", str(other.cwd)),
        ], f"{thread}\n{cluster.log()}"

        # codex's own view_image, with a path relative to the environment's cwd, reads the image
        # through the executor.
        fake_model.script(FunctionCall("view_image", {"path": IMAGE}), Reply("seen it"))
        turn = await run_turn(client, thread["id"], "show me the image")
        assert turn["status"] == "completed", cluster.log()
        output = tool_output(fake_model, 1)
        assert isinstance(output, list), output
        assert output[0]["type"] == "input_image"
        assert output[0]["image_url"] == image_url(box.image)

        # The environments' tokens were only ever in the environment/add frames: not in the
        # app-server's argv or environment, nor in any file of its CODEX_HOME (its databases and
        # logs included). The workspace-wide env-mcp token in config.toml is not one of them.
        tokens = capability_tokens(app_server_blobs(tmp_path / "homes" / WORKSPACE))
        assert [token.exe_ids for token in tokens] == [None], tokens  # env-mcp's, in config.toml

        # environment_id reaches the other executor, in its own directory.
        fake_model.script(FunctionCall("view_image", {"path": IMAGE, "environment_id": "other"}), Reply("seen"))
        turn = await run_turn(client, thread["id"], "and on the other one?")
        assert turn["status"] == "completed"
        assert tool_output(fake_model, 3)[0]["image_url"] == image_url(other.image)

        # The model's environment_id may only name the thread's environments: not codex's local one.
        fake_model.script(FunctionCall("view_image", {"path": IMAGE, "environment_id": "local"}), Reply("no"))
        turn = await run_turn(client, thread["id"], "and from the gateway?")
        assert turn["status"] == "completed"
        assert "unknown turn environment id `local`" in str(tool_output(fake_model, 5))

        # No client may select codex's local environment (the gateway host) itself.
        refused = await client.call(
            "turn/start",
            {
                "threadId": thread["id"],
                "input": [{"type": "text", "text": "x"}],
                "environments": [{"environmentId": "local", "cwd": "/"}],
            },
        )
        assert refused["error"]["code"] == -32601
        assert "'local'" in refused["error"]["message"]

        # With the executor gone the same tool fails with the bridge's answer: it never read locally
        # (codex would run a turn/start with a cwd and no environments in its local environment
        # again; the gateway drops that cwd).
        box.server.stop()
        assert wait_for(lambda: presence_store().get(box.credentials.exe_id) is None, 20)
        fake_model.script(FunctionCall("view_image", {"path": str(box.cwd / IMAGE)}), Reply("offline"))
        turn = await run_turn(client, thread["id"], "once more")
        assert turn["status"] == "completed"
        assert "executor is not connected" in str(tool_output(fake_model, 7)), cluster.log()
    finally:
        await client.close()


def test_a_turns_api_thread_gets_the_default_executor(cluster: GatewayCluster, box: Box, fake_model: FakeModel):
    fake_model.script(FunctionCall("view_image", {"path": IMAGE}), Reply("seen it"))
    status, body = http_json(
        "POST",
        f"{cluster[1].base_url}/api/turns",
        {"workspaceId": WORKSPACE, "params": {"input": [{"type": "text", "text": "look"}]}, "timeoutMs": 120000},
        headers={"X-Internal-Secret": settings.CXG_AGENTSERVER_INTERNAL_SECRET},
        timeout=180,
    )
    assert status == 200, f"{body}\n{cluster.log()}"
    assert body.get("turn", {}).get("status") == "completed", f"{body}\n{cluster.log()}"
    output = tool_output(fake_model, 1)
    assert isinstance(output, list), f"{output}\n{cluster.log()}"
    assert output[0]["image_url"] == image_url(box.image)
    # The model was told it works in the executor's directory.
    assert f"<cwd>{box.cwd}</cwd>" in str(fake_model.responses_requests()[0].body["input"])
