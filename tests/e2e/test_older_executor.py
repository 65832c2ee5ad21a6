"""An executor still on an older Codex CLI than the pinned one: the real ``codex exec-server`` of
the ``codex-older`` npm alias (package.json devDependencies) registers with a gateway of two
processes, connects, and serves a bridge client on the other process."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from bridge.client import BridgeClient
from bridge.client_pool import Pool
from executors import captoken
from executors.models import Executor
from tests.bridge_dial import websocket_connector
from tests.e2e.conftest import BoundExecutor
from tests.e2e.harness import GatewayCluster, http_json, internal_secret_headers

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-older"
PACKAGE_JSON = json.loads((settings.BASE_DIR / "package.json").read_text())
PINNED_VERSION = PACKAGE_JSON["dependencies"]["@openai/codex"]
OLDER_PACKAGE = settings.BASE_DIR / "node_modules" / "codex-older"


@dataclass(frozen=True)
class Codex:
    binary: Path
    version: str


@pytest.fixture(scope="module")
def older_codex() -> Codex:
    """The older codex as npm installed the alias: its platform package (the binary) sits in the
    alias's own node_modules, since the top-level one is the pinned codex's."""
    manifest = OLDER_PACKAGE / "package.json"
    if not manifest.exists():
        pytest.fail("the codex-older npm alias is not installed: run scripts/test (it runs npm ci)")
    found = sorted(OLDER_PACKAGE.glob("node_modules/@openai/codex-linux-*/vendor/*/bin/codex"))
    if not found:
        pytest.fail(f"no platform binary under {OLDER_PACKAGE}/node_modules: run scripts/test (it runs npm ci)")
    return Codex(found[0], json.loads(manifest.read_text())["version"])


@pytest.fixture(scope="module")
def codex_bin(older_codex: Codex) -> Path:
    """The binary the e2e fixtures (``exec_servers``, ``bound_executors``) start, in this module only."""
    return older_codex.binary


def test_the_older_codex_is_older_than_the_pinned_one(older_codex: Codex):
    version = subprocess.run(
        [str(older_codex.binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    assert version == ["codex-cli", older_codex.version]
    assert PACKAGE_JSON["devDependencies"]["codex-older"] == f"npm:@openai/codex@{older_codex.version}"

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in v.split("."))

    assert key(older_codex.version) < key(PINNED_VERSION)

    # Both packages declare the bin "codex": node_modules/.bin/codex (the README's) is the pinned one.
    pinned = subprocess.run(
        [str(settings.BASE_DIR / "node_modules" / ".bin" / "codex"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert pinned == ["codex-cli", PINNED_VERSION]


@pytest.fixture
def older_executor(bound_executors: Callable[..., BoundExecutor]) -> BoundExecutor:
    """The older exec-server, bound to WORKSPACE and connected to gateway process 0."""
    return bound_executors(WORKSPACE, "old-box", 0, "an executor on the older codex", True)


@pytest.fixture
async def pool(older_executor: BoundExecutor, gateway_cluster: GatewayCluster):
    """Bridge clients to process 1: the executor's session crosses processes through Redis."""

    async def token() -> str:
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_older", workspace_id=WORKSPACE, ttl=600)

    pool = Pool(websocket_connector(gateway_cluster[1].ws_base_url), token, client_name="older-executor-test")
    try:
        yield pool
    finally:
        await pool.close()


async def run(client: BridgeClient, process_id: str, script: str) -> tuple[dict[str, bytes], int]:
    """``/bin/sh -c script`` on the executor: (output by stream, exit code) once it closed."""
    output = {"stdout": b"", "stderr": b""}
    exit_codes: list[int] = []
    closed = asyncio.Event()

    def on_event(method: str, params: dict[str, Any]) -> None:
        if method == "process/output":
            output[params["stream"]] += base64.b64decode(params["chunk"])
        elif method == "process/exited":
            exit_codes.append(params["exitCode"])
        elif method == "process/closed":
            closed.set()

    with client.subscribe(on_event, process_id=process_id):
        params = {
            "processId": process_id,
            "argv": ["/bin/sh", "-c", script],
            "cwd": "file:///tmp",
            "env": {"PATH": "/usr/bin:/bin"},
            "tty": False,
        }
        assert (await client.call("process/start", params))["processId"] == process_id
        async with asyncio.timeout(20):
            await closed.wait()
    return output, exit_codes[0]


async def test_an_older_executor_registers_connects_and_serves_a_bridge_client(
    older_executor: BoundExecutor, older_codex: Codex, gateway_cluster: GatewayCluster, pool: Pool, tmp_path: Path
):
    # Registered (SigV4) and connected: the registry has it, online on every process.
    row = await database_sync_to_async(Executor.objects.get)(exe_id=older_executor.exe_id)
    assert row.last_seen_at is not None
    assert row.connected_at is not None
    assert row.client_ip == "127.0.0.1"
    status, listed = await asyncio.to_thread(
        http_json,
        "GET",
        f"{gateway_cluster[1].base_url}/api/codex-exec/workspaces/{WORKSPACE}/executors",
        headers=internal_secret_headers(),
    )
    assert status == 200, gateway_cluster.log()
    assert isinstance(listed, list)
    assert [(entry["exe_id"], entry["name"], entry["is_online"]) for entry in listed] == [
        (older_executor.exe_id, "old-box", True)
    ]

    # A bridge client on the other process talks to the older exec-server.
    client = await pool.get(older_executor.exe_id)
    assert client.environment_info["executorVersion"] == older_codex.version
    assert client.session_id

    output, exit_code = await run(client, "p1", "echo out; echo err >&2; exit 3")
    assert (output, exit_code) == ({"stdout": b"out\n", "stderr": b"err\n"}, 3), older_executor.server.log()

    target = tmp_path / "older.bin"
    payload = bytes(range(256)) * 64
    await client.call("fs/writeFile", {"path": target.as_uri(), "dataBase64": base64.b64encode(payload).decode()})
    assert target.read_bytes() == payload
    read = await client.call("fs/readFile", {"path": target.as_uri()})
    assert base64.b64decode(read["dataBase64"]) == payload
    assert older_executor.server.alive()
