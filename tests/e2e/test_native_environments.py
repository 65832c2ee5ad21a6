"""Executors as native Codex environments (issue #14): the gateway registers the workspace's bound
executors with its real ``codex app-server`` (``environment/add`` to this gateway's ``/bridge``),
the app-server has no local environment (``environments.toml``), and codex's own tools run on the
executors: ``exec_command`` without ``environment_id`` on the default one, ``apply_patch``,
``view_image``, and another executor by ``environment_id``. Nothing runs on the gateway host.

Each executor is a real ``codex exec-server`` in a mount namespace (bwrap) where the gateway's
CODEX_HOMEs and a gateway-only directory are empty, with a HOME of its own holding a marker: what
the model sees from there can only have come from the executor. Two gateway processes: the
executors hold process 0, the TUI and ``/api/turns`` use process 1 (which owns the app-server),
so the environments' bridges cross processes. The model is the fake Responses server, named
``gpt-5.5`` so that codex offers it ``apply_patch`` (it does not to an unknown model)."""

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
from tests.appgateway.fake_model import CustomToolCall, FakeModel, FunctionCall, Reply
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
EMPTY_WORKSPACE = "ws-native-none"  # no executor bound
EMPTY_TOKEN = "ast_native_none_e2e"
IMAGE = "only-on-box.png"
MARKER = ".codexgw-marker"
NO_ENVIRONMENT = "No usable execution environment is available."


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
    marker: str


@pytest.fixture
def gateway_only(tmp_path: Path) -> Path:
    """A directory of the gateway host that no executor can see, holding a PNG."""
    path = tmp_path / "gateway-only"
    path.mkdir()
    (path / "secret.png").write_bytes(png(7, 7))
    return path


@pytest.fixture
def jailed_exec_servers(codex_bin: Path, tmp_path: Path, gateway_only: Path) -> Iterator[ExecServers]:
    """Real exec-servers that see this machine except the gateway's CODEX_HOMEs and
    ``gateway_only`` (each mounted over with an empty tmpfs)."""
    jail = tmp_path / "executor-jail"
    homes = tmp_path / "homes"
    homes.mkdir(exist_ok=True)
    jail.write_text(
        "#!/bin/sh\n"
        f"exec bwrap --die-with-parent --dev-bind / / --tmpfs '{homes}' --tmpfs '{gateway_only}' '{codex_bin}' \"$@\"\n"
    )
    jail.chmod(0o755)
    servers = ExecServers(jail, tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


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
    ``image`` as IMAGE, with a HOME of its own that holds a marker file."""
    cwd = base_dir / f"{name}-{secrets.token_hex(4)}"
    cwd.mkdir()
    (cwd / IMAGE).write_bytes(image)
    home = base_dir / f"{name}-home-{secrets.token_hex(4)}"
    home.mkdir()
    marker = f"{name}-{secrets.token_hex(6)}"
    (home / MARKER).write_text(marker + "\n")
    credentials = make_executor_credentials(display_name=name)
    services.bind_executor(WORKSPACE, credentials.exe_id, name, "", is_default)
    server = exec_servers.remote(gateway, credentials, cwd=cwd, extra_env={"HOME": str(home)})
    assert wait_for(lambda: presence_store().get(credentials.exe_id) is not None, 20), server.log()
    return Box(credentials, server, cwd, image, marker)


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    with FakeModel(default_text="unexpected extra request", model="gpt-5.5") as model:
        yield model


@pytest.fixture
def agentserver() -> Iterator[FakeAgentserver]:
    with FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        fake.add_token(TOKEN, user_id="user-native", workspace_id=WORKSPACE)
        fake.add_token(EMPTY_TOKEN, user_id="user-native", workspace_id=EMPTY_WORKSPACE)
        yield fake


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    codex_bin: Path,
    fake_model: FakeModel,
    agentserver: FakeAgentserver,
    start_gateway_cluster: Callable[..., GatewayCluster],
) -> GatewayCluster:
    """Two gateway processes serving the app role; more environment with
    ``@pytest.mark.gateway_cluster(env={...})``, as for the ``gateway_cluster`` fixture."""
    env = app_gateway_env(tmp_path, codex_bin, fake_model.model, fake_model.base_url, agentserver.base_url)
    # codex sandboxes a command on the executor with the executor's own codex-linux-sandbox
    # helper, which codex does not set up for a CODEX_HOME under /tmp, as the executors' here; and
    # apply_patch must write. The sandbox is not under test.
    env["CXG_SANDBOX_MODE"] = "danger-full-access"
    marker = request.node.get_closest_marker("gateway_cluster")
    env.update(marker.kwargs.get("env", {}) if marker else {})
    return start_gateway_cluster(2, env)


@pytest.fixture
def box(
    cluster: GatewayCluster,
    tmp_path: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    jailed_exec_servers: ExecServers,
) -> Box:
    """The workspace's default executor."""
    return start_box(
        "box", True, png(3, 2), cluster[0].base_url, tmp_path, make_executor_credentials, jailed_exec_servers
    )


@pytest.fixture
def other(
    cluster: GatewayCluster,
    tmp_path: Path,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    jailed_exec_servers: ExecServers,
) -> Box:
    """A second executor of the workspace, not the default, with another image under the same name."""
    return start_box(
        "other", False, png(5, 4), cluster[0].base_url, tmp_path, make_executor_credentials, jailed_exec_servers
    )


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


def capability_tokens(blob: bytes) -> list[captoken.CapPayload]:
    """Every valid capability token found in ``blob``, decoded."""
    found = []
    for candidate in TOKEN_SHAPE.findall(blob):
        try:
            found.append(captoken.verify(candidate.decode(), settings.CXG_CAPTOKEN_HMAC_SECRET))
        except (captoken.CapTokenError, ValueError):
            continue
    return found


def token_sightings(codex_home: Path) -> dict[str, list[tuple[str, ...] | None]]:
    """Where capability tokens are in the app-server's argv, its environment and the files of
    its CODEX_HOME: the ``exe_ids`` of each token found, by place."""
    pid = app_server_pid(codex_home)
    places = {"argv": Path(f"/proc/{pid}/cmdline"), "environment": Path(f"/proc/{pid}/environ")}
    places.update({str(path): path for path in codex_home.rglob("*") if path.is_file()})
    found = {name: [token.exe_ids for token in capability_tokens(path.read_bytes())] for name, path in places.items()}
    return {name: tokens for name, tokens in found.items() if tokens}


def tool_output(model: FakeModel, index: int) -> Any:
    """What codex returned to the model for the tool call answered by request ``index``."""
    last = model.responses_requests()[index].body["input"][-1]
    assert last["type"] in ("function_call_output", "custom_tool_call_output"), last
    return last["output"]


def image_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


async def tui(cluster: GatewayCluster, token: str = TOKEN) -> RpcClient:
    client = await RpcClient.connect(cluster[1].ws_base_url + "/", {"Authorization": f"Bearer {token}"})
    await client.call_result(
        "initialize",
        {"clientInfo": {"name": "codex-tui", "version": "0.171.0"}, "capabilities": {"experimentalApi": True}},
        timeout=60,
    )
    await client.notify("initialized")
    return client


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


async def test_codexs_own_tools_run_on_the_executors_and_never_on_the_gateway(
    cluster: GatewayCluster, box: Box, other: Box, fake_model: FakeModel, tmp_path: Path, gateway_only: Path
):
    client = await tui(cluster)
    try:
        # The TUI starts its thread with environments: null; the gateway fills in the default
        # executor first, in its own working directory, then the others.
        started = await client.call_result("thread/start", {"environments": None}, timeout=60)
        thread = started["thread"]
        assert [(env["environmentId"], env["cwd"]) for env in thread["environments"]] == [
            ("box", str(box.cwd)),
            ("other", str(other.cwd)),
        ], f"{thread}\n{cluster.log()}"

        # codex's own exec_command, without environment_id: on the default executor, whose HOME
        # holds the marker.
        fake_model.script(FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}; pwd"}), Reply("ran"))
        turn = await run_turn(client, thread["id"], "where am I?")
        assert turn["status"] == "completed", cluster.log()
        output = tool_output(fake_model, 1)
        assert "Process exited with code 0" in output, output
        assert f"{box.marker}\n{box.cwd}\n" in output, output
        assert "exec_command" in [tool.get("name") for tool in fake_model.responses_requests()[0].body["tools"]]

        # codex's own apply_patch (a freeform tool for this model) creates the file on the executor,
        # relative to the environment's cwd.
        patch = "*** Begin Patch\n*** Add File: patched.txt\n+written by apply_patch\n*** End Patch\n"
        fake_model.script(CustomToolCall("apply_patch", patch), Reply("patched"))
        turn = await run_turn(client, thread["id"], "patch it")
        assert turn["status"] == "completed"
        assert "Success" in tool_output(fake_model, 3), tool_output(fake_model, 3)
        assert (box.cwd / "patched.txt").read_text() == "written by apply_patch\n"

        # environment_id reaches the other executor, in its own directory.
        fake_model.script(
            FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}", "environment_id": "other"}),
            FunctionCall("view_image", {"path": IMAGE, "environment_id": "other"}, call_id="call_2"),
            Reply("seen"),
        )
        turn = await run_turn(client, thread["id"], "and on the other one?")
        assert turn["status"] == "completed"
        assert other.marker in tool_output(fake_model, 5)
        assert tool_output(fake_model, 6)[0]["image_url"] == image_url(other.image)

        # Nothing reaches the gateway host: not codex's local environment by name, nor a file that
        # only the gateway host has (view_image reads on the executor, which has no such file).
        fake_model.script(
            FunctionCall("exec_command", {"cmd": "hostname", "environment_id": "local"}),
            FunctionCall("view_image", {"path": str(gateway_only / "secret.png")}, call_id="call_2"),
            Reply("no"),
        )
        turn = await run_turn(client, thread["id"], "and from the gateway?")
        assert turn["status"] == "completed"
        assert "unknown turn environment id `local`" in str(tool_output(fake_model, 8))
        refused_image = str(tool_output(fake_model, 9))
        assert "unable to locate image" in refused_image, refused_image
        assert "image_url" not in refused_image

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

        # The environments' tokens were only ever in the environment/add frames: not in the
        # app-server's argv or environment, nor in any file of its CODEX_HOME (its databases and
        # logs included). The one token there is env-mcp's workspace-wide one, in the app-server's
        # environment (bearer_token_env_var), and in no file.
        home = tmp_path / "homes" / WORKSPACE
        assert token_sightings(home) == {"environment": [None]}
        assert (home / "environments.toml").read_text() == "include_local = false\n"

        # With the executor gone the default environment fails with the bridge's answer: it never
        # ran locally (codex would run a turn/start with a cwd and no environments in its local
        # environment; there is none, and the gateway drops that cwd).
        box.server.stop()
        assert wait_for(lambda: presence_store().get(box.credentials.exe_id) is None, 20)
        fake_model.script(FunctionCall("exec_command", {"cmd": "echo still here"}), Reply("offline"))
        turn = await run_turn(client, thread["id"], "once more")
        assert turn["status"] == "completed"
        assert "executor is not connected" in str(tool_output(fake_model, 11)), cluster.log()
    finally:
        await client.close()


async def test_a_thread_without_an_executor_has_nowhere_to_run(cluster: GatewayCluster, fake_model: FakeModel):
    """A workspace with no executor: codex's own answer, and the turn completes."""
    client = await tui(cluster, EMPTY_TOKEN)
    try:
        started = await client.call_result("thread/start", {"environments": None}, timeout=60)
        assert started["thread"]["environments"] == []
        fake_model.script(
            FunctionCall("exec_command", {"cmd": "cat /etc/hostname"}),
            FunctionCall("view_image", {"path": "/etc/hostname"}, call_id="call_2"),
            Reply("nothing"),
        )
        turn = await run_turn(client, started["thread"]["id"], "anything?")
        assert turn["status"] == "completed", cluster.log()
        assert NO_ENVIRONMENT in str(tool_output(fake_model, 1))
        assert NO_ENVIRONMENT in str(tool_output(fake_model, 2))
    finally:
        await client.close()


def test_a_turns_api_thread_runs_exec_command_on_the_default_executor(
    cluster: GatewayCluster, box: Box, fake_model: FakeModel
):
    fake_model.script(FunctionCall("exec_command", {"cmd": f"cat ~/{MARKER}"}), Reply("ran it"))
    status, body = http_json(
        "POST",
        f"{cluster[1].base_url}/api/turns",
        {"workspaceId": WORKSPACE, "params": {"input": [{"type": "text", "text": "look"}]}, "timeoutMs": 120000},
        headers={"X-Internal-Secret": settings.CXG_AGENTSERVER_INTERNAL_SECRET},
        timeout=180,
    )
    assert status == 200, f"{body}\n{cluster.log()}"
    turn = body.get("turn", {})
    assert turn.get("status") == "completed", f"{body}\n{cluster.log()}"
    assert box.marker in tool_output(fake_model, 1)
    (command,) = [item for item in turn["items"] if item["type"] == "commandExecution"]
    assert box.marker in command["aggregatedOutput"], command
    # The model was told it works in the executor's directory.
    assert f"<cwd>{box.cwd}</cwd>" in str(fake_model.responses_requests()[0].body["input"])
