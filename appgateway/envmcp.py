"""env-mcp: the MCP server that offers the model the workspace's executors
(``[mcp_servers.agentserver]`` of every app-server), served by the gateway itself over MCP's
streamable HTTP (``appgateway.envmcp_http``).

It offers the model what codex's own tools lack (``OFFERED``, from the shared tool set
``sdk.tools``) and runs each call against the workspace's
executors through the bridge in process (``bridge.inproc``, as ``/bridge/{exe_id}`` would), with
the capability token the caller presented (the spawn's token, ``appgateway.envmcp_auth``).
Environment names are the workspace's online executors that the same token may reach, checked as
``GET /api/exec-gateway/connected`` checks it. Tool contexts (the bridges) are kept per spawn
turn in this process and closed when the turn is revoked (``close_turn``).

Each ``tools/call`` runs in its own task (the SDK's dispatcher), so a long ``copy_path`` never
holds up ``list_environments``; ``notifications/cancelled`` cancels the call's task, and the
processes the call started on executors (``copy_path``'s curl and tar) are terminated
(``sdk.tools.running``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import mcp_types as types
from channels.db import database_sync_to_async
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError

from appgateway.envmcp_auth import Caller
from bridge import inproc
from bridge.client_pool import FAILOVER_GRACE, Pool
from executors import captoken, services
from sdk.resolver import Binding, Fetch, NameResolver
from sdk.service import relay_client
from sdk.tools import get_tool, tool_specs
from sdk.tools.base import ToolContext
from sdk.tools.sessions import InMemoryProcessSessions

logger = logging.getLogger(__name__)

SERVER_NAME = "agentserver"
SERVER_VERSION = "0.3"
# What codex's own tools, running in the thread's executors, lack: which executors there are
# (online), and copying between two of them. Its exec_command/write_stdin cover shell,
# exec_command, write_stdin, read_output and terminate; its apply_patch covers apply_patch and
# write_file; reading files is a command (or view_image for images). The SDK's REST surface
# keeps all of sdk.tools.
OFFERED = ("list_environments", "copy_path")
CALLER = "codexgw.envmcp.caller"  # the ASGI scope key of the authenticated Caller

INSTRUCTIONS = (
    "List this workspace's executors (the remote machines your own tools run on) and copy files between them.\n"
    "Your exec_command and apply_patch run on an executor: the first one, or the one environment_id names."
)


# --- the tool context ---------------------------------------------------------------------------


def connected_fetcher(workspace_id: str, token: str) -> Fetch:
    """The workspace's bound, online executors that the capability token may reach, checked as
    ``GET /api/exec-gateway/connected`` checks it (revoked turn, other workspace: refused)."""

    def connected() -> list[Binding]:
        try:
            payload = services.verified_capability(token)
        except captoken.CapTokenError as error:
            raise RuntimeError(f"token refused: {error}") from None
        if payload.workspace_id != workspace_id:
            raise RuntimeError("token is for another workspace")
        return services.reachable_bindings(workspace_id, payload)

    return database_sync_to_async(connected)


def tool_context(workspace_id: str, token: str) -> ToolContext:
    """A spawn's context: bridges and names, both in process (``bridge.inproc``,
    ``connected_fetcher``) with the spawn's token, so revoking the turn cuts them, and the byte relay for
    ``copy_path`` when it is on."""

    async def token_provider() -> str:
        return token

    return ToolContext(
        workspace_id=workspace_id,
        pool=Pool(inproc.connect, token_provider, client_name="codexgw-env-mcp", unavailable_grace=FAILOVER_GRACE),
        resolver=NameResolver(connected_fetcher(workspace_id, token)),
        # None of the offered tools keeps process sessions; the context needs a store all the same.
        sessions=InMemoryProcessSessions(),
        relay=relay_client(),
    )


# spawn turn id → token → its tool context, in this process. Keyed by the token, not the turn
# alone: the environments' tokens share the spawn's turn but reach one executor each.
_contexts: dict[str, dict[str, ToolContext]] = {}


def context_for(caller: Caller) -> ToolContext:
    """The tool context of the caller's token, created on its first call."""
    contexts = _contexts.setdefault(caller.turn_id, {})
    context = contexts.get(caller.token)
    if context is None:
        context = contexts[caller.token] = tool_context(caller.workspace_id, caller.token)
    return context


async def close_turn(turn_id: str) -> None:
    """Forget a revoked spawn turn's tool contexts and close their bridges."""
    for context in _contexts.pop(turn_id, {}).values():
        await context.pool.close()


# --- the MCP server -----------------------------------------------------------------------------


def _caller(ctx: ServerRequestContext[Any]) -> Caller:
    caller = ctx.request.scope.get(CALLER) if ctx.request is not None else None
    if not isinstance(caller, Caller):  # envmcp_http sets it on every request it lets through
        raise MCPError(types.INTERNAL_ERROR, "unauthenticated request")
    return caller


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[types.Tool.model_validate(spec) for spec in tool_specs() if spec["name"] in OFFERED]
    )


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    """One ``tools/call``: the envelope is typed by the SDK, the arguments by the tool's own model
    (``sdk.tools.arguments``, the one validation every caller of a tool goes through, which also
    gives the schema ``tools/list`` shows) and its failures come back as ``isError`` results."""
    tool = get_tool(params.name) if params.name in OFFERED else None
    if tool is None:
        raise MCPError(types.METHOD_NOT_FOUND, f"unknown tool: {params.name}")
    try:
        result = await tool(context_for(_caller(ctx)), params.arguments or {})
    except asyncio.CancelledError:  # notifications/cancelled, or the session ended
        logger.info("env-mcp call cancelled", extra={"tool": params.name, "request_id": ctx.request_id})
        raise
    return types.CallToolResult.model_validate(result.to_mcp())


def server() -> Server[Any]:
    return Server(
        SERVER_NAME,
        version=SERVER_VERSION,
        # Codex shows the first line to models that find tools by search, where this server is
        # otherwise only a bare name.
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
