"""How the turn broker's frames reach a workspace's app-server (``appgateway.broker``): a loopback
leg when this process owns the app-server (``LocalLink``), the owner's leg through the TUI relay
otherwise (``RelayedLink``). Each reads what arrives with a task of its own and hands it to the
connection, and tells the connection once when the link has ended."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Protocol

from channels.layers import get_channel_layer

from appgateway import relay
from appgateway.rpc_filter import Frame

logger = logging.getLogger(__name__)


class Receiver(Protocol):
    """What a link reports to: ``broker.Conn``."""

    async def on_frame(self, frame: Frame) -> None: ...

    def lost(self, reason: str) -> None: ...


class Link(Protocol):
    async def send(self, frame: str) -> None: ...

    async def close(self) -> None: ...


class LocalLink:
    """This process owns the app-server: a loopback leg, read by a task of its own."""

    def __init__(self, leg: relay.AppServerLeg, conn: Receiver) -> None:
        self.leg = leg
        self._reader = asyncio.create_task(self._read(conn), name=f"broker leg {leg.workspace_id}")

    async def _read(self, conn: Receiver) -> None:
        end = await self._pump(conn)
        conn.lost(end)

    async def _pump(self, conn: Receiver) -> str:
        try:
            end = await self.leg.pump(conn.on_frame)
        except Exception as exc:
            logger.exception("broker leg failed", extra={"workspace_id": self.leg.workspace_id})
            return f"broker leg failed: {exc}"
        return f"app-server connection closed ({end.code} {end.reason})"

    async def send(self, frame: str) -> None:
        await self.leg.send(frame)

    async def close(self) -> None:
        self._reader.cancel()
        await self.leg.close()


class RelayedLink:
    """Another process owns the app-server: its leg, relayed over the channel layer
    (``relay.RelayClient``; we are its ``TuiSink`` and read our reply channel ourselves)."""

    def __init__(self, conn: Receiver) -> None:
        self.conn = conn
        self.client: relay.RelayClient | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, workspace_id: str, owner_channel: str) -> None:
        layer = get_channel_layer()
        assert layer is not None, "the app gateway needs a channel layer"
        self.client = relay.RelayClient(
            conn=uuid.uuid4().hex,
            reply_to=await layer.new_channel(),
            workspace_id=workspace_id,
            owner_channel=owner_channel,
            tui=self,
        )
        self._reader = asyncio.create_task(self._read(self.client), name=f"broker relay {workspace_id}")
        await self.client.open()

    async def _read(self, client: relay.RelayClient) -> None:
        try:
            while True:
                event = await client.layer.receive(client.reply_to)
                kind = event.get("type")
                if kind == relay.OPENED:
                    await client.on_opened(event)
                elif kind == relay.SERVER_FRAME:
                    await client.on_frame(event)
                elif kind == relay.ALIVE:
                    client.heard()
                elif kind == relay.CLOSE:
                    self.conn.lost(f"app-server connection closed ({event.get('code')} {event.get('reason', '')})")
                    return
        except Exception as exc:
            logger.exception("broker relay failed", extra={"workspace_id": client.workspace_id})
            self.conn.lost(f"relay failed: {exc}")

    async def send(self, frame: str) -> None:
        assert self.client is not None
        await self.client.send(frame)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.client is not None:
            await self.client.stop()

    # relay.TuiSink

    async def deliver(self, frame: Frame) -> None:
        await self.conn.on_frame(frame)

    async def close_tui(self, code: int, reason: str) -> None:
        self.conn.lost(f"relay closed ({code} {reason})")
        if self._reader is not None:
            self._reader.cancel()
