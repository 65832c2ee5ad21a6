"""``apply_patch`` end to end: the tool with a real ``ToolContext`` (name resolver on the test
database, bridge pool) driving the real ``codex exec-server`` through a real gateway process."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings

from bridge.client_pool import Pool
from executors import captoken, services
from executors.presence import presence_store
from sdk.resolver import NameResolver, bindings_fetcher
from sdk.tools.base import ToolContext
from sdk.tools.files import apply_patch
from sdk.tools.sessions import InMemoryProcessSessions
from tests.bridge_dial import websocket_connector
from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.gateway_cluster(count=1)]

WORKSPACE = "ws-apply-patch"
ENV = "box"


@pytest.fixture
async def ctx(gateway_cluster, make_executor_credentials, exec_servers) -> AsyncIterator[ToolContext]:
    """A ToolContext for WORKSPACE whose environment ``box`` is a real exec-server, online."""
    credentials = await sync_to_async(make_executor_credentials)()
    await sync_to_async(services.bind_executor)(WORKSPACE, credentials.exe_id, ENV, "apply_patch e2e", True)
    server = exec_servers.remote(gateway_cluster[0].base_url, credentials)
    online = await sync_to_async(wait_for)(lambda: presence_store().get(credentials.exe_id) is not None, 20)
    assert online, f"executor did not come online\n{server.log()}\n{gateway_cluster.log()}"

    async def token() -> str:
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_patch", workspace_id=WORKSPACE, ttl=600)

    pool = Pool(websocket_connector(gateway_cluster[0].ws_base_url), token)
    try:
        yield ToolContext(WORKSPACE, pool, NameResolver(bindings_fetcher(WORKSPACE)), InMemoryProcessSessions())
    finally:
        await pool.close()


def patch(*lines: str) -> str:
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"]) + "\n"


async def test_add_update_delete_and_move_on_a_real_executor(ctx: ToolContext, tmp_path: Path):
    crlf = tmp_path / "win.txt"
    crlf.write_bytes(b"alpha\r\nbeta\r\ngamma\r\ndelta\r\nomega")  # CRLF, no trailing newline
    code = tmp_path / "code.py"
    code.write_text("def f():\n    return 1\n\n\ndef g():\n    return 1\n")
    doomed = tmp_path / "doomed.txt"
    doomed.write_text("bye\n")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho old\n")
    script.chmod(0o755)
    added = tmp_path / "new dir" / "deep" / "notes #1.md"
    moved = tmp_path / "bin" / "run.sh"

    result = await apply_patch(
        ctx,
        {
            "environment_id": ENV,
            "patch": patch(
                f"*** Add File: {added}",
                "+# notes",
                "+",
                "+ünïcödé",
                f"*** Update File: {crlf}",
                "@@",
                " alpha",
                "-beta",
                "+BETA",
                "@@",
                "-omega",
                "+OMEGA",
                "+after",
                "*** End of File",
                "*** Update File: code.py",
                "@@ def g():",
                "-    return 1",
                "+    return 2",
                f"*** Delete File: {doomed}",
                f"*** Update File: {script}",
                f"*** Move to: {moved}",
                "@@",
                "-echo old",
                "+echo new",
            ),
            "cwd": str(tmp_path),
        },
    )
    assert not result.is_error, result.text
    assert result.text.splitlines() == [
        f"{added}: ok",
        f"{crlf}: ok",
        "code.py: ok",
        f"{doomed}: ok",
        f"{script} -> {moved}: ok",
    ]
    assert added.read_text() == "# notes\n\nünïcödé\n"
    assert crlf.read_bytes() == b"alpha\r\nBETA\r\ngamma\r\ndelta\r\nOMEGA\r\nafter"
    assert code.read_text() == "def f():\n    return 1\n\n\ndef g():\n    return 2\n"
    assert not doomed.exists()
    assert not script.exists()
    assert moved.read_text() == "#!/bin/sh\necho new\n"
    assert stat.S_IMODE(moved.stat().st_mode) == 0o755  # fs/copy carried the mode over


async def test_a_patch_that_cannot_apply_changes_nothing_on_the_executor(ctx: ToolContext, tmp_path: Path):
    first = tmp_path / "first.txt"
    first.write_text("one\ntwo\n")
    second = tmp_path / "second.txt"
    second.write_text("three\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (first, second, victim)}

    result = await apply_patch(
        ctx,
        {
            "environment_id": ENV,
            "patch": patch(
                f"*** Update File: {first}",
                "-one",
                "+ONE",
                f"*** Update File: {second}",
                "@@",
                "-four",
                "+FOUR",
                f"*** Delete File: {victim}",
                f"*** Add File: {tmp_path}/never/created.txt",
                "+x",
            ),
        },
    )
    assert result.is_error
    lines = result.text.splitlines()
    assert lines[1] == f'{second}: error: could not find context "four" in {second} (hunk 1 at patch line 6)'
    assert all("not applied" in line for index, line in enumerate(lines) if index != 1)
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in before} == before
    assert not (tmp_path / "never").exists()


async def test_errors_from_the_executor_and_the_patch_are_results(ctx: ToolContext, tmp_path: Path):
    (tmp_path / "adir").mkdir()
    result = await apply_patch(
        ctx,
        {
            "environment_id": ENV,
            "patch": patch(
                f"*** Update File: {tmp_path}/missing.txt",
                "-x",
                "+y",
                f"*** Update File: {tmp_path}/adir",
                "-x",
                "+y",
                f"*** Delete File: {tmp_path}/adir",
                "*** Delete File: relative.txt",
            ),
        },
    )
    assert result.is_error
    assert result.text.splitlines() == [
        f"{tmp_path}/missing.txt: error: no such file: {tmp_path}/missing.txt (Update File changes an existing file)",
        f"{tmp_path}/adir: error: path `{tmp_path}/adir` is not a file (code -32600)",
        f"{tmp_path}/adir: error: {tmp_path}/adir is already changed by '{tmp_path}/adir' in this patch",
        "relative.txt: error: relative path 'relative.txt': use an absolute path "
        "(or pass 'cwd' to resolve relative paths against)",
    ]
    assert (tmp_path / "adir").is_dir()

    malformed = await apply_patch(ctx, {"environment_id": ENV, "patch": "*** Begin Patch\n*** Add File: /x\nx\n"})
    assert malformed.is_error
    assert malformed.text.startswith("invalid patch: line 3: the patch must end with '*** End Patch'")

    unknown = await apply_patch(ctx, {"environment_id": "nowhere", "patch": patch(f"*** Delete File: {tmp_path}/a")})
    assert unknown.is_error
    assert "no environment named 'nowhere'" in unknown.text


async def test_a_large_file_keeps_every_other_byte(ctx: ToolContext, tmp_path: Path):
    big = tmp_path / "big.txt"
    lines = [f"line {index} {os.urandom(8).hex()}" for index in range(50_000)]
    big.write_text("\n".join(lines) + "\n")
    result = await apply_patch(
        ctx,
        {
            "environment_id": ENV,
            "patch": patch(
                f"*** Update File: {big}",
                "@@",
                f" {lines[24_999]}",
                f"-{lines[25_000]}",
                "+replaced",
                f" {lines[25_001]}",
            ),
        },
    )
    assert result.text == f"{big}: ok"
    expected = [*lines[:25_000], "replaced", *lines[25_001:]]
    assert big.read_text() == "\n".join(expected) + "\n"
