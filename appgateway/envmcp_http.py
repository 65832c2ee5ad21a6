"""``/mcp/env/<workspace_id>``: env-mcp over MCP's streamable HTTP, served by the gateway process.

A raw ASGI app in front of Django (added for ``/mcp/env/`` in ``AppGatewayConfig.ready``, like the
model proxy): each request is authenticated (``appgateway.envmcp_auth``; 401/403 answered here,
before the MCP SDK sees it), then handed to the SDK's ``StreamableHTTPSessionManager`` with the caller in the scope.

Sessions are stateful (``Mcp-Session-Id``): a session is bound to the spawn turn whose token
opened it (the SDK answers 404 to another credential) and lives in the process that serves the
URL the app-server was given, which is the process that spawned it (``runtime.self_http_base_url``,
loopback), so every request of one app-server reaches the process holding its sessions and
in-flight calls, and ``notifications/cancelled`` reaches the call it names. Nothing is shared
between gateway processes. A request for a session this process does not have (the process
restarted, or a shared address sent it elsewhere) gets the SDK's 404 ``Session not found``, and
codex opens a new session and carries on (measured on 0.171.0); only a cancellation for a call
running in another process would be lost that way.

The gateway runs no ASGI lifespan (Channels' router has none: uvicorn's is off, daphne has
none), so the session manager's task group is started on the first request, once per event
loop, in a task of its own that lives as long as the loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive as StarletteReceive

from appgateway import envmcp, supervisor
from appgateway.envmcp_auth import Caller, authorize, workspace_of
from bridge.ws_auth import Denial
from codexgw.raw_asgi import Receive, Scope, Send, header, send_json

logger = logging.getLogger(__name__)

# codex keeps a GET stream of its session open while it lives, so only a session whose app-server
# is gone (stopped, crashed) goes idle (measured with a 5 s timeout: a thread idle for 12 s kept
# its session).
SESSION_IDLE_TIMEOUT = 30 * 60.0


_managers: dict[asyncio.AbstractEventLoop, asyncio.Future[StreamableHTTPSessionManager]] = {}


async def _run(manager: StreamableHTTPSessionManager, ready: asyncio.Future[StreamableHTTPSessionManager]) -> None:
    try:
        async with manager.run():
            ready.set_result(manager)
            await asyncio.Event().wait()  # until the loop ends (the process stops)
    except BaseException as error:
        if not ready.done():
            ready.set_exception(error)
        raise


async def session_manager() -> StreamableHTTPSessionManager:
    """This event loop's session manager, started on first use."""
    loop = asyncio.get_running_loop()
    ready = _managers.get(loop)
    if ready is None:
        ready = _managers[loop] = loop.create_future()
        manager = StreamableHTTPSessionManager(
            app=envmcp.server(),
            session_idle_timeout=SESSION_IDLE_TIMEOUT,
            # The Host check guards servers without authentication against DNS rebinding; every
            # request here carries a capability token a browser page cannot have.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        task = loop.create_task(_run(manager, ready), name="env-mcp session manager")
        task.add_done_callback(lambda _: _managers.pop(loop, None))
    return await asyncio.shield(ready)


async def env_mcp_app(scope: Scope, receive: Receive, send: Send) -> None:
    workspace_id = workspace_of(scope["path"])
    if workspace_id is None:
        await send_json(send, 404, {"error": "not found: use /mcp/env/<workspace_id>"})
        return
    verdict = await authorize(workspace_id, header(scope, b"authorization"))
    if isinstance(verdict, Denial):
        logger.info("env-mcp request refused", extra={"workspace_id": workspace_id, "status": verdict.status})
        headers = [(b"www-authenticate", b'Bearer realm="env-mcp"')] if verdict.status == 401 else []
        await send_json(send, verdict.status, {"error": verdict.message}, headers)
        return
    await serve(verdict, scope, receive, send)


async def serve(caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
    """Hand an authenticated request to the SDK: the caller for the tools, and the spawn turn as
    the principal the SDK binds each session to."""
    supervisor.get_supervisor().touch(caller.workspace_id)
    principal = AccessToken(token=caller.turn_id, client_id=caller.turn_id, scopes=[])
    scope = {**scope, "user": AuthenticatedUser(principal), envmcp.CALLER: caller}
    manager = await session_manager()
    # The same ASGI callable; starlette types the messages it yields as mutable.
    await manager.handle_request(scope, cast(StarletteReceive, receive), send)
