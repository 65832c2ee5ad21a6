"""One ``codex app-server`` child process: its environment, start, readiness and stop.

The child gets an allow-listed environment (the gateway's own secrets never reach codex or its
MCP children), works in ``/``, leads its own process group (its MCP servers stop with it) and is
SIGTERM-ed by Linux if the gateway dies, so a crashed gateway leaves no orphan running on while
its lease passes to another process. Both pipes are read to their end for the child's whole
life, so it never blocks on a full pipe. Which child runs, where its CODEX_HOME comes from and
who may use it is the supervisor's business (``appgateway.supervisor``), not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from appgateway.rpc_filter import FALSE_SANDBOX_WARNING

logger = logging.getLogger(__name__)
child_logger = logging.getLogger("appgateway.codex")

START_TIMEOUT = 30.0  # until the child prints its URL (first start unpacks codex's bundled skills)
READY_TIMEOUT = 5.0  # then until /readyz answers 200
READY_POLL = 0.05
MAX_LOG_LINE = 4000
# The child's working directory, which becomes a thread's cwd when the client names none (the TUI
# does not): the model's tools run on executors, so no directory of the gateway (CODEX_HOME least
# of all) may pass for where it works. "/" holds nothing of the gateway's and exists everywhere.
CHILD_CWD = "/"
_WS_URL = re.compile(r"ws://[^\s\x1b]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class SpawnError(RuntimeError):
    pass


@dataclass(frozen=True)
class AppServerHandle:
    workspace_id: str
    ws_url: str
    pid: int
    codex_home: Path
    started_at: float


def child_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """An allow-list, built explicitly: the gateway's own secrets never reach codex or its MCP children."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(home)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "NO_COLOR": "1",
    }
    if os.environ.get("RUST_LOG"):
        env["RUST_LOG"] = os.environ["RUST_LOG"]
    key_name = settings.CXG_MODEL_PROVIDER_ENV_KEY
    model_key = settings.CXG_CODEX_API_KEY or os.environ.get(key_name, "")
    if model_key:
        env[key_name] = model_key
    env.update(extra)
    env["CODEX_HOME"] = str(home)
    return env


@dataclass
class AppServerProcess:
    """A started, ready child and the tasks reading its pipes."""

    handle: AppServerHandle
    process: asyncio.subprocess.Process
    drains: list[asyncio.Task[None]]

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace: float) -> None:
        """SIGTERM its process group, SIGKILL after ``grace``; returns once its pipes are read to the end."""
        await _stop_process(self.process, grace)
        await asyncio.gather(*self.drains, return_exceptions=True)

    @classmethod
    async def start(cls, workspace_id: str, home: Path, env: Mapping[str, str]) -> AppServerProcess:
        """Run ``codex app-server`` on a loopback port and wait until it answers ``/readyz``."""
        try:
            process = await asyncio.create_subprocess_exec(
                settings.CXG_CODEX_BIN,
                "app-server",
                "--listen",
                "ws://127.0.0.1:0",
                cwd=CHILD_CWD,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        except OSError as exc:
            raise SpawnError(f"cannot run {settings.CXG_CODEX_BIN!r}: {exc}") from exc
        url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        assert process.stdout is not None
        assert process.stderr is not None
        drains = [
            asyncio.create_task(_drain(process.stdout, workspace_id, url), name=f"codex stdout {workspace_id}"),
            asyncio.create_task(_drain(process.stderr, workspace_id, url), name=f"codex stderr {workspace_id}"),
        ]
        try:
            port = await _wait_until_ready(process, url)
        except BaseException:
            await _stop_process(process, 0)
            await asyncio.gather(*drains, return_exceptions=True)
            raise
        handle = AppServerHandle(
            workspace_id=workspace_id,
            ws_url=f"ws://127.0.0.1:{port}",
            pid=process.pid,
            codex_home=home,
            started_at=time.time(),
        )
        return cls(handle=handle, process=process, drains=drains)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when the gateway dies, so a crashed
    gateway leaves no orphaned app-server behind while its lease passes to another process."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls it
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the gateway died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


async def _drain(stream: asyncio.StreamReader, workspace_id: str, url: asyncio.Future[str]) -> None:
    """Read one pipe of the child to its end: the first ws:// URL resolves ``url``; every line
    goes to the gateway's log, truncated. Never stops reading, so the child never blocks on a full pipe."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:
            continue  # a line over the reader's limit: asyncio discarded it
        if not line:
            return
        text = _ANSI.sub("", line.decode("utf-8", "replace")).rstrip()
        if not url.done() and (match := _WS_URL.search(text)):
            url.set_result(match.group(0))
        if text:
            # codex's false bubblewrap ERROR (rpc_filter.FALSE_SANDBOX_WARNING) would read as a
            # broken sandbox; the relay logs that it held the warning back, at info.
            level = logging.DEBUG if FALSE_SANDBOX_WARNING in text else logging.INFO
            child_logger.log(level, "[codex-app-server %s] %s", workspace_id, text[:MAX_LOG_LINE])


async def _http_ok(host: str, port: int, path: str) -> bool:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status.split()
    return len(parts) >= 2 and parts[1] == b"200"


def _signal_group(pid: int, sig: int) -> None:
    # The child leads its own process group (start_new_session): its MCP servers go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop_process(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            logger.warning("app-server ignored SIGTERM, killing it", extra={"pid": process.pid})
        _signal_group(process.pid, signal.SIGKILL)  # also whatever it left in its group
    await process.wait()


async def _wait_for_url(process: asyncio.subprocess.Process, url: asyncio.Future[str]) -> str:
    exited: asyncio.Future[Any] = asyncio.ensure_future(process.wait())
    waiting: set[asyncio.Future[Any]] = {url, exited}
    try:
        await asyncio.wait(waiting, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if url.done():
        return url.result()
    if process.returncode is not None:
        raise SpawnError(f"codex app-server exited with {process.returncode} before listening")
    raise SpawnError(f"codex app-server printed no ws:// URL within {START_TIMEOUT}s")


async def _wait_until_ready(process: asyncio.subprocess.Process, url: asyncio.Future[str]) -> int:
    """The loopback port the child listens on, once its ``/readyz`` answers 200."""
    ws_url = await _wait_for_url(process, url)
    parsed = urlsplit(ws_url)
    if parsed.hostname != "127.0.0.1" or parsed.port is None:
        raise SpawnError(f"codex app-server listens on {ws_url!r}, not on 127.0.0.1")
    deadline = time.monotonic() + READY_TIMEOUT
    while not await _http_ok("127.0.0.1", parsed.port, "/readyz"):
        if process.returncode is not None:
            raise SpawnError(f"codex app-server exited with {process.returncode} before it was ready")
        if time.monotonic() >= deadline:
            raise SpawnError(f"codex app-server /readyz never returned 200 within {READY_TIMEOUT}s")
        await asyncio.sleep(READY_POLL)
    return parsed.port
