"""The TUI proxy (``/`` and ``/codex-app/ws``) on real gateway processes, in front of the real
``codex app-server`` (its model is the fake Responses server, its token verifier the fake
agentserver, both real HTTP servers on 127.0.0.1); with two processes the TUI's connection is
relayed over Redis to the process that owns the workspace. The real TUI (``codex --remote``)
connects under tmux."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from websockets.exceptions import InvalidStatus

from codexgw import redis as gwredis
from tests.appgateway.fake_model import FakeModel, FunctionCall, Reply
from tests.e2e.harness import GatewayProcess, RpcClient, app_gateway_env, strip_ansi, wait_for
from tests.fake_agentserver import VERIFY, FakeAgentserver, FakeResponse

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-tui"
TOKEN = "ast_tui_e2e"


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    with FakeModel(default_text="Hello through the gateway") as model:
        yield model


@pytest.fixture
def agentserver() -> Iterator[FakeAgentserver]:
    with FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        fake.add_token(TOKEN, user_id="user-tui", workspace_id=WORKSPACE)
        yield fake


@pytest.fixture
def app_env(tmp_path: Path, codex_bin: Path, fake_model: FakeModel, agentserver: FakeAgentserver) -> dict[str, str]:
    """Environment of gateway processes serving the app role against the fakes."""
    return app_gateway_env(tmp_path, codex_bin, fake_model.model, fake_model.base_url, agentserver.base_url)


@pytest.fixture
def app_gateway(transactional_db: None, app_env: dict[str, str]) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess.start(env=app_env)
    try:
        yield gateway
    finally:
        gateway.terminate()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def tui(gateway: GatewayProcess, path: str = "/", token: str = TOKEN) -> RpcClient:
    """An app-server client through the gateway, initialized like the TUI (codex-wire §C.8)."""
    client = await RpcClient.connect(gateway.ws_base_url + path, auth(token), open_timeout=30)
    await client.call_result(
        "initialize",
        {
            "clientInfo": {"name": "codex-tui", "title": None, "version": "0.169.0"},
            "capabilities": {"experimentalApi": True},
        },
        timeout=60,
    )
    await client.notify("initialized")
    return client


async def start_thread(client: RpcClient, cwd: str) -> str:
    started = await client.call_result("thread/start", {"cwd": cwd}, timeout=30)
    return str(started["thread"]["id"])


async def run_turn(client: RpcClient, thread_id: str, text: str = "say hi", **params: Any) -> dict[str, Any]:
    await client.call_result(
        "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text}], **params}, timeout=30
    )
    while True:
        notification = await client.next_notification("turn/completed", timeout=60)
        if notification["params"]["threadId"] == thread_id:
            params_: dict[str, Any] = notification["params"]
            return params_


def agent_texts(client: RpcClient, thread_id: str) -> list[str]:
    return [
        frame["params"]["item"]["text"]
        for frame in client.frames
        if isinstance(frame, dict)
        and frame.get("method") == "item/completed"
        and frame["params"]["threadId"] == thread_id
        and frame["params"]["item"]["type"] == "agentMessage"
    ]


def lease() -> dict[str, Any] | None:
    client = gwredis.sync_client()
    assert client is not None
    raw = client.get(gwredis.key("appserver", WORKSPACE))
    return json.loads(str(raw)) if raw else None


def owner_pid() -> int | None:
    """The gateway process (not the child) that owns the workspace's lease."""
    current = lease()
    return int(current["process_id"].split(":")[1]) if current else None


# --- one gateway process ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/codex-app/ws"])
async def test_a_turn_through_the_proxy(app_gateway, fake_model, tmp_path, path):
    client = await tui(app_gateway, path)
    try:
        thread_id = await start_thread(client, str(tmp_path / "work"))
        completed = await run_turn(client, thread_id)
    finally:
        await client.close()
    assert completed["turn"]["status"] == "completed"
    assert agent_texts(client, thread_id) == ["Hello through the gateway"]
    # The gateway spawned the workspace's app-server and owns its lease; codex used the model.
    assert owner_pid() == app_gateway.pid
    assert fake_model.responses_requests()[0].user_texts()[-1] == "say hi"


async def test_local_io_requests_are_refused_and_the_session_goes_on(app_gateway, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("gateway-local secret")
    client = await tui(app_gateway)
    try:
        read = await client.call("fs/readFile", {"path": str(secret)})
        run = await client.call("command/exec", {"command": ["cat", str(secret)]})
        shell = await client.call("thread/shellCommand", {"threadId": "t", "command": "id"})
        # Without an id it is dropped silently (a reply would be a response to nothing).
        await client.notify("fs/remove", {"path": str(secret), "recursive": False})
        # Unknown and experimental methods pass through: the app-server answers them itself.
        unknown = await client.call("no/suchMethod", {})
        thread_id = await start_thread(client, str(tmp_path / "work"))
    finally:
        await client.close()
    for response, method in ((read, "fs/readFile"), (run, "command/exec"), (shell, "thread/shellCommand")):
        assert "result" not in response
        assert response["error"]["code"] == -32601
        assert method in response["error"]["message"]
        assert "executor" in response["error"]["message"]
    assert "gateway-local secret" not in json.dumps(client.frames)
    assert base64.b64encode(b"gateway-local secret").decode() not in json.dumps(client.frames)
    assert secret.exists()
    assert unknown["error"]["code"] == -32600  # the app-server's own "unknown variant" error
    assert "no/suchMethod" in unknown["error"]["message"]
    assert thread_id


async def test_approval_requests_are_answered_by_the_gateway(app_gateway, fake_model, tmp_path):
    # request_user_input is one of the approval-type server requests; codex offers it in plan
    # mode even with the gateway's local shell off.
    questions = [{"id": "q1", "header": "Pick", "question": "Which?", "options": [{"label": "a", "description": "A"}]}]
    fake_model.script(FunctionCall("request_user_input", {"questions": questions}), Reply("answered"))
    client = await tui(app_gateway)
    try:
        thread_id = await start_thread(client, str(tmp_path / "work"))
        plan = {
            "mode": "plan",
            "settings": {"model": fake_model.model, "reasoning_effort": None, "developer_instructions": None},
        }
        completed = await run_turn(client, thread_id, "ask me", collaborationMode=plan)
    finally:
        await client.close()
    assert completed["turn"]["status"] == "completed"
    assert agent_texts(client, thread_id) == ["answered"]
    methods = [frame.get("method") for frame in client.frames if isinstance(frame, dict)]
    assert "item/tool/requestUserInput" not in methods  # answered before it reached the TUI
    tool_output = fake_model.responses_requests()[1].body["input"][-1]
    assert tool_output["type"] == "function_call_output"
    assert json.loads(tool_output["output"]) == {"answers": {}}


async def test_refused_upgrades_get_http_statuses(app_gateway, agentserver):
    async def status(headers: dict[str, str]) -> tuple[int, Any]:
        with pytest.raises(InvalidStatus) as refused:
            await RpcClient.connect(app_gateway.ws_base_url + "/", headers, open_timeout=15)
        return refused.value.response.status_code, json.loads(refused.value.response.body)

    assert await status({}) == (401, {"error": "missing Bearer"})
    assert await status({"Authorization": "Basic Zm9vOmJhcg=="}) == (401, {"error": "missing Bearer"})
    assert await status(auth("ast_not_a_real_token")) == (401, {"error": "unauthorized"})
    # agentserver answering 500: an outage, not a bad token.
    agentserver.add_token("ast_outage", user_id="u", workspace_id=WORKSPACE)
    agentserver.respond("POST", VERIFY, FakeResponse(500, {"error": "db down"}))
    assert await status(auth("ast_outage")) == (503, {"error": "token verification unavailable, retry later"})
    # agentserver gone entirely.
    agentserver.add_token("ast_gone", user_id="u", workspace_id=WORKSPACE)
    agentserver.stop()
    assert await status(auth("ast_gone")) == (503, {"error": "token verification unavailable, retry later"})
    # Nothing was spawned for refused connections.
    assert lease() is None


async def test_several_tuis_share_the_workspace_app_server(app_gateway, tmp_path):
    first = await tui(app_gateway)
    second = await tui(app_gateway, "/codex-app/ws")
    try:
        thread_id = await start_thread(first, str(tmp_path / "work"))
        await run_turn(first, thread_id)
        # The second connection sees the first one's thread in the same app-server.
        listed = await second.call_result("thread/list", {})
        assert thread_id in [thread["id"] for thread in listed["data"]]
    finally:
        await first.close()
        await second.close()


async def test_a_dead_app_server_closes_the_tui_with_1011(app_gateway):
    client = await tui(app_gateway)
    try:
        current = lease()
        assert current is not None
        os.kill(current["pid"], signal.SIGKILL)
        assert await client.wait_closed(15) == 1011
        assert client.close_reason == "subprocess unavailable"
    finally:
        await client.close()


async def test_the_tui_leg_is_pinged(transactional_db, app_env):
    """The server pings every WebSocket every CXG_WS_PING_INTERVAL (20 s by default)."""
    gateway = GatewayProcess.start(env={**app_env, "CXG_WS_PING_INTERVAL": "1"})
    try:
        opcodes = await asyncio.to_thread(_raw_upgrade_and_read_opcodes, gateway.port, 6.0)
    finally:
        gateway.terminate()
    assert 0x9 in opcodes, opcodes


def _raw_upgrade_and_read_opcodes(port: int, seconds: float) -> list[int]:
    """A bare-socket WebSocket client (no library answering pings for us): the opcodes it reads."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, data = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        opcodes: list[int] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and 0x9 not in opcodes:
            while len(data) < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    return opcodes
                data += chunk
            opcodes.append(data[0] & 0x0F)
            length = data[1] & 0x7F
            header = 2 + {126: 2, 127: 8}.get(length, 0)
            while len(data) < header:
                data += sock.recv(4096)
            if length >= 126:
                length = int.from_bytes(data[2:header], "big")
            while len(data) < header + length:
                data += sock.recv(4096)
            data = data[header + length :]
        return opcodes


# --- two gateway processes --------------------------------------------------------------------


@pytest.fixture
def app_cluster(start_gateway_cluster, app_env):
    return start_gateway_cluster(2, app_env)


async def test_a_turn_through_a_process_that_does_not_own_the_workspace(app_cluster, fake_model, tmp_path):
    owner, other = app_cluster[0], app_cluster[1]
    first = await tui(owner)  # spawns the app-server in the owner
    assert owner_pid() == owner.pid
    relayed = await tui(other)
    try:
        thread_id = await start_thread(relayed, str(tmp_path / "work"))
        # A message larger than one channel-layer chunk (256 KiB) crosses intact.
        big = "x" * (600 * 1024)
        completed = await run_turn(relayed, thread_id, f"say hi {big}")
        # Both TUIs talk to the one app-server.
        listed = await first.call_result("thread/list", {})
    finally:
        await relayed.close()
        await first.close()
    assert completed["turn"]["status"] == "completed"
    assert agent_texts(relayed, thread_id) == ["Hello through the gateway"]
    assert fake_model.responses_requests()[-1].user_texts()[-1] == f"say hi {big}"
    assert thread_id in [thread["id"] for thread in listed["data"]]
    assert owner_pid() == owner.pid  # still served by the owner: the other process spawned nothing
    assert "app-server relayed" in other.log()
    assert "app-server started" not in other.log()


async def test_relayed_connection_is_refused_and_approved_like_a_local_one(app_cluster, fake_model, tmp_path):
    owner, other = app_cluster[0], app_cluster[1]
    await (await tui(owner)).close()  # the owner takes the lease; its app-server outlives the TUI
    questions = [{"id": "q1", "header": "Pick", "question": "Which?", "options": [{"label": "a", "description": "A"}]}]
    fake_model.script(FunctionCall("request_user_input", {"questions": questions}), Reply("answered"))
    client = await tui(other)
    try:
        refused = await client.call("fs/readDirectory", {"path": "/"})
        thread_id = await start_thread(client, str(tmp_path / "work"))
        plan = {
            "mode": "plan",
            "settings": {"model": fake_model.model, "reasoning_effort": None, "developer_instructions": None},
        }
        completed = await run_turn(client, thread_id, "ask me", collaborationMode=plan)
    finally:
        await client.close()
    assert refused["error"]["code"] == -32601
    assert completed["turn"]["status"] == "completed"
    assert "item/tool/requestUserInput" not in [f.get("method") for f in client.frames if isinstance(f, dict)]
    assert owner_pid() == owner.pid


async def test_closes_propagate_across_processes(app_cluster):
    owner, other = app_cluster[0], app_cluster[1]
    first = await tui(owner)
    relayed = await tui(other)
    try:
        current = lease()
        assert current is not None
        os.kill(current["pid"], signal.SIGKILL)  # the app-server dies in the owner
        assert await relayed.wait_closed(15) == 1011
        assert relayed.close_reason == "subprocess unavailable"
        assert await first.wait_closed(15) == 1011
    finally:
        await relayed.close()
        await first.close()


async def test_a_relayed_tui_closing_closes_the_owners_loopback(app_cluster):
    owner, other = app_cluster[0], app_cluster[1]
    first = await tui(owner)
    try:
        child = lease()
        assert child is not None
        port = int(child["ws_url"].rsplit(":", 1)[1].strip("/"))
        before = _loopback_connections(child["pid"], port)
        relayed = await tui(other)
        assert wait_for(lambda: _loopback_connections(child["pid"], port) == before + 1, 10)
        await relayed.close()
        assert wait_for(lambda: _loopback_connections(child["pid"], port) == before, 10), (
            f"loopback left open: {_loopback_connections(child['pid'], port)} vs {before}\n{app_cluster.log()}"
        )
    finally:
        await first.close()


def _loopback_connections(pid: int, port: int) -> int:
    """Established TCP connections accepted by the app-server (pid) on its listening ``port``
    (not its own outgoing ones, e.g. to the model)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed since the listing (the very closes this counts)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and fields[9] in inodes and local_port == port:  # ESTABLISHED, accepted
                count += 1
    return count


# --- the real TUI -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_codex_tui_connects_through_the_gateway(app_gateway, codex_bin, fake_model, tmp_path):
    """``codex --remote ws://127.0.0.1:PORT --remote-auth-token-env VAR`` (codex-wire §C.8) reaches
    the workspace's app-server through ``/`` and runs a turn typed into it."""
    session = f"cxg-tui-{os.getpid()}"
    home = tmp_path / "tui-home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(home),
        "TERM": "xterm-256color",
        "CXG_TUI_TOKEN": TOKEN,
    }
    command = [
        str(codex_bin),
        "--remote",
        f"ws://127.0.0.1:{app_gateway.port}",
        "--remote-auth-token-env",
        "CXG_TUI_TOKEN",
    ]
    env_args = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "160",
            "-y",
            "50",
            "-c",
            str(tmp_path / "work"),
            *env_args,
            *command,
        ],
        check=True,
    )

    def screen() -> str:
        captured = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True)
        return strip_ansi(captured.stdout)

    try:
        assert wait_for(lambda: owner_pid() == app_gateway.pid, 30), f"no app-server for the TUI:\n{screen()}"
        assert wait_for(lambda: "Ask Codex to do anything" in screen(), 30), screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "say hi from the tui"], check=True)
        time.sleep(0.5)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        assert wait_for(lambda: "Hello through the gateway" in screen(), 60), screen()
        assert any("say hi from the tui" in text for r in fake_model.responses_requests() for text in r.user_texts())
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
