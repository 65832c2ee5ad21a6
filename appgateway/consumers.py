"""The TUI's WebSocket (``/`` and ``/codex-app/ws``): a proxy to its workspace's codex app-server.

``codex --remote ws://host:port --remote-auth-token-env VAR`` connects to ``/`` with
``Authorization: Bearer <token>``. The token is verified before the upgrade (401 missing or bad,
503 when agentserver cannot answer). After the upgrade the workspace's app-server is ensured
(spawned here, or found in the process that owns it) and every frame passes verbatim in both
directions: text stays text, binary stays binary, one message per message. On the way in,
local-IO requests are refused (``rpc_filter``), ``initialize`` is made to declare
``experimentalApi`` and a ``thread/start`` that names no environments gets the workspace's
executors, the default first (``environments``); on the way out, approval requests are answered by
the leg (``relay.AppServerLeg``). When either side ends, the other is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from typing import Any

from asgiref.typing import WebSocketConnectEvent

from appgateway import environments, relay, rpc_filter
from appgateway.auth import authenticate_tui
from appgateway.rpc_filter import Frame
from appgateway.thread_environments import ThreadsWithoutEnvironments
from bridge.consumers import GatewayConsumer
from bridge.protocol import CLOSE_SERVICE_RESTART
from bridge.ws_auth import Denial, access_token_group
from codexgw import logcontext

logger = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # the TUI's token was revoked or expired


class TuiProxyConsumer(GatewayConsumer):
    role = "tui"
    workspace_id = ""
    connection_id = ""
    app_server: relay.AppServerClient | None = None
    _threads: ThreadsWithoutEnvironments
    _token_group = ""  # the connections opened with this TUI's token, told when it is revoked
    _expiry: asyncio.Task[None] | None = None

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        self._threads = ThreadsWithoutEnvironments()  # this connection's resumed or forked threads
        identity = await authenticate_tui(self.headers())
        if isinstance(identity, Denial):
            await self.deny(identity)
            return
        self.workspace_id = identity.workspace_id
        # Also the relay's connection id when the app-server lives in another process.
        self.connection_id = uuid.uuid4().hex
        logcontext.bind(workspace_id=self.workspace_id, connection_id=self.connection_id)
        # Accept first: starting an app-server can outlast the server's handshake timeout.
        # Frames the TUI sends meanwhile wait in the consumer's queue, in order.
        await self.accept()
        _live.add(self)
        if identity.token_id:
            self._token_group = access_token_group(identity.token_id)
            await self.channel_layer.group_add(self._token_group, self.channel_name)
        if identity.expires_at is not None:
            self._expiry = asyncio.create_task(self._close_at(identity.expires_at))
        try:
            self.app_server = await relay.attach(self.workspace_id, self.connection_id, tui=self)
        except relay.AppServerUnavailable:
            await self.close_tui(*relay.CLOSE_UNAVAILABLE)
            return
        logger.info("TUI attached", extra={"workspace_id": self.workspace_id, "user_id": identity.user_id})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame: Frame = text_data if text_data is not None else (bytes_data or b"")
        verdict = await relay.off_loop_if_large(rpc_filter.inspect_client_frame, frame)
        if verdict.reply is not None:
            await self.send(text_data=verdict.reply)
        if not verdict.forward:
            logger.info(
                "TUI request refused (%s): %s",
                verdict.refusal,
                verdict.method,
                extra={"workspace_id": self.workspace_id, "method": verdict.method, "refusal": verdict.refusal},
            )
            return
        # A new thread that names no environments gets the workspace's default executor (never
        # codex's local environment, the gateway host); initialize declares experimentalApi so
        # codex accepts that.
        frame = await environments.rewrite_client_frame(self.workspace_id, frame, self._threads)
        if self.app_server is not None:
            await self.app_server.send(frame)

    async def disconnect(self, code: int) -> None:
        _live.discard(self)
        if self._expiry is not None:
            self._expiry.cancel()
        if self._token_group:
            await self.channel_layer.group_discard(self._token_group, self.channel_name)
        if self.app_server is not None:
            await self.app_server.stop()

    # relay.TuiSink

    async def deliver(self, frame: Frame) -> None:
        self._threads.server_frame(frame)
        if isinstance(frame, bytes):
            await self.send(bytes_data=frame)
        else:
            await self.send(text_data=frame)

    async def close_tui(self, code: int, reason: str) -> None:
        await self.close(code=code, reason=reason)

    async def _close_at(self, expires_at: float) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self._close_for_token("token expired")

    async def bridge_revoke(self, event: dict[str, Any]) -> None:
        # The token's group tells every connection opened with it, bridges and TUIs alike.
        await self._close_for_token("token revoked")

    async def _close_for_token(self, reason: str) -> None:
        logger.info("TUI closed: %s", reason, extra={"workspace_id": self.workspace_id})
        await self.close_tui(CLOSE_POLICY, reason)


# This process's TUI connections, for the drain.
_live: weakref.WeakSet[TuiProxyConsumer] = weakref.WeakSet()


async def close_all_tuis() -> int:
    """Close every TUI connection of this process with 1012 (it is draining): the TUI reconnects,
    through the balancer, to another process. Returns how many were closed."""
    tuis = list(_live)
    for tui in tuis:
        await tui.close_tui(CLOSE_SERVICE_RESTART, "gateway restarting")
    return len(tuis)
