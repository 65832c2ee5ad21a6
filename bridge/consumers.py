"""The executor's WebSocket (``/codex-exec/{exe_id}``) and the clients' (``/bridge/{exe_id}``).

Both consumers stay thin: authorisation is ``bridge.ws_auth``, the protocol work is the
multiplexer in ``bridge.session``, a client's side of it ``bridge.endpoint``. Refusals happen
before the upgrade, with the HTTP status the caller acts on (ASGI WebSocket denial response; see
``codexgw/server.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, cast

from asgiref.sync import sync_to_async
from asgiref.typing import (
    WebSocketConnectEvent,
    WebSocketDisconnectEvent,
    WebSocketReceiveEvent,
    WebSocketSendEvent,
)
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from bridge import session as sessions
from bridge import session_events
from bridge.endpoint import BridgeEndpoint, authorize
from bridge.layer_frames import ReceiverStuck, send_with_backpressure
from bridge.protocol import CLOSE_EXECUTOR_REPLACED
from bridge.ws_auth import Denial, authenticate_executor, header_map
from codexgw import logcontext, metrics
from codexgw.tasks import cancel_and_wait
from executors import services
from executors.presence import Holder, presence_store

logger = logging.getLogger(__name__)


class GatewayConsumer(AsyncWebsocketConsumer):
    # Whether the consumer has a channel of its own (for the channel layer's messages to it).
    listens = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__`` without its cost per frame (a new task and an
        ``asyncio.wait`` around every message, measured at a quarter of a bridge's CPU): the
        socket is read in this task, the channel in a second one, and one message is handled at
        a time, as Channels does."""
        self.scope = scope
        self.base_send = send
        layer = get_channel_layer(self.channel_layer_alias)
        assert layer is not None, "the gateway's consumers need a channel layer"
        self.channel_layer = layer
        one_at_a_time = asyncio.Lock()
        listener: asyncio.Task[None] | None = None
        if self.listens:
            self.channel_name = await layer.new_channel()
            reader = asyncio.current_task()
            assert reader is not None
            listener = asyncio.create_task(self._listen(one_at_a_time, reader))
        try:
            while True:
                message = await receive()
                if listener is None:
                    await self.dispatch(message)  # the only handler: nothing to take turns with
                    continue
                async with one_at_a_time:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            if listener is not None:
                await cancel_and_wait([listener])
                failure = None if listener.cancelled() else listener.exception()
                if failure is not None:
                    raise failure

    async def _listen(self, one_at_a_time: asyncio.Lock, reader: asyncio.Task[Any]) -> None:
        assert self.channel_layer is not None
        while True:
            message = await self.channel_layer.receive(self.channel_name)
            async with one_at_a_time:
                try:
                    await self.dispatch(message)
                except Exception:
                    # A handler's error on the channel's side ends the connection, as under
                    # Channels: the reader is cancelled before it can take the turn and start
                    # the next frame's handler.
                    reader.cancel()
                    raise

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
        if text_data is not None and not close:
            # A frame straight to the server: Channels' two send layers only build this message.
            # No "bytes" key (ASGI: missing is None), which strict servers and test clients want.
            await self.base_send(cast(WebSocketSendEvent, {"type": "websocket.send", "text": text_data}))
            return
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
    listens = False  # the session's inbox is the executor's channel; this connection has none
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
        await self.session.put(session_events.ExecOpen(self))
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
        interval = max(1.0, float(settings.CXG_PRESENCE_TTL) / 3)
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

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is not None:
            text = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
            await self.session.put(session_events.ExecFrame(self, text), here=True)

    async def disconnect(self, code: int) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.session is None or not self.connection_id:
            return
        await self.session.put(session_events.ExecClosed(self))
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
    """A client's virtual exec-server session on one executor, through any gateway process: a
    ``BridgeEndpoint`` whose frames are this WebSocket's and whose channel is this consumer's."""

    role = "bridge"
    endpoint: BridgeEndpoint | None = None

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        logcontext.bind(exe_id=self.exe_id)
        grant = await authorize(self.exe_id, self.headers())
        if isinstance(grant, Denial):
            await self.deny(grant)
            return
        self.endpoint = BridgeEndpoint(
            self.exe_id, self.channel_layer, self.channel_name, self.send, self.close, reader=True
        )
        logcontext.bind(connection_id=self.endpoint.conn_id)
        await self.accept()
        await self.endpoint.attach(grant)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channel-layer messages to this bridge (the session's frames, notices) are the endpoint's.
        if message["type"].startswith("bridge."):
            if self.endpoint is not None:
                await self.endpoint.on_layer_message(message)
            return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # exec-server accepts JSON in binary frames too; the multiplexer sees text either way.
        text = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        if self.endpoint is not None:
            await self.endpoint.receive(text)

    async def disconnect(self, code: int) -> None:
        if self.endpoint is not None:
            await self.endpoint.detach()
