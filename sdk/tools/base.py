"""What every tool shares: the context it runs in, its result, argument checks and errors.

A tool is ``async def tool(ctx: ToolContext, arguments: dict) -> ToolResult``. Failures the model
can act on (bad arguments, unknown environment, executor unavailable, a command that failed to
start) are results with ``is_error`` set, never exceptions: decorate tools with ``@tool_errors``
and raise ``ToolError`` (or let a bridge/resolver error through) to produce one.
"""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from bridge.client import BridgeClient, BridgeError, Pool
from sdk.resolver import NameResolver, ResolveError
from sdk.tools.sessions import ProcessSession

log = logging.getLogger(__name__)

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


def tool_errors(function: Tool) -> Tool:
    """Turn every exception out of ``function`` into an error result."""

    @functools.wraps(function)
    async def run(ctx: ToolContext, arguments: JSON) -> ToolResult:
        try:
            return await function(ctx, arguments)
        except (ToolError, ResolveError, BridgeError) as error:
            return ToolResult.error(str(error))
        except Exception as error:
            log.exception("tool %s failed", function.__name__)
            return ToolResult.error(f"{function.__name__}: internal error: {type(error).__name__}: {error}")

    return run


# --- arguments ---------------------------------------------------------------------------------


def _invalid(message: str) -> ToolError:
    return ToolError(f"invalid arguments: {message}")


def arg_str(arguments: JSON, key: str, default: str | None = None) -> str:
    """A string argument; required (non-empty) unless ``default`` is given."""
    value = arguments.get(key)
    if value is None:
        if default is None:
            raise _invalid(f"{key} is required")
        return default
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string")
    if not value and default is None:
        raise _invalid(f"{key} must not be empty")
    return value


def arg_int(arguments: JSON, key: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = arguments.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise _invalid(f"{key} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise _invalid(f"{key} must be {bound}")
    return int(value)


def arg_bool(arguments: JSON, key: str, default: bool = False) -> bool:
    value = arguments.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false")
    return value


def arg_argv(arguments: JSON, key: str = "command") -> list[str]:
    value = arguments.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise _invalid(f"{key} must be a non-empty array of strings (argv)")
    return list(value)


def arg_env(arguments: JSON, key: str = "env") -> dict[str, str]:
    value = arguments.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(f"{key} must be an object of string values")
    return dict(value)


def arg_path(arguments: JSON, key: str) -> str:
    """An absolute path (or a ``file://`` URI) as the plain path."""
    path = arg_str(arguments, key)
    if path.startswith("file://"):
        path = uri_path(path) or ""
    if not path.startswith("/"):
        raise _invalid(f"{key} must be an absolute path, got {path!r}")
    return posixpath.normpath(path)


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


async def environment(ctx: ToolContext, arguments: JSON, key: str = "environment_id") -> Environment:
    """The environment named by ``arguments[key]`` with an open, initialized bridge to it."""
    name = arguments.get(key)
    if not isinstance(name, str) or not name:
        raise ToolError(f"invalid arguments: {key} is required (call list_environments to see the environment names)")
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
