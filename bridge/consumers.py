"""The executor's WebSocket (``/codex-exec/{exe_id}``) and the clients' (``/bridge/{exe_id}``).

Both consumers stay thin: authorisation is ``bridge.ws_auth``, the protocol work is the
multiplexer in ``bridge.session``. Refusals happen before the upgrade, with the HTTP status
the caller acts on (ASGI WebSocket denial response; see ``codexgw/server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from asgiref.typing import WebSocketConnectEvent, WebSocketDisconnectEvent, WebSocketReceiveEvent
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer

from bridge import session as sessions
from bridge.layer_frames import LayerLink, Reassembler, ReceiverStuck, send_with_backpressure
from bridge.outbox import BridgeOutbox
from bridge.protocol import (
    CLOSE_EXECUTOR_LOST,
    CLOSE_EXECUTOR_REPLACED,
    CLOSE_EXECUTOR_UNBOUND,
    CLOSE_TRY_AGAIN,
    CLOSE_TURN_REVOKED,
)
from bridge.ws_auth import Denial, authenticate_executor, authorize_bridge, header_map
from codexgw import logcontext, metrics
from executors import services
from executors.presence import Holder, presence_store

logger = logging.getLogger(__name__)


class GatewayConsumer(AsyncWebsocketConsumer):
    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every handler; the frame pump
        # never touches the database (lookups go through database_sync_to_async, which does
        # its own housekeeping), so skip that per-message cost.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def deny(self, denial: Denial) -> None:
        """Refuse the upgrade with an HTTP status (falls back to 403 where unsupported)."""
        if "websocket.http.response" not in (self.scope.get("extensions") or {}):
            await self.close()
            return
        body = json.dumps({"error": denial.message}).encode()
        start: Any = {
            "type": "websocket.http.response.start",
            "status": denial.status,
            "headers": [(b"content-type", b"application/json")],
        }
        response_body: Any = {"type": "websocket.http.response.body", "body": body}
        await self.base_send(start)
        await self.base_send(response_body)

    @property
    def exe_id(self) -> str:
        return str(self.scope["url_route"]["kwargs"].get("exe_id", ""))

    def headers(self) -> dict[str, str]:
        return header_map(self.scope.get("headers", []))

    # Metrics by role (codexgw.metrics): accepted connections, frames and bytes each way.
    role = "other"
    _counted = False

    async def accept(self, subprotocol: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        await super().accept(subprotocol, headers)
        self._counted = True
        metrics.ws_opened(self.role)

    async def websocket_receive(self, message: WebSocketReceiveEvent) -> None:
        metrics.ws_frame(self.role, "in", message.get("text"), message.get("bytes"))
        await super().websocket_receive(message)

    async def send(  # type: ignore[override]  # as AsyncWebsocketConsumer's own send
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        metrics.ws_frame(self.role, "out", text_data, bytes_data)
        await super().send(text_data, bytes_data, close)

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        if self._counted:
            self._counted = False
            metrics.ws_closed(self.role)
        await super().websocket_disconnect(message)


class ExecutorConsumer(GatewayConsumer):
    """One executor's connection. The gateway is the JSON-RPC client on it: the executor is
    silent until the multiplexer sends ``initialize``."""

    role = "executor"
    connection_id = ""
    session: sessions.ExecutorSession | None = None
    holder: Holder | None = None
    _refresher: asyncio.Task[None] | None = None

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        exe_id, headers = self.exe_id, self.headers()
        logcontext.bind(exe_id=exe_id)
        raw_path = bytes(self.scope.get("raw_path") or self.scope["path"].encode()).decode("latin-1")
        raw_query = bytes(self.scope.get("query_string", b"")).decode("latin-1")
        denial = await database_sync_to_async(authenticate_executor)(exe_id, headers, raw_path, raw_query)
        if denial is None:
            denial = await self._take_over(exe_id, headers)
        if denial is not None:
            await self.deny(denial)
            return
        # Bound after session_for: the session's tasks outlive this connection and log its exe_id only.
        logcontext.bind(connection_id=self.connection_id)
        await self.accept()
        assert self.session is not None
        logger.info("executor connected", extra={"exe_id": exe_id, "connection_id": self.connection_id})
        await self.session.put(sessions.ExecOpen(self))
        self._refresher = asyncio.create_task(self._keep_presence())

    async def _take_over(self, exe_id: str, headers: dict[str, str]) -> Denial | None:
        """Claim presence (the newest connection wins) and tell a previous holder in another
        process to let go."""
        self.connection_id = uuid.uuid4().hex
        try:
            self.session = await sessions.session_for(exe_id)
            self.holder = Holder(channel_name=self.session.inbox, connection_id=self.connection_id, since=time.time())
            previous = await sync_to_async(presence_store().claim, thread_sensitive=False)(exe_id, self.holder)
            client = self.scope.get("client") or ["", 0]
            meta = services.client_meta(headers, str(client[0]))
            await database_sync_to_async(services.record_connected)(exe_id, meta)
            await self.session.announce_takeover()
        except Exception:
            logger.exception("executor connect: dependency unavailable", extra={"exe_id": exe_id})
            return Denial(503, "service unavailable, retry later")
        if previous is not None and previous.channel_name != self.session.inbox:
            try:
                await send_with_backpressure(
                    self.channel_layer,
                    previous.channel_name,
                    {"type": "mux.evict", "connection_id": previous.connection_id},
                )
            except (ChannelFull, ReceiverStuck):
                logger.warning("could not tell the previous holder to let go", extra={"exe_id": exe_id})
        return None

    async def _keep_presence(self) -> None:
        store = presence_store()
        interval = max(1.0, self._presence_ttl() / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                # Puts the entry back if it vanished (a restarted Redis): this connection is live.
                still_holder = await sync_to_async(store.refresh, thread_sensitive=False)(
                    self.exe_id, self.connection_id, self.holder
                )
            except Exception:
                logger.warning("presence refresh failed", extra={"exe_id": self.exe_id}, exc_info=True)
                continue
            if not still_holder:
                logger.info("executor connection superseded", extra={"exe_id": self.exe_id})
                await self.close(code=CLOSE_EXECUTOR_REPLACED)
                return

    @staticmethod
    def _presence_ttl() -> float:
        from django.conf import settings

        return float(settings.CXG_PRESENCE_TTL)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is not None:
            text = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
            await self.session.put(sessions.ExecFrame(self, text))

    async def disconnect(self, code: int) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.session is None or not self.connection_id:
            return
        await self.session.put(sessions.ExecClosed(self))
        try:
            released = await sync_to_async(presence_store().release, thread_sensitive=False)(
                self.exe_id, self.connection_id
            )
            if released:
                await database_sync_to_async(services.record_disconnected)(self.exe_id)
        except Exception:
            logger.warning("executor disconnect bookkeeping failed", extra={"exe_id": self.exe_id}, exc_info=True)
        logger.info("executor disconnected", extra={"exe_id": self.exe_id, "code": code})

    # ExecutorLink
    async def send_to_executor(self, text: str) -> None:
        await self.send(text_data=text)

    async def close_executor(self, code: int) -> None:
        await self.close(code=code)


class BridgeConsumer(GatewayConsumer):
    """A client's virtual exec-server session on one executor, through any gateway process."""

    role = "bridge"
    conn_id = ""
    local: sessions.ExecutorSession | None = None
    inbox = ""
    group = ""
    binding_group = ""
    target = ""  # the inbox of the executor session this bridge talks to
    link: LayerLink | None = None
    outbox: BridgeOutbox | None = None
    _expiry: asyncio.Task[None] | None = None

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        logcontext.bind(exe_id=self.exe_id)
        grant = await database_sync_to_async(authorize_bridge)(self.exe_id, self.headers())
        if isinstance(grant, Denial):
            await self.deny(grant)
            return
        self.conn_id = uuid.uuid4().hex
        logcontext.bind(connection_id=self.conn_id)
        self._parts = Reassembler()
        # Everything for the client goes through it: paced by the client's reading, bounded.
        self.outbox = BridgeOutbox(self._send_text, context={"exe_id": self.exe_id, "connection_id": self.conn_id})
        await self.accept()
        self.group = grant.revocation_group
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.binding_group = grant.binding_group
        await self.channel_layer.group_add(self.binding_group, self.channel_name)
        if grant.expires_at is not None:
            # An access token that expires while its bridge is open ends the bridge then.
            self._expiry = asyncio.create_task(self._close_at(grant.expires_at))
        self.target = grant.holder.channel_name
        await self.channel_layer.group_add(sessions.executor_group(self.exe_id), self.channel_name)
        if not await self._holder_unchanged():
            return
        self.local = sessions.local_session(grant.holder.channel_name)
        if self.local is not None:
            await self.local.put(sessions.BridgeOpen(self.conn_id, None, local=self))
        else:
            self.inbox = grant.holder.channel_name
            await send_with_backpressure(
                self.channel_layer,
                self.inbox,
                {"type": "mux.bridge_open", "conn": self.conn_id, "reply_to": self.channel_name},
            )
            # Frames to the session: ordered, batched while a send is in flight.
            self.link = LayerLink(
                self.channel_layer,
                self.inbox,
                "mux.bridge_frame",
                extra={"conn": self.conn_id},
                on_stuck=self._session_stuck,
            )

    async def _holder_unchanged(self) -> bool:
        """The executor may have moved to another process between the presence lookup and
        joining its group (whose move notice this bridge would then have missed)."""
        try:
            holder = await sync_to_async(presence_store().get, thread_sensitive=False)(self.exe_id)
        except Exception:
            holder = None
        if holder is not None and holder.channel_name == self.target:
            return True
        await self.close(code=CLOSE_EXECUTOR_LOST, reason="executor moved; reconnect")
        return False

    async def _session_stuck(self) -> None:
        sessions.drop("executor_session_channel_full", exe_id=self.exe_id, connection_id=self.conn_id)
        await self.close(code=CLOSE_TRY_AGAIN)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # exec-server accepts JSON in binary frames too; the multiplexer sees text either way.
        text = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        if self.local is not None:
            await self.local.put(sessions.BridgeFrame(self.conn_id, text))
        elif self.link is not None:
            with contextlib.suppress(ReceiverStuck):  # the link's on_stuck closes this bridge with 1013
                await self.link.send(text)

    async def disconnect(self, code: int) -> None:
        if not self.conn_id:
            return
        if self.outbox is not None:
            self.outbox.close()
        if self._expiry is not None:
            self._expiry.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_discard(self.binding_group, self.channel_name)
            await self.channel_layer.group_discard(sessions.executor_group(self.exe_id), self.channel_name)
        if self.local is not None:
            await self.local.put(sessions.BridgeClosed(self.conn_id))
        elif self.link is not None:
            # After this bridge's queued frames, in order; the link's pump sends it.
            exe_id = self.exe_id
            self.link.finish(
                {"type": "mux.bridge_closed", "conn": self.conn_id},
                on_final_lost=lambda: sessions.drop("bridge_close_not_delivered", exe_id=exe_id),
            )

    # Messages from the multiplexer in another process.
    async def bridge_frame(self, event: dict[str, Any]) -> None:
        # One text, a part of a split one, or a batch (``texts``), delivered in order.
        for text in self._parts.add_all("mux", event):
            await self.deliver(text)

    async def bridge_close(self, event: dict[str, Any]) -> None:
        self._close_after_output(int(event["code"]), str(event.get("reason", "")))

    async def bridge_moved(self, event: dict[str, Any]) -> None:
        # Another process took the executor's sessions over: reconnect there and resume.
        if event.get("inbox") != self.target:
            await self.close(code=CLOSE_EXECUTOR_LOST, reason="executor moved to another gateway process; reconnect")

    async def bridge_revoke(self, event: dict[str, Any]) -> None:
        await self.close(code=CLOSE_TURN_REVOKED, reason="turn revoked")

    async def bridge_unbound(self, event: dict[str, Any]) -> None:
        await self.close(code=CLOSE_EXECUTOR_UNBOUND, reason="executor unbound from the workspace")

    async def _close_at(self, expires_at: float) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self.close(code=CLOSE_TURN_REVOKED, reason="token expired")

    # LocalBridge (the multiplexer lives in this process).
    async def deliver(self, text: str) -> None:
        # Waits only while the client's outbox is full, and at most STALL_PATIENCE (bridge/outbox.py).
        assert self.outbox is not None
        if not await self.outbox.put(text):
            # Closing or gone: the session owes its events again (bridge/session.py).
            raise ConnectionError("the bridge connection is closing")

    @property
    def sending(self) -> BridgeOutbox | None:
        return self.outbox

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def close_from_gateway(self, code: int, reason: str) -> None:
        self._close_after_output(code, reason)

    def _close_after_output(self, code: int, reason: str) -> None:
        """The session's close comes after the frames it sent before it (still in the outbox)."""
        assert self.outbox is not None

        async def close() -> None:
            await self.close(code=code, reason=reason)

        self.outbox.finish(close)
