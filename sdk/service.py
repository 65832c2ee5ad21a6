"""The SDK REST surface's logic: per-workspace tool contexts, tool calls, and process sessions
that any gateway process can serve.

A process session (``exec_command``) lives in the gateway process whose bridge started it: its
output is collected there from the executor's pushed events. Its record in Redis names that
process's channel, so a request that lands on another process is forwarded there
(``bridge.process_rpc``) and answered as if it were local.

The tools reach executors through this process's own bridge without a socket (``bridge.inproc``),
with a capability token the SDK mints per workspace and the bridge checks as for ``/bridge``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from bridge import inproc, process_rpc
from bridge.client_pool import FAILOVER_GRACE, Pool
from bridge.relay_client import RelayClient
from codexgw import redis as gwredis
from codexgw import runtime
from executors import captoken
from sdk.resolver import NameResolver, bindings_fetcher
from sdk.tools import get_tool
from sdk.tools.base import JSON, ToolContext
from sdk.tools.sessions import DEFAULT_MAX_IDLE, InMemoryProcessSessions, ProcessSession

# The SDK mints its own capability token per workspace; it is renewed this long before expiry.
SDK_TOKEN_TTL = 24 * 3600
SDK_TOKEN_RENEW_BEFORE = 3600
CONTEXT_IDLE = 30 * 60.0
SESSION_TOOLS = {"write_stdin", "read_output", "terminate"}


class SdkError(Exception):
    """An error with the SDK's ``{"error": {"code", "message"}}`` envelope and an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# --- where sessions live -------------------------------------------------------------------


@dataclass(frozen=True)
class SessionRecord:
    workspace_id: str
    channel: str


def _record_key(session_id: str) -> str:
    return gwredis.key("sdksession", session_id)


def _save_record(session_id: str, raw: str) -> None:
    gwredis.sync_client().set(_record_key(session_id), raw, ex=int(DEFAULT_MAX_IDLE))


def _load_record(session_id: str) -> SessionRecord | None:
    client = gwredis.sync_client()
    raw: Any = client.get(_record_key(session_id))
    if raw is not None:
        client.expire(_record_key(session_id), int(DEFAULT_MAX_IDLE))  # idle timeout from the last use
    if not isinstance(raw, str):
        return None
    data = json.loads(raw)
    return SessionRecord(workspace_id=data["workspace_id"], channel=data["channel"])


def _drop_record(session_id: str) -> None:
    gwredis.sync_client().delete(_record_key(session_id))


save_record = sync_to_async(_save_record, thread_sensitive=False)
load_record = sync_to_async(_load_record, thread_sensitive=False)
drop_record = sync_to_async(_drop_record, thread_sensitive=False)


class SharedProcessSessions(InMemoryProcessSessions):
    """This process's sessions, each also recorded in Redis with the channel that reaches it."""

    async def register(self, session: ProcessSession) -> None:
        await super().register(session)
        record = {"workspace_id": session.workspace_id, "channel": await process_rpc.process_channel()}
        await save_record(session.session_id, json.dumps(record))

    async def forget(self, session_id: str) -> None:
        await super().forget(session_id)
        await drop_record(session_id)


_sessions = SharedProcessSessions()


# --- per-workspace tool contexts ----------------------------------------------------------


@dataclass
class _Workspace:
    workspace_id: str
    context: ToolContext = field(init=False)
    token: str = ""
    token_expires: float = 0.0
    last_used: float = 0.0

    async def fresh_token(self) -> str:
        if self.token_expires - time.time() < SDK_TOKEN_RENEW_BEFORE:
            now = time.time()
            self.token = captoken.mint(
                settings.CXG_CAPTOKEN_HMAC_SECRET,
                turn_id=f"sdk-pool:{self.workspace_id}",
                workspace_id=self.workspace_id,
                ttl=SDK_TOKEN_TTL,
                now=now,
            )
            self.token_expires = now + SDK_TOKEN_TTL
        return self.token


_workspaces: dict[str, _Workspace] = {}


def relay_client() -> RelayClient | None:
    """The byte relay for ``copy_path`` in this process, when the relay is on (it needs the
    public URL the executors reach it at, and the shared secret to mint tickets)."""
    if settings.CXG_PUBLIC_HTTPS_BASE_URL and settings.CXG_INTERNAL_SHARED_SECRET:
        return RelayClient(runtime.self_http_base_url(), settings.CXG_INTERNAL_SHARED_SECRET)
    return None


async def context_for(workspace_id: str) -> ToolContext:
    now = time.monotonic()
    for idle_id, idle in list(_workspaces.items()):
        if now - idle.last_used > CONTEXT_IDLE and idle_id != workspace_id:
            del _workspaces[idle_id]
            await idle.context.pool.close()
    workspace = _workspaces.get(workspace_id)
    if workspace is None:
        workspace = _Workspace(workspace_id)
        workspace.context = ToolContext(
            workspace_id=workspace_id,
            # The bridge of this process, without a socket: tokens are checked as for /bridge.
            pool=Pool(
                inproc.connect, workspace.fresh_token, client_name="codexgw-sdk", unavailable_grace=FAILOVER_GRACE
            ),
            resolver=NameResolver(bindings_fetcher(workspace_id)),
            sessions=_sessions,
            relay=relay_client(),
        )
        _workspaces[workspace_id] = workspace
    workspace.last_used = now
    return workspace.context


# --- operations ------------------------------------------------------------------------------


async def call_tool(workspace_id: str, tool_name: str, arguments: JSON) -> JSON:
    """Run a tool for the workspace; a session tool goes to the process holding its session."""
    if get_tool(tool_name) is None:
        raise SdkError(400, "unknown_tool", f"no such tool: {tool_name}")
    session_id = arguments.get("session_id")
    if tool_name in SESSION_TOOLS and isinstance(session_id, str):
        record = await _authorized_record(session_id, workspace_id)
        if record.channel != await process_rpc.process_channel():
            payload = {"workspace_id": workspace_id, "tool": tool_name, "arguments": arguments}
            return await _forward(record, "sdk.tool", payload)
    return await _run_tool(workspace_id, tool_name, arguments)


async def _run_tool(workspace_id: str, tool_name: str, arguments: JSON) -> JSON:
    tool = get_tool(tool_name)
    assert tool is not None
    return (await tool(await context_for(workspace_id), arguments)).to_mcp()


async def session_op(workspace_id: str, session_id: str, op: str, body: JSON) -> JSON:
    """``stdin`` / ``output`` / ``terminate`` on a process session, wherever it lives."""
    record = await _authorized_record(session_id, workspace_id)
    if record.channel != await process_rpc.process_channel():
        return await _forward(record, "sdk.session", {"session_id": session_id, "op": op, "body": body})
    return await _local_session_op(session_id, op, body)


async def _authorized_record(session_id: str, workspace_id: str) -> SessionRecord:
    record = await load_record(session_id)
    if record is None:
        raise SdkError(404, "session_not_found", f"no such session: {session_id}")
    if record.workspace_id != workspace_id:
        raise SdkError(403, "forbidden", "session belongs to a different workspace")
    return record


async def _forward(record: SessionRecord, handler: str, payload: JSON) -> JSON:
    try:
        reply = await process_rpc.call(record.channel, handler, payload)
    except process_rpc.PeerUnavailable as exc:
        raise SdkError(410, "session_lost", f"the gateway process holding this session is gone ({exc})") from None
    if "sdk_error" in reply:
        error = reply["sdk_error"]
        raise SdkError(int(error["status"]), str(error["code"]), str(error["message"]))
    result: JSON = reply["result"]
    return result


async def _local_session_op(session_id: str, op: str, body: JSON) -> JSON:
    session = await _sessions.get(session_id)
    if session is None:
        # The record outlived the process-local session (idle sweep or a restart of this process).
        await drop_record(session_id)
        raise SdkError(404, "session_not_found", f"no such session: {session_id}")
    if op == "stdin":
        data = body.get("data_b64")
        if not isinstance(data, str):
            raise SdkError(400, "bad_request", "data_b64 (standard base64) is required")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise SdkError(400, "bad_base64", "data_b64 is not valid standard base64") from None
        status = await session.write(raw)
        return {"ok": status == "accepted", "status": status}
    if op == "output":
        since = body.get("since", 0)
        return session.output_since(since if isinstance(since, int) else 0).to_json()
    if op == "terminate":
        running = await session.terminate()
        return {"ok": True, "running": running}
    raise SdkError(400, "bad_request", f"unknown operation {op}")


def _serving(run: process_rpc.Handler) -> process_rpc.Handler:
    """A handler of calls forwarded here: ``run``'s result, or its SdkError for ``_forward`` to raise."""

    async def serve(payload: JSON) -> JSON:
        try:
            return {"result": await run(payload)}
        except SdkError as error:
            return {"sdk_error": {"status": error.status, "code": error.code, "message": str(error)}}

    return serve


def install() -> None:
    """Serve the calls other processes forward here (``SdkConfig.ready()``)."""
    process_rpc.register("sdk.tool", _serving(lambda p: _run_tool(p["workspace_id"], p["tool"], p["arguments"])))
    process_rpc.register("sdk.session", _serving(lambda p: _local_session_op(p["session_id"], p["op"], p["body"])))


async def list_envs(workspace_id: str) -> list[JSON]:
    """The workspace's bound and online executors with the tools each offers."""
    from sdk.tools import tool_specs

    bindings = await bindings_fetcher(workspace_id)()
    tools = [{"name": spec["name"], "kind": "core", "description": spec["description"]} for spec in tool_specs()]
    envs = []
    for binding in bindings:
        env: JSON = {"name": binding["name"], "type": "executor", "is_default": binding["is_default"], "tools": tools}
        if binding.get("description"):
            env["description"] = binding["description"]
        if binding.get("last_seen_at"):
            env["last_seen"] = binding["last_seen_at"]
        envs.append(env)
    return envs


async def wait_closed() -> None:
    """Close every pooled bridge (tests, shutdown)."""
    for workspace in list(_workspaces.values()):
        await workspace.context.pool.close()
    _workspaces.clear()
    await asyncio.sleep(0)
