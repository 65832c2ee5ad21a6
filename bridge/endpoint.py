"""One client's virtual exec-server session on one executor, whatever carries the client's frames.

The bridge WebSocket (``bridge.consumers.BridgeConsumer``) and the in-process connection of the
gateway's own tools (``bridge.inproc``) both wrap a ``BridgeEndpoint``: it attaches to the
executor's session (directly when this process holds it, else over the channel layer to the
inbox of the process that does), hands the session's frames to the client through a bounded
``BridgeOutbox``, and ends the bridge on the channel-layer notices addressed to its ``channel``
(``bridge.close``, ``bridge.moved``, ``bridge.revoke``, ``bridge.unbound``). Authorisation comes
first (``authorize``): a refusal carries the HTTP status the caller acts on.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer

from bridge import session as sessions
from bridge import session_events
from bridge.layer_conn import LayerEnd
from bridge.layer_frames import send_with_backpressure
from bridge.outbox import BridgeOutbox
from bridge.protocol import CLOSE_EXECUTOR_LOST, CLOSE_EXECUTOR_UNBOUND, CLOSE_TRY_AGAIN, CLOSE_TURN_REVOKED
from bridge.ws_auth import BridgeGrant, authorize_bridge
from executors.presence import presence_store

SendText = Callable[[str], Awaitable[None]]
CloseWith = Callable[[int, str], Awaitable[None]]


# ``bridge.ws_auth.authorize_bridge`` off the event loop (database and Redis lookups).
authorize = database_sync_to_async(authorize_bridge)


class BridgeEndpoint:
    """``send`` writes one text frame to the client (waiting while it is behind); ``close`` ends
    the client's connection with a WebSocket close code. The wrapper calls ``detach`` once the
    connection has ended, whichever side ended it."""

    def __init__(
        self,
        exe_id: str,
        layer: BaseChannelLayer,
        channel: str,
        send: SendText,
        close: CloseWith,
        *,
        reader: bool = False,
    ) -> None:
        self.exe_id = exe_id
        # ``receive`` is called by the connection's own reader, which may handle a frame in the
        # session's place (bridge/session.py, ``put``); not so for an in-process caller's task.
        self.reader = reader
        self.layer = layer
        self.channel = channel
        self.conn_id = uuid.uuid4().hex
        self._close = close
        # Everything for the client goes through it: paced by the client's reading, bounded.
        self.outbox = self.sending = BridgeOutbox(send, context={"exe_id": exe_id, "connection_id": self.conn_id})
        self.target = ""  # the inbox of the executor session this bridge talks to
        self.local: sessions.ExecutorSession | None = None
        # Frames to a session in another process: ordered, batched while a send is in flight.
        self.remote = LayerEnd(layer, "mux.bridge_frame", extra={"conn": self.conn_id}, on_stuck=self._session_stuck)
        self._groups: list[str] = []
        self._expiry: asyncio.Task[None] | None = None
        self._detached = False

    async def attach(self, grant: BridgeGrant) -> None:
        """Join the groups whose notices end this bridge, then open it on the executor's session."""
        for group in (grant.revocation_group, grant.binding_group, sessions.executor_group(self.exe_id)):
            await self.layer.group_add(group, self.channel)
            self._groups.append(group)
        if grant.expires_at is not None:
            # An access token that expires while its bridge is open ends the bridge then.
            self._expiry = asyncio.create_task(self._close_at(grant.expires_at))
        self.target = grant.holder.channel_name
        if not await self._holder_unchanged():
            return
        self.local = sessions.local_session(self.target)
        if self.local is not None:
            await self.local.put(session_events.BridgeOpen(self.conn_id, self))
            return
        await send_with_backpressure(
            self.layer, self.target, {"type": "mux.bridge_open", "conn": self.conn_id, "reply_to": self.channel}
        )
        await self.remote.connect(self.target)

    async def _holder_unchanged(self) -> bool:
        """The executor may have moved to another process between the presence lookup and
        joining its group (whose move notice this bridge would then have missed)."""
        try:
            holder = await sync_to_async(presence_store().get, thread_sensitive=False)(self.exe_id)
        except Exception:
            holder = None
        if holder is not None and holder.channel_name == self.target:
            return True
        await self._close(CLOSE_EXECUTOR_LOST, "executor moved; reconnect")
        return False

    async def _session_stuck(self) -> None:
        sessions.drop("executor_session_channel_full", exe_id=self.exe_id, connection_id=self.conn_id)
        await self._close(CLOSE_TRY_AGAIN, "")

    async def receive(self, text: str) -> None:
        """A frame from the client."""
        if self.local is not None:
            await self.local.put(session_events.BridgeFrame(self.conn_id, text), here=self.reader)
        elif self.remote.link is not None:  # else not attached: the bridge is closing
            await self.remote.send(text)

    async def detach(self) -> None:
        """The client's connection has ended: leave the session and the groups (once)."""
        if self._detached:
            return
        self._detached = True
        self.outbox.close()
        if self._expiry is not None:
            self._expiry.cancel()
        for group in self._groups:
            await self.layer.group_discard(group, self.channel)
        if self.local is not None:
            await self.local.put(session_events.BridgeClosed(self.conn_id))
        else:
            # After this bridge's queued frames, in order; the link's pump sends it.
            exe_id = self.exe_id
            self.remote.finish(
                {"type": "mux.bridge_closed", "conn": self.conn_id},
                on_final_lost=lambda: sessions.drop("bridge_close_not_delivered", exe_id=exe_id),
            )

    async def on_layer_message(self, message: dict[str, Any]) -> None:
        """A channel-layer message addressed to ``channel``: from the session in another process,
        or a notice to every bridge of a group."""
        kind = message.get("type")
        if kind == "bridge.frame":
            # One text, a part of a split one, or a batch (``texts``), delivered in order.
            for text in self.remote.received(message):
                try:
                    await self.deliver(text)
                except ConnectionError:
                    # Closing: this frame can no longer reach the client.
                    sessions.drop("bridge_gone_before_send", exe_id=self.exe_id, connection_id=self.conn_id)
        elif kind == "bridge.close":
            await self.close_from_gateway(int(message["code"]), str(message.get("reason", "")))
        elif kind == "bridge.moved":
            # Another process took the executor's sessions over: reconnect there and resume.
            if message.get("inbox") != self.target:
                await self._close(CLOSE_EXECUTOR_LOST, "executor moved to another gateway process; reconnect")
        elif kind == "bridge.revoke":
            await self._close(CLOSE_TURN_REVOKED, "turn revoked")
        elif kind == "bridge.unbound":
            await self._close(CLOSE_EXECUTOR_UNBOUND, "executor unbound from the workspace")
        else:
            sessions.drop("unknown_layer_message", exe_id=self.exe_id, detail=str(kind))

    async def _close_at(self, expires_at: float) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self._close(CLOSE_TURN_REVOKED, "token expired")

    # BridgeLink (the multiplexer lives in this process).
    async def deliver(self, text: str) -> None:
        # Waits only while the client's outbox is full, and at most STALL_PATIENCE (bridge/outbox.py).
        if not await self.outbox.put(text):
            # Closing or gone: the session owes its events again (bridge/session.py).
            raise ConnectionError("the bridge connection is closing")

    async def close_from_gateway(self, code: int, reason: str) -> None:
        """The session's close comes after the frames it sent before it (still in the outbox)."""
        self.outbox.finish(functools.partial(self._close, code, reason))
