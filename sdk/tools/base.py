"""What every tool shares: the context it runs in, its result and errors.

A tool is ``async def tool(ctx: ToolContext, arguments: dict) -> ToolResult``. Failures the model
can act on (bad arguments, unknown environment, executor unavailable, a command that failed to
start) are results with ``is_error`` set, never exceptions: write tools with ``@takes(Model)``
(``sdk.tools.arguments``) and raise ``ToolError`` (or let a bridge/resolver error through) to
produce one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from bridge.client import BridgeClient, BridgeError
from bridge.client_pool import Pool
from sdk.resolver import NameResolver
from sdk.tools.sessions import ProcessSession

JSON = dict[str, Any]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ToolResult:
    """An MCP ``tools/call`` result: one text item, ``isError``, optional ``structuredContent``."""

    text: str
    is_error: bool = False
    structured: JSON | None = None

    @classmethod
    def ok(cls, text: str, structured: JSON | None = None) -> ToolResult:
        return cls(text, False, structured)

    @classmethod
    def error(cls, text: str, structured: JSON | None = None) -> ToolResult:
        return cls(text, True, structured)

    def to_mcp(self) -> JSON:
        result: JSON = {"content": [{"type": "text", "text": self.text}], "isError": self.is_error}
        if self.structured is not None:
            result["structuredContent"] = self.structured
        return result


class ProcessSessions(Protocol):
    """Where ``exec_command`` keeps its sessions for ``write_stdin``/``read_output``/``terminate``
    (``InMemoryProcessSessions``; the SDK REST surface shares its own across processes)."""

    async def register(self, session: ProcessSession) -> None: ...

    async def get(self, session_id: str) -> ProcessSession | None: ...

    async def forget(self, session_id: str) -> None: ...


class RelayTicket(Protocol):
    @property
    def ticket(self) -> str: ...

    @property
    def upload_url(self) -> str: ...

    @property
    def download_url(self) -> str: ...


class RelayTickets(Protocol):
    """Mints byte-relay tickets (``bridge.relay_client.RelayClient``)."""

    async def create(
        self, workspace_id: str, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int = 0
    ) -> RelayTicket: ...


@dataclass
class ToolContext:
    """One workspace's view: its executors by name, their bridges and its process sessions."""

    workspace_id: str
    pool: Pool
    resolver: NameResolver
    sessions: ProcessSessions
    relay: RelayTickets | None = None


Tool = Callable[[ToolContext, JSON], Awaitable[ToolResult]]


class ToolError(Exception):
    """A failure reported to the caller as an ``isError`` result; ``str()`` is the text."""


def file_uri(path: str) -> str:
    """exec-server takes every path as a ``file://`` URI (codex-wire §A.6)."""
    return PurePosixPath(path).as_uri()


def uri_path(uri: Any) -> str | None:
    """The plain path of a ``file://`` URI from exec-server, or None."""
    if not isinstance(uri, str) or not uri.startswith("file:///"):
        return None
    return unquote(urlsplit(uri).path)


# --- environments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    name: str
    exe_id: str
    client: BridgeClient


async def environment(ctx: ToolContext, name: str) -> Environment:
    """The environment ``name`` with an open, initialized bridge to it."""
    exe_id = await ctx.resolver.resolve(name)
    try:
        client = await ctx.pool.get(exe_id)
    except BridgeError as error:
        raise ToolError(f"environment {name!r} unavailable: {error}") from None
    return Environment(name, exe_id, client)


def home_dir(client: BridgeClient) -> str:
    """The executor's home directory (else its temp directory) as a plain path."""
    return uri_path(client.environment_info.get("userHomeDir")) or temp_dir(client)


def temp_dir(client: BridgeClient) -> str:
    return uri_path(client.environment_info.get("tempDir")) or "/tmp"  # noqa: S108 - the executor's


def process_env(client: BridgeClient, extra: dict[str, str] | None = None) -> dict[str, str]:
    """exec-server gives a process exactly the ``env`` it is sent (codex-wire §A.2): a usable PATH
    and HOME, overridden by ``extra``."""
    env = {"PATH": DEFAULT_PATH, "HOME": home_dir(client), "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env
