"""The tool set against real executors through a two-process gateway.

Executor ``alpha`` holds its WebSocket on gateway process 0, ``beta`` on process 1; the tools'
pool dials process 1, so alpha's traffic crosses processes and beta's stays local. Both
executors run on this machine, so the tests check their effects on the local filesystem.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from bridge.client_pool import Pool
from bridge.relay_client import RelayClient
from executors import captoken, services
from sdk.resolver import NameResolver, bindings_fetcher
from sdk.tools import base, get_tool
from sdk.tools.base import ToolContext, ToolResult, uri_path
from sdk.tools.sessions import InMemoryProcessSessions
from tests.bridge_dial import websocket_connector
from tests.e2e.conftest import BoundExecutor
from tests.e2e.harness import GatewayCluster

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-tools"
MiB = 1024 * 1024


@pytest.fixture
def alpha(bound_executors: Callable[..., BoundExecutor]) -> BoundExecutor:
    return bound_executors(WORKSPACE, "alpha", 0, "the first box", True)


@pytest.fixture
def beta(bound_executors: Callable[..., BoundExecutor]) -> BoundExecutor:
    return bound_executors(WORKSPACE, "beta", 1)


def make_context(cluster: GatewayCluster, workspace: str = WORKSPACE) -> ToolContext:
    async def token() -> str:
        secret = settings.CXG_CAPTOKEN_HMAC_SECRET
        return captoken.mint(secret, turn_id=f"sdk-pool:{workspace}", workspace_id=workspace, ttl=600)

    pool = Pool(websocket_connector(cluster[1].ws_base_url), token, client_name="test-tools")
    return ToolContext(workspace, pool, NameResolver(bindings_fetcher(workspace)), InMemoryProcessSessions())


@pytest.fixture
async def ctx(alpha: BoundExecutor, beta: BoundExecutor, gateway_cluster: GatewayCluster):
    context = make_context(gateway_cluster)
    try:
        yield context
    finally:
        await context.pool.close()


async def call(ctx: ToolContext, name: str, **arguments: Any) -> ToolResult:
    tool = get_tool(name)
    assert tool is not None, name
    return await tool(ctx, arguments)


def ok(result: ToolResult) -> ToolResult:
    assert not result.is_error, result.text
    return result


def sc(result: ToolResult) -> dict[str, Any]:
    """structuredContent, which the result must have."""
    assert result.structured is not None, result
    return result.structured


def content(result: ToolResult) -> bytes:
    """read_file's bytes, text or base64 as it says."""
    return base64.b64decode(result.text) if sc(result)["encoding"] == "base64" else result.text.encode()


def error(result: ToolResult) -> str:
    assert result.is_error, result
    return result.text


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- list_environments ------------------------------------------------------------------------


async def test_list_environments_shows_online_environments_by_name(ctx, make_executor_credentials):
    offline = await database_sync_to_async(make_executor_credentials)()
    await database_sync_to_async(services.bind_executor)(WORKSPACE, offline.exe_id, "gamma", "", False)
    result = ok(await call(ctx, "list_environments"))
    environments = sorted(json.loads(result.text), key=lambda env: env["name"])
    assert [env["name"] for env in environments] == ["alpha", "beta"]
    assert environments[0]["description"] == "the first box"
    assert environments[0]["is_default"] is True
    assert "exe_" not in result.text  # the model never sees executor ids
    assert result.structured == {"environments": json.loads(result.text)}


# --- shell ----------------------------------------------------------------------------------------


async def test_shell_returns_output_and_exit_code(ctx, tmp_path):
    result = ok(
        await call(ctx, "shell", environment_id="alpha", command=["sh", "-c", "echo out; echo err >&2; exit 3"])
    )
    assert result.text == "out\n\n--- stderr ---\nerr\n\n[exit_code=3]"
    assert result.structured == {"stdout": "out\n", "stderr": "err\n", "exit_code": 3}

    client = await ctx.pool.get(await ctx.resolver.resolve("beta"))
    home = uri_path(client.environment_info["userHomeDir"])
    result = ok(await call(ctx, "shell", environment_id="beta", command=["pwd"]))
    assert sc(result)["stdout"] == f"{home}\n"  # the default cwd, and PATH finds pwd

    script = 'echo "$GREETING"; pwd; echo "$HOME"; echo "$PATH"'
    result = ok(
        await call(
            ctx,
            "shell",
            environment_id="alpha",
            command=["sh", "-c", script],
            cwd=str(tmp_path),
            env={"GREETING": "hi"},
        )
    )
    greeting, cwd, home_var, path = sc(result)["stdout"].splitlines()
    assert (greeting, cwd, home_var) == ("hi", str(tmp_path), home)
    assert "/usr/bin" in path.split(":")


async def test_shell_failures_are_error_results(ctx):
    started = await call(ctx, "shell", environment_id="alpha", command=["/nonexistent/binary"])
    assert "failed to start" in error(started)
    assert started.structured is not None
    assert sc(started)["exit_code"] is None

    assert error(await call(ctx, "shell", environment_id="alpha", command="ls")).startswith(
        "invalid arguments: command: Input should be a valid list"
    )
    assert error(await call(ctx, "shell", environment_id="alpha", command=["ls"], timeout_ms=0)) == (
        "invalid arguments: timeout_ms: Input should be greater than or equal to 1"
    )
    assert error(await call(ctx, "shell", environment_id="nope", command=["ls"])) == (
        "no environment named 'nope' (run list_environments to see what's available)"
    )
    assert "list_environments" in error(await call(ctx, "shell", command=["ls"]))
    assert error(await call(ctx, "shell", environment_id="alpha", command=["ls"], cwd="relative/dir")).startswith(
        "invalid arguments: cwd: must be an absolute path"
    )


async def test_shell_timeout_terminates_the_process(ctx, tmp_path):
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; echo started; exec sleep 30"
    began = time.monotonic()
    result = await call(ctx, "shell", environment_id="alpha", command=["sh", "-c", script], timeout_ms=1500)
    assert time.monotonic() - began < 10
    assert error(result).startswith("started\n\n[exec failure: timed out after 1500 ms (process terminated)]")
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    deadline = time.monotonic() + 10
    while not gone():
        assert time.monotonic() < deadline, "the timed-out process is still running"
        await asyncio.sleep(0.1)


async def test_shell_keeps_the_head_and_tail_of_long_output(ctx):
    script = "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo the-end"
    result = ok(await call(ctx, "shell", environment_id="beta", command=["sh", "-c", script], max_output_bytes=100_000))
    stdout = sc(result)["stdout"]
    assert stdout.startswith("a" * 50_000 + "\n[... 2900009 bytes omitted ...]\n")
    assert stdout.endswith("the-end\n")
    assert len(stdout) < 101_000


async def test_shell_output_survives_an_executor_reconnect(ctx, alpha):
    script = "for i in $(seq 1 300); do echo tick-$i; sleep 0.01; done"
    running = asyncio.ensure_future(call(ctx, "shell", environment_id="alpha", command=["sh", "-c", script]))
    await asyncio.sleep(1.0)
    assert alpha.proxy.cut() >= 1
    result = ok(await asyncio.wait_for(running, 60))
    assert sc(result)["stdout"].splitlines() == [f"tick-{i}" for i in range(1, 301)]
    assert sc(result)["exit_code"] == 0
    assert alpha.proxy.connections_total >= 2


# --- process sessions --------------------------------------------------------------------------------


async def start_session(ctx: ToolContext, environment: str, script: str) -> str:
    result = ok(await call(ctx, "exec_command", environment_id=environment, command=["sh", "-c", script]))
    return str(sc(result)["session_id"])


async def read_until_closed(ctx: ToolContext, session_id: str) -> tuple[bytes, dict[str, Any]]:
    """read_output until the session says no more output will come; all bytes read and the last
    structured result."""
    data = b""
    deadline = time.monotonic() + 20
    while True:
        result = sc(ok(await call(ctx, "read_output", session_id=session_id, yield_time_ms=2000)))
        data += b"".join(base64.b64decode(chunk["data_b64"]) for chunk in result["chunks"])
        if not result["session_alive"]:
            return data, result
        assert time.monotonic() < deadline, "the session's output did not end"


async def test_exec_command_session_stdin_output_and_terminate(ctx):
    started = ok(await call(ctx, "exec_command", environment_id="alpha", command=["cat"]))
    session_id = json.loads(started.text)["session_id"]
    assert started.structured == {"session_id": session_id}

    assert ok(await call(ctx, "write_stdin", session_id=session_id, chars="hello\n")).text == "ok"
    first = ok(await call(ctx, "read_output", session_id=session_id, yield_time_ms=5000))
    assert first.text == "hello\n\n[running]"
    assert first.structured is not None
    assert sc(first)["chunks"] == [{"stream": "stdout", "data_b64": base64.b64encode(b"hello\n").decode(), "seq": 1}]
    assert (sc(first)["session_alive"], sc(first)["exit_code"]) == (True, None)

    nothing_new = ok(await call(ctx, "read_output", session_id=session_id, yield_time_ms=200))
    assert nothing_new.text == "[running]"
    again = ok(await call(ctx, "read_output", session_id=session_id, since=0, yield_time_ms=0))
    assert again.text.startswith("hello\n")

    binary = base64.b64encode(b"\x00\x01bin\n").decode()
    ok(await call(ctx, "write_stdin", session_id=session_id, data_b64=binary, environment_id="alpha"))
    echoed = ok(await call(ctx, "read_output", session_id=session_id, yield_time_ms=5000))
    assert echoed.structured is not None
    assert base64.b64decode(sc(echoed)["chunks"][0]["data_b64"]) == b"\x00\x01bin\n"

    assert "does not belong to environment 'beta'" in error(
        await call(ctx, "write_stdin", session_id=session_id, chars="x", environment_id="beta")
    )
    assert error(await call(ctx, "write_stdin", session_id=session_id)) == (
        "invalid arguments: give exactly one of chars and data_b64"
    )
    other_workspace = ToolContext("ws-other", ctx.pool, ctx.resolver, ctx.sessions)
    assert error(await call(other_workspace, "read_output", session_id=session_id)) == f"no such session: {session_id}"

    terminated = ok(await call(ctx, "terminate", session_id=session_id))
    assert (terminated.text, terminated.structured) == ("terminated", {"running": True})
    assert error(await call(ctx, "read_output", session_id=session_id)) == f"no such session: {session_id}"


async def test_exec_command_session_exit_status(ctx):
    script = "read x; echo got-$x; echo oops >&2; exit 4"
    session_id = await start_session(ctx, "beta", script)
    ok(await call(ctx, "write_stdin", session_id=session_id, chars="yes\n"))
    data, final = await read_until_closed(ctx, session_id)
    assert sorted(data.splitlines()) == [b"got-yes", b"oops"]  # two pipes: no order between them
    assert (final["exit_code"], final["session_alive"]) == (4, False)
    text = ok(await call(ctx, "read_output", session_id=session_id, since=0, yield_time_ms=0)).text
    assert text.endswith("[exit_code=4]")
    assert error(await call(ctx, "write_stdin", session_id=session_id, chars="more\n")) == (
        "the process has exited (exit code 4); stdin is closed"
    )


async def test_exec_command_session_buffer_is_bounded(ctx):
    script = "head -c 3000000 /dev/zero"
    session_id = await start_session(ctx, "alpha", script)
    session = await ctx.sessions.get(session_id)
    assert session is not None
    deadline = time.monotonic() + 20
    while not session.closed:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    result = ok(await call(ctx, "read_output", session_id=session_id, since=0))
    kept = sum(len(base64.b64decode(chunk["data_b64"])) for chunk in sc(result)["chunks"])
    assert sc(result)["lost_bytes"] > 0
    assert sc(result)["truncated"] is True
    assert kept <= 1024 * 1024
    assert kept + sc(result)["lost_bytes"] == 3_000_000
    assert result.text.endswith(f"[{sc(result)['lost_bytes']} bytes of earlier output were dropped]\n[exit_code=0]")


async def test_exec_command_session_reattaches_after_its_bridge_closes(ctx):
    script = "sleep 0.5; echo while-away; read x; echo got-$x"
    session_id = await start_session(ctx, "alpha", script)
    exe_id = await ctx.resolver.resolve("alpha")
    await (await ctx.pool.get(exe_id)).close()
    await asyncio.sleep(1.5)  # the output happens while no bridge listens
    away = ok(await call(ctx, "read_output", session_id=session_id, yield_time_ms=3000))
    assert away.text.startswith("while-away\n"), away.text

    ok(await call(ctx, "write_stdin", session_id=session_id, chars="back\n"))
    data, final = await read_until_closed(ctx, session_id)
    assert data == b"got-back\n"
    assert final["exit_code"] == 0


# --- files -----------------------------------------------------------------------------------------------


async def test_write_and_read_files(ctx, tmp_path):
    target = tmp_path / "new dir" / "sub" / "ä.txt"
    missing_parent = await call(ctx, "write_file", environment_id="alpha", path=str(target), content="héllo\n")
    assert "set create_parents" in error(missing_parent)
    written = ok(
        await call(ctx, "write_file", environment_id="alpha", path=str(target), content="héllo\n", create_parents=True)
    )
    assert written.text == f"wrote 7 bytes to {target}"
    assert target.read_bytes() == "héllo\n".encode()

    read = ok(await call(ctx, "read_file", environment_id="alpha", path=target.as_uri()))
    assert read.text == "héllo\n"
    assert read.structured == {
        "path": str(target),
        "size": 7,
        "offset": 0,
        "length": 7,
        "truncated": False,
        "encoding": "utf-8",
    }

    payload = os.urandom(2 * MiB + 500)
    blob = tmp_path / "blob.bin"
    ok(
        await call(
            ctx,
            "write_file",
            environment_id="beta",
            path=str(blob),
            content_base64=base64.b64encode(payload).decode(),
        )
    )
    assert blob.read_bytes() == payload
    whole = ok(await call(ctx, "read_file", environment_id="beta", path=str(blob)))
    assert sc(whole)["encoding"] == "base64"
    assert base64.b64decode(whole.text) == payload
    start = MiB - 10
    part = ok(await call(ctx, "read_file", environment_id="alpha", path=str(blob), offset=start, limit=MiB + 20))
    assert content(part) == payload[start : start + MiB + 20]
    assert sc(part)["truncated"] is True
    tail = ok(await call(ctx, "read_file", environment_id="alpha", path=str(blob), offset=len(payload) - 3, limit=100))
    assert content(tail) == payload[-3:]
    assert sc(tail)["truncated"] is False


async def test_file_tool_failures(ctx, tmp_path):
    assert (
        error(await call(ctx, "read_file", environment_id="alpha", path=str(tmp_path))) == f"{tmp_path} is a directory"
    )
    missing = tmp_path / "missing.txt"
    assert error(await call(ctx, "read_file", environment_id="alpha", path=str(missing))) == (
        f"{missing}: no such file or directory"
    )
    assert error(await call(ctx, "read_file", environment_id="alpha", path="relative.txt")).startswith(
        "invalid arguments: path: must be an absolute path"
    )
    both = await call(ctx, "write_file", environment_id="alpha", path=str(missing), content="a", content_base64="YQ==")
    assert error(both) == "invalid arguments: give exactly one of content and content_base64"
    assert error(
        await call(ctx, "write_file", environment_id="alpha", path=str(missing), content_base64="not base64!")
    ) == ("invalid arguments: content_base64: is not valid base64")
    too_big = await call(ctx, "write_file", environment_id="alpha", path=str(missing), content="x" * (8 * MiB + 1))
    assert "use copy_path" in error(too_big)
    assert not missing.exists()


# --- copy_path ---------------------------------------------------------------------------------------------


def temp_archives() -> set[Path]:
    """Directory copies' archives in the executors' temp dir."""
    return set(Path("/tmp").glob("codexgw-copy-*.tar"))


def leftovers(directory: Path) -> list[str]:
    return [path.name for path in directory.rglob("*") if ".partial-" in path.name]


async def test_copy_path_moves_a_large_file_between_executors_byte_exact(ctx, tmp_path):
    source = tmp_path / "src" / "big.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(6 * MiB + 123))
    destination = tmp_path / "dst" / "big copy.bin"
    destination.parent.mkdir()
    destination.write_bytes(b"old content, replaced")
    arguments = {
        "source_environment_id": "alpha",
        "source_path": str(source),
        "destination_environment_id": "beta",
        "destination_path": str(destination),
    }
    result = ok(await call(ctx, "copy_path", **arguments))
    assert json.loads(result.text) == result.structured
    assert result.structured is not None
    assert (sc(result)["transport"], sc(result)["bytes"]) == ("ws", 6 * MiB + 123)
    assert sha256(destination) == sha256(source)
    assert leftovers(tmp_path) == []

    # Back the other way, within one environment too.
    back = tmp_path / "src" / "back.bin"
    ok(
        await call(
            ctx,
            "copy_path",
            **{
                **arguments,
                "source_environment_id": "beta",
                "source_path": str(destination),
                "destination_environment_id": "alpha",
                "destination_path": str(back),
            },
        )
    )
    assert sha256(back) == sha256(source)
    same = tmp_path / "src" / "same.bin"
    ok(
        await call(
            ctx, "copy_path", **{**arguments, "destination_environment_id": "alpha", "destination_path": str(same)}
        )
    )
    assert sha256(same) == sha256(source)

    # An empty file.
    empty = tmp_path / "src" / "empty"
    empty.touch()
    ok(
        await call(
            ctx,
            "copy_path",
            **{**arguments, "source_path": str(empty), "destination_path": str(tmp_path / "dst" / "empty")},
        )
    )
    assert (tmp_path / "dst" / "empty").read_bytes() == b""

    timed_out = await call(
        ctx, "copy_path", **{**arguments, "destination_path": str(tmp_path / "dst" / "slow"), "timeout_ms": 1}
    )
    assert error(timed_out) == "copy_path timed out after 1 ms"
    await asyncio.sleep(1)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "dst" / "slow").exists()


async def test_copy_path_copies_a_directory_tree(ctx, tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "b" / "deep.bin").write_bytes(os.urandom(300_000))
    (tree / "a" / "link").symlink_to("b/deep.bin")
    (tmp_path / "dst").mkdir()
    copy = tmp_path / "dst" / "tree copy"
    arguments = {
        "source_environment_id": "alpha",
        "source_path": str(tree),
        "destination_environment_id": "beta",
        "destination_path": str(copy),
    }
    assert error(await call(ctx, "copy_path", **arguments)) == f"{tree} is a directory (set recursive to copy it)"
    archives_before = temp_archives()
    result = ok(await call(ctx, "copy_path", **arguments, recursive=True))
    assert result.structured is not None
    assert sc(result)["transport"] == "ws"
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == sorted(
        str(p.relative_to(tree)) for p in tree.rglob("*")
    )
    assert (copy / "top.txt").read_text() == "top\n"
    assert sha256(copy / "a" / "b" / "deep.bin") == sha256(tree / "a" / "b" / "deep.bin")
    assert os.readlink(copy / "a" / "link") == "b/deep.bin"
    assert (copy / "empty").is_dir()
    assert leftovers(tmp_path) == []
    assert temp_archives() <= archives_before  # the source's archive is gone

    assert error(await call(ctx, "copy_path", **arguments, recursive=True)) == f"{copy} already exists"


async def test_copy_path_failures(ctx, tmp_path):
    source = tmp_path / "file.txt"
    source.write_text("x")
    base = {
        "source_environment_id": "alpha",
        "source_path": str(source),
        "destination_environment_id": "beta",
        "destination_path": str(tmp_path / "out.txt"),
    }
    missing = tmp_path / "missing"
    assert error(await call(ctx, "copy_path", **{**base, "source_path": str(missing)})) == (
        f"{missing}: no such file or directory"
    )
    nowhere = tmp_path / "no" / "such" / "dir" / "out.txt"
    assert error(await call(ctx, "copy_path", **{**base, "destination_path": str(nowhere)})) == (
        f"{nowhere.parent}: no such file or directory"
    )
    assert error(await call(ctx, "copy_path", **{**base, "destination_path": str(tmp_path)})) == (
        f"{tmp_path} already exists"
    )
    assert "not configured" in error(await call(ctx, "copy_path", **base, transport="http"))
    assert error(await call(ctx, "copy_path", **base, transport="carrier-pigeon")) == (
        "invalid arguments: transport: Input should be 'auto', 'http' or 'ws'"
    )
    assert "no environment named 'nope'" in error(
        await call(ctx, "copy_path", **{**base, "destination_environment_id": "nope"})
    )
    assert not (tmp_path / "out.txt").exists()


# --- copy_path through the byte relay ------------------------------------------------------------


@pytest.fixture
def relay_cluster(start_gateway_cluster, tcp_proxies) -> GatewayCluster:
    """Two gateway processes with the relay on. Its public URL must be known before they start,
    so it is a proxy, pointed at process 0 once that is up; the executors' curl reaches it."""
    front = tcp_proxies("127.0.0.1", 1)
    cluster: GatewayCluster = start_gateway_cluster(2, {"CXG_PUBLIC_HTTPS_BASE_URL": front.url("http")})
    front.retarget("127.0.0.1", cluster[0].port)
    return cluster


@pytest.fixture
def relay_executors(bound_executors, relay_cluster: GatewayCluster) -> tuple[BoundExecutor, BoundExecutor]:
    return (
        bound_executors(WORKSPACE, "alpha", 0, cluster=relay_cluster),
        bound_executors(WORKSPACE, "beta", 1, cluster=relay_cluster),
    )


@pytest.fixture
async def relay_ctx(relay_executors, relay_cluster: GatewayCluster):
    context = make_context(relay_cluster)
    context.relay = RelayClient(relay_cluster[1].base_url, settings.CXG_INTERNAL_SHARED_SECRET)
    try:
        yield context
    finally:
        await context.pool.close()


async def test_copy_path_goes_through_the_relay_when_it_is_configured(relay_ctx, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(5 * MiB + 7))
    (tmp_path / "dst").mkdir()
    destination = tmp_path / "dst" / "big.bin"
    arguments = {
        "source_environment_id": "alpha",
        "source_path": str(source),
        "destination_environment_id": "beta",
        "destination_path": str(destination),
    }
    result = sc(ok(await call(relay_ctx, "copy_path", **arguments)))
    assert (result["transport"], result["bytes"]) == ("http", 5 * MiB + 7)
    assert sha256(destination) == sha256(source)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.bin").write_bytes(os.urandom(200_000))
    (tree / "top.txt").write_text("top\n")
    copy = tmp_path / "dst" / "tree"
    tree_arguments = {**arguments, "source_path": str(tree), "destination_path": str(copy), "recursive": True}
    assert sc(ok(await call(relay_ctx, "copy_path", **tree_arguments)))["transport"] == "http"
    assert sha256(copy / "sub" / "data.bin") == sha256(tree / "sub" / "data.bin")
    assert (copy / "top.txt").read_text() == "top\n"

    forced = tmp_path / "dst" / "forced.bin"
    ws = sc(ok(await call(relay_ctx, "copy_path", **{**arguments, "destination_path": str(forced)}, transport="ws")))
    assert ws["transport"] == "ws"
    assert sha256(forced) == sha256(source)
    assert leftovers(tmp_path) == []


async def test_copy_path_falls_back_to_the_bridges_without_curl(relay_ctx, tmp_path, monkeypatch):
    # The executors' processes get PATH from the tools: one without curl.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "mv", "rm", "mkdir", "tar"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    monkeypatch.setattr(base, "DEFAULT_PATH", str(bin_dir))
    source = tmp_path / "file.bin"
    source.write_bytes(os.urandom(300_000))
    arguments = {
        "source_environment_id": "alpha",
        "source_path": str(source),
        "destination_environment_id": "beta",
        "destination_path": str(tmp_path / "copy.bin"),
    }
    refused = await call(relay_ctx, "copy_path", **arguments, transport="http")
    assert error(refused) == "the HTTP relay needs curl (and bash for directories) on both environments"
    assert not (tmp_path / "copy.bin").exists()
    result = sc(ok(await call(relay_ctx, "copy_path", **arguments)))
    assert result["transport"] == "ws"
    assert sha256(tmp_path / "copy.bin") == sha256(source)
    assert leftovers(tmp_path) == []
