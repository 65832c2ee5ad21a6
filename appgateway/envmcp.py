"""env-mcp: the MCP stdio server codex runs per loaded thread (``[mcp_servers.agentserver]``).

It offers the shared tool set (``sdk.tools``) to the model and runs each call against the
workspace's executors through the exec gateway's ``/bridge/{exe_id}``, with the capability token
the spawn builder minted for this app-server. It holds no gateway secret and needs neither the
database nor Redis: environment names are resolved from ``GET /api/exec-gateway/connected``
with the same token.

Wire (app-gateway §4.1): newline-delimited JSON-RPC 2.0 on stdin/stdout, lines up to 16 MiB;
malformed lines are logged and dropped. Each ``tools/call`` runs in its own task, so a slow
``shell`` never holds up ``list_environments``; writes to stdout are serialised. Stdin EOF
cancels the calls still running, waits for them and returns (exit 0). A failed stdout write
(codex went away) stops everything and raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx

from bridge.client import FAILOVER_GRACE, Pool
from sdk.resolver import Binding, Fetch, NameResolver
from sdk.tools import get_tool, tool_specs
from sdk.tools.base import JSON, ToolContext
from sdk.tools.sessions import InMemoryProcessSessions

logger = logging.getLogger(__name__)

SERVER_NAME = "agentserver"
SERVER_VERSION = "0.2"
DEFAULT_PROTOCOL_VERSION = "2025-06-18"  # answered when the client names none
MAX_LINE = 16 * 1024 * 1024
LOGGED_LINE_BYTES = 200
CONNECTED_TIMEOUT = 3.0
CONNECTED_MAX_BYTES = 1024 * 1024

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
TOOL_FAILED = -32000
# Listing methods codex calls on every server; this one offers tools only.
EMPTY_LISTS: dict[str, JSON] = {
    "prompts/list": {"prompts": []},
    "resources/list": {"resources": []},
    "resources/templates/list": {"resourceTemplates": []},
}

Write = Callable[[bytes], Awaitable[None]]


INSTRUCTIONS = (
    "Run commands and read or write files on this workspace's executors (remote machines, not this host); "
    "call list_environments first to see them.\n"
    "Tools name the executor they act on with environment_id."
)


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- the tool context ---------------------------------------------------------------------------


def http_base(ws_base_url: str) -> str:
    """``ws://host:port`` → ``http://host:port`` (``wss`` → ``https``)."""
    parts = urlsplit(ws_base_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def connected_fetcher(ws_base_url: str, workspace_id: str, token: str) -> Fetch:
    """The workspace's bound, online executors from the exec gateway, authorised by the
    capability token (the gateway takes the workspace from the token)."""
    url = http_base(ws_base_url) + "/api/exec-gateway/connected"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def fetch() -> list[Binding]:
        async with (
            httpx.AsyncClient(timeout=CONNECTED_TIMEOUT) as client,
            client.stream("GET", url, params={"workspace_id": workspace_id}, headers=headers) as response,
        ):
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > CONNECTED_MAX_BYTES:
                    raise RuntimeError("connected list over 1 MiB")
        if response.status_code != httpx.codes.OK:
            raise RuntimeError(f"HTTP {response.status_code}: {body[:1024].decode(errors='replace')}")
        bindings = json.loads(body)
        if not isinstance(bindings, list) or not all(isinstance(item, dict) for item in bindings):
            raise RuntimeError("connected list is not an array of objects")
        return bindings

    return fetch


def tool_context(workspace_id: str, exec_gateway_url: str, token: str) -> ToolContext:
    """env-mcp's context: bridges and names through the exec gateway, sessions in this process.
    No relay: minting relay tickets takes the cluster's shared secret, so ``copy_path`` streams
    over the bridges."""

    async def token_provider() -> str:
        return token

    return ToolContext(
        workspace_id=workspace_id,
        pool=Pool(exec_gateway_url, token_provider, client_name="codexgw-env-mcp", unavailable_grace=FAILOVER_GRACE),
        resolver=NameResolver(connected_fetcher(exec_gateway_url, workspace_id, token)),
        sessions=InMemoryProcessSessions(),
    )


# --- the MCP server -----------------------------------------------------------------------------


async def read_lines(reader: asyncio.StreamReader) -> AsyncGenerator[bytes]:
    """Lines of at most ``MAX_LINE`` bytes; a longer one is skipped whole (logged), not split."""
    skipping = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as eof:
            if eof.partial and not skipping:
                yield eof.partial
            return
        except asyncio.LimitOverrunError as over:
            await reader.readexactly(over.consumed)
            if not skipping:
                logger.warning("dropping a line longer than %d bytes", MAX_LINE)
            skipping = True
            continue
        if skipping:
            skipping = False  # the end of the line being skipped
            continue
        yield line


async def _next(lines: AsyncIterator[bytes]) -> bytes | None:
    return await anext(lines, None)


@dataclass
class McpServer:
    context: ToolContext

    def __post_init__(self) -> None:
        self._write_lock = asyncio.Lock()
        self._calls: set[asyncio.Task[None]] = set()
        self._write_failed: asyncio.Future[None] | None = None

    async def serve(self, reader: asyncio.StreamReader, write: Write) -> None:
        """Answer requests from ``reader`` until EOF; raises the error of a failed write."""
        self._write_failed = asyncio.get_running_loop().create_future()
        self._write = write
        lines = read_lines(reader)
        try:
            while True:
                next_line = asyncio.ensure_future(_next(lines))
                waiters: set[asyncio.Future[Any]] = {next_line, self._write_failed}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if self._write_failed.done():
                    next_line.cancel()
                    await asyncio.gather(next_line, return_exceptions=True)
                    break
                line = next_line.result()
                if line is None:
                    break
                if line.strip():
                    await self._dispatch(line)
        finally:
            await lines.aclose()
            for task in self._calls:
                task.cancel()
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self._write_failed.done():
            self._write_failed.result()

    async def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            logger.warning("dropping a malformed line: %r", line[:LOGGED_LINE_BYTES])
            return
        method = message.get("method")
        if not isinstance(method, str) or "id" not in message:
            return  # notifications (notifications/initialized included) and responses: nothing to answer
        request_id = message["id"]
        params = message.get("params")
        if method == "tools/call":
            task = asyncio.ensure_future(self._answer(request_id, self._call_tool(params)))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        else:
            await self._answer(request_id, self._handle(method, params))

    async def _handle(self, method: str, params: Any) -> JSON:
        if method == "initialize":
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            return {
                # Codex's own version back: it knows what it speaks, and this server needs nothing newer.
                "protocolVersion": requested if isinstance(requested, str) else DEFAULT_PROTOCOL_VERSION,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": SERVER_NAME, "version": SERVER_VERSION},
                # Codex shows the first line to models that find tools by search, where this
                # server is otherwise only a bare name.
                "instructions": INSTRUCTIONS,
            }
        if method == "tools/list":
            return {"tools": tool_specs()}
        if method == "ping":
            return {}
        if method in EMPTY_LISTS:
            return EMPTY_LISTS[method]
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    async def _call_tool(self, params: Any) -> JSON:
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            raise RpcError(INVALID_PARAMS, "invalid params")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "invalid params: arguments must be an object")
        name = params["name"]
        tool = get_tool(name)
        if tool is None:
            raise RpcError(METHOD_NOT_FOUND, f"unknown tool: {name}")
        try:
            result = await tool(self.context, arguments)
        except Exception as error:  # tools report failures as results; this is a bug in one
            logger.exception("tool %s raised", name)
            raise RpcError(TOOL_FAILED, f"{name}: {error}") from error
        return result.to_mcp()

    async def _answer(self, request_id: Any, work: Awaitable[JSON]) -> None:
        try:
            reply: JSON = {"jsonrpc": "2.0", "id": request_id, "result": await work}
        except RpcError as error:
            reply = {"jsonrpc": "2.0", "id": request_id, "error": {"code": error.code, "message": str(error)}}
        await self._send(reply)

    async def _send(self, message: JSON) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            async with self._write_lock:
                await self._write(data)
        except Exception as error:
            assert self._write_failed is not None
            if not self._write_failed.done():
                logger.error("stdout write failed, stopping: %s", error)
                self._write_failed.set_exception(error)


async def serve_stdio(context: ToolContext, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Serve on two pipes (non-blocking transports) until stdin's EOF, then close the bridges."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    write_transport, write_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, stdout)
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    try:
        await McpServer(context).serve(reader, write)
    finally:
        read_transport.close()
        with contextlib.suppress(Exception):
            await writer.drain()
        write_transport.close()
        await context.pool.close()
