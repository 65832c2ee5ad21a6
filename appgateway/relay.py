"""The app-server leg of a TUI connection, and its relay between gateway processes.

A workspace's ``codex app-server`` runs in the one gateway process that owns its lease
(``appgateway.supervisor``); only that process can reach the child's loopback WebSocket. Each TUI
connection gets its own loopback WebSocket (``AppServerLeg``), opened in the owner:

* TUI on the owner: the consumer holds the leg itself.
* TUI on another process: the consumer (``RelayClient``) sends ``appgw.relay_open`` to the owner's
  process channel; the owner (``RelayedConnection``) opens the leg, answers ``appgw.opened`` with a
  channel of its own for this connection (its inbox), and pumps frames both ways over
  a ``bridge.layer_frames.LayerLink`` each way (frames that queue up while one is on its way go
  together in one message; split and reassembled above the layer's safe size; a full channel
  waited out), so frames stay in order. A close on either side is passed on to the other, after
  the frames sent before it.

Both sides send ``appgw.alive`` every ``KEEPALIVE`` seconds and give up after ``SILENCE_LIMIT``
without hearing anything, so a gateway process that dies without a goodbye does not leave a
TUI attached to nothing or a loopback WebSocket open forever.

The leg is also where every frame is seen in both directions, so it bumps the workspace's
activity clock (``Supervisor.touch``) and answers approval requests (``rpc_filter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from appgateway import process_messages, rpc_filter, supervisor
from appgateway.rpc_filter import Frame
from bridge.layer_frames import LayerLink, Reassembler, ReceiverStuck, send_with_backpressure
from bridge.protocol import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN, MAX_MESSAGE_BYTES
from codexgw import drain
from codexgw.tasks import cancel_and_wait
from codexgw.websocket import SENDABLE_CLOSE_CODES

logger = logging.getLogger(__name__)

CLOSE_UNAVAILABLE: Final = (1011, "subprocess unavailable")
CLOSE_GATEWAY: Final = (1000, "gateway closing")
DIAL_TIMEOUT = 10.0
KEEPALIVE = 15.0
SILENCE_LIMIT = 60.0
FIRST_CONTACT_LIMIT = 10.0  # the owner acknowledges an open at once, before spawning anything
WATCH_TICK = 2.5
# Frames larger than this are inspected on a worker thread: parsing megabytes of JSON would
# stall every other connection of the process.
INLINE_INSPECT_LIMIT = 256 * 1024

# On the owner's process channel.
RELAY_OPEN = "appgw.relay_open"  # {conn, reply_to, workspace_id}
RELAY_CANCEL = "appgw.relay_cancel"  # {conn}: the TUI left before the relay opened
# To the owner's per-connection inbox.
CLIENT_FRAME = "appgw.client_frame"  # {text, [binary], [msg, part, parts]} or {texts}
CLIENT_CLOSED = "appgw.client_closed"
# To the TUI consumer's channel (handled by TuiProxyConsumer.appgw_*).
OPENED = "appgw.opened"  # {inbox}
SERVER_FRAME = "appgw.frame"  # {text, [binary], [msg, part, parts]} or {texts}
CLOSE = "appgw.close"  # {code, reason}
ALIVE = "appgw.alive"  # both ways


T = TypeVar("T")


class AppServerUnavailable(Exception):
    """The workspace's app-server could not be started or dialled."""


async def off_loop_if_large(check: Callable[[Frame], T], frame: Frame) -> T:
    if len(frame) > INLINE_INSPECT_LIMIT:
        return await asyncio.to_thread(check, frame)
    return check(frame)


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    assert layer is not None, "the app gateway needs a channel layer"
    return layer


def _to_layer(frame: Frame) -> tuple[str, bool]:
    """Frames travel as text; binary ones byte for byte as latin-1 (no base64 growth)."""
    if isinstance(frame, bytes):
        return frame.decode("latin-1"), True
    return frame, False


def _from_layer(sender: str, parts: Reassembler, event: dict[str, Any]) -> list[Frame]:
    """The whole frames a layer message completes (a batch's frames are text)."""
    texts = parts.add_all(sender, event)
    return [text.encode("latin-1") for text in texts] if event.get("binary") else list(texts)


# --- the loopback leg ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LegEnd:
    """How the app-server side ended: the close to give the TUI."""

    code: int
    reason: str


class AppServerLeg:
    """One loopback WebSocket to a workspace's app-server, in the process that owns it."""

    def __init__(self, workspace_id: str, ws: ClientConnection) -> None:
        self.workspace_id = workspace_id
        self.ws = ws

    @classmethod
    async def open(cls, workspace_id: str) -> AppServerLeg:
        """Ensure the app-server (spawning it, taking the lease) and dial it. Raises
        ``supervisor.OwnedElsewhere`` when another process owns the workspace and
        ``AppServerUnavailable`` when it cannot be had."""
        try:
            handle = await supervisor.get_supervisor().ensure_app_server(workspace_id)
        except supervisor.OwnedElsewhere:
            raise
        except Exception as exc:
            logger.warning("app-server unavailable", extra={"workspace_id": workspace_id}, exc_info=True)
            raise AppServerUnavailable(str(exc)) from exc
        try:
            ws = await ws_connect(
                handle.ws_url,
                compression=None,  # codex closes connections that offer permessage-deflate
                max_size=MAX_MESSAGE_BYTES,
                ping_interval=None,  # loopback: nothing idles it out, and a dead child resets the socket
                open_timeout=DIAL_TIMEOUT,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            logger.warning("app-server dial failed", extra={"workspace_id": workspace_id, "error": str(exc)})
            raise AppServerUnavailable(f"dial failed: {exc}") from exc
        return cls(workspace_id, ws)

    async def send(self, frame: Frame) -> None:
        """Forward a client frame verbatim. A closed leg drops it: ``pump`` reports the end."""
        supervisor.get_supervisor().touch(self.workspace_id)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame)

    async def pump(self, deliver: Callable[[Frame], Awaitable[None]]) -> LegEnd:
        """Read the app-server until it closes: answer approval requests (per
        ``CXG_APPROVAL_MODE``), ``deliver`` every other frame verbatim, in order."""
        mode = rpc_filter.approval_mode(settings.CXG_APPROVAL_MODE)
        try:
            async for frame in self.ws:
                supervisor.get_supervisor().touch(self.workspace_id)
                answer = await off_loop_if_large(lambda f: rpc_filter.approval_answer(f, mode), frame)
                if answer is not None:
                    await self.ws.send(answer)
                elif rpc_filter.false_sandbox_warning(frame):
                    logger.info("not passed on: codex's bubblewrap warning", extra={"workspace_id": self.workspace_id})
                else:
                    await deliver(frame)
        except ConnectionClosed:
            pass
        received = self.ws.protocol.close_rcvd
        if received is None or received.code not in SENDABLE_CLOSE_CODES:
            return LegEnd(*CLOSE_UNAVAILABLE)
        return LegEnd(received.code, received.reason)

    async def close(self) -> None:
        await self.ws.close(*CLOSE_GATEWAY)


# --- the owner's side of a relay --------------------------------------------------------------


class RelayedConnection:
    """A TUI attached through another gateway process, served here (where the app-server is)."""

    def __init__(self, conn: str, reply_to: str, workspace_id: str) -> None:
        self.conn = conn
        self.reply_to = reply_to
        self.workspace_id = workspace_id
        self.layer = _layer()
        self.leg: AppServerLeg | None = None
        self.link = LayerLink(self.layer, reply_to, SERVER_FRAME, on_stuck=self._stuck)

    async def run(self) -> None:
        keepalive = asyncio.create_task(self._keepalive(), name=f"relay keepalive {self.conn}")
        end: LegEnd | None = None
        try:
            try:
                self.leg = await AppServerLeg.open(self.workspace_id)
            except (AppServerUnavailable, supervisor.OwnedElsewhere):
                # OwnedElsewhere: the lease moved since the TUI's process looked it up.
                end = LegEnd(*CLOSE_UNAVAILABLE)
                return
            inbox = await self.layer.new_channel()
            await self._tell(OPENED, inbox=inbox)
            end = await self._pump_both_ways(inbox, self.leg)
            if end is not None and drain.is_draining():
                end = LegEnd(CLOSE_SERVICE_RESTART, "gateway restarting")  # the app-server stopped for the drain
        except ReceiverStuck:
            logger.warning("relay: the TUI's process stopped reading", extra={"workspace_id": self.workspace_id})
        except Exception:
            logger.exception("relay failed", extra={"workspace_id": self.workspace_id})
            end = LegEnd(*CLOSE_UNAVAILABLE)
        finally:
            keepalive.cancel()
            # The app-server side ended, never began or failed: so does the TUI, after the frames
            # before. Else the TUI's side ended, stopped reading, or the relay was cancelled.
            if end is not None and not self.link.failed:
                self.link.finish({"type": CLOSE, "code": end.code, "reason": end.reason})
            else:
                self.link.abandon()
            if self.leg is not None:
                await self.leg.close()

    async def _stuck(self) -> None:
        """The TUI's process stopped reading: end the leg, which ends the relay."""
        if self.leg is not None:
            await self.leg.close()

    async def _pump_both_ways(self, inbox: str, leg: AppServerLeg) -> LegEnd | None:
        """Until either side ends; the app-server side's end, or None when the TUI's ended."""
        from_tui = asyncio.create_task(self._from_tui(inbox, leg), name=f"relay from tui {self.conn}")
        to_tui = asyncio.create_task(leg.pump(self._deliver), name=f"relay to tui {self.conn}")
        try:
            done, _ = await asyncio.wait({from_tui, to_tui}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait({from_tui, to_tui})
        if from_tui in done:
            from_tui.result()  # re-raises its failure, if any
            return None
        return to_tui.result()

    async def _tell(self, message_type: str, **fields: Any) -> None:
        await send_with_backpressure(self.layer, self.reply_to, {"type": message_type, **fields})

    async def _keepalive(self) -> None:
        with contextlib.suppress(ReceiverStuck):
            while True:
                await self._tell(ALIVE)
                await asyncio.sleep(KEEPALIVE)

    async def _deliver(self, frame: Frame) -> None:
        await self.link.send(*_to_layer(frame))

    async def _from_tui(self, inbox: str, leg: AppServerLeg) -> None:
        parts = Reassembler()
        while True:
            try:
                async with asyncio.timeout(SILENCE_LIMIT):
                    event = await self.layer.receive(inbox)
            except TimeoutError:
                logger.warning("relay: the TUI's process went silent", extra={"workspace_id": self.workspace_id})
                return
            if event["type"] == CLIENT_FRAME:
                for frame in _from_layer(self.conn, parts, event):
                    await leg.send(frame)
            elif event["type"] == CLIENT_CLOSED:
                return


_relays: dict[str, asyncio.Task[None]] = {}


async def _on_relay_open(message: dict[str, Any]) -> None:
    conn = str(message["conn"])
    relayed = RelayedConnection(conn, str(message["reply_to"]), str(message["workspace_id"]))
    task = asyncio.create_task(relayed.run(), name=f"relay {conn}")
    _relays[conn] = task
    task.add_done_callback(lambda _: _relays.pop(conn, None))


async def _on_relay_cancel(message: dict[str, Any]) -> None:
    task = _relays.get(str(message["conn"]))
    if task is not None:
        task.cancel()


def install() -> None:
    """Open relays for the TUIs of other processes (``AppGatewayConfig.ready()``). Their requests
    arrive on the supervisor's per-process channel, read by one task per process that starts with
    the process's first lease (the channel is named in the lease)."""
    process_messages.on_message(RELAY_OPEN, _on_relay_open)
    process_messages.on_message(RELAY_CANCEL, _on_relay_cancel)


# --- the TUI's side of a relay ----------------------------------------------------------------


class TuiSink(Protocol):
    async def deliver(self, frame: Frame) -> None: ...

    async def close_tui(self, code: int, reason: str) -> None: ...


class RelayClient:
    """The TUI's end of a relay: a consumer in a process that does not own the workspace."""

    def __init__(self, conn: str, reply_to: str, workspace_id: str, owner_channel: str, tui: TuiSink) -> None:
        self.conn = conn
        self.reply_to = reply_to
        self.workspace_id = workspace_id
        self.owner_channel = owner_channel
        self.tui = tui
        self.layer = _layer()
        self.link: LayerLink | None = None  # to the owner's inbox (``link.channel``), once it is known
        self._pending: list[Frame] = []  # client frames sent before then
        self._parts = Reassembler()
        self._heard: float | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await send_with_backpressure(
            self.layer,
            self.owner_channel,
            {"type": RELAY_OPEN, "conn": self.conn, "reply_to": self.reply_to, "workspace_id": self.workspace_id},
        )
        self._watchdog = asyncio.create_task(self._watch(), name=f"relay watchdog {self.conn}")

    async def send(self, frame: Frame) -> None:
        if self.link is None:
            self._pending.append(frame)
            return
        with contextlib.suppress(ReceiverStuck):  # the link failed: _stuck closes the TUI
            await self.link.send(*_to_layer(frame))

    async def _stuck(self) -> None:
        logger.warning("relay: the owner stopped reading", extra={"workspace_id": self.workspace_id})
        await self.tui.close_tui(CLOSE_TRY_AGAIN, "app gateway owner not keeping up")

    async def stop(self) -> None:
        """The TUI left: tell the owner to close its leg (after the frames sent before)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.link is not None:
            if not self.link.failed:  # else the owner's silence limit closes its side
                self.link.finish({"type": CLIENT_CLOSED})
            return
        with contextlib.suppress(ReceiverStuck):
            await send_with_backpressure(self.layer, self.owner_channel, {"type": RELAY_CANCEL, "conn": self.conn})

    # Messages from the owner, dispatched by the consumer in arrival order.

    async def on_opened(self, event: dict[str, Any]) -> None:
        self.heard()
        self.link = LayerLink(self.layer, str(event["inbox"]), CLIENT_FRAME, on_stuck=self._stuck)
        pending, self._pending = self._pending, []
        for frame in pending:
            await self.send(frame)

    async def on_frame(self, event: dict[str, Any]) -> None:
        self.heard()
        for frame in _from_layer("owner", self._parts, event):
            await self.tui.deliver(frame)

    def heard(self) -> None:
        self._heard = time.monotonic()

    async def _watch(self) -> None:
        started = last_alive = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_TICK)
            now = time.monotonic()
            last, limit = (started, FIRST_CONTACT_LIMIT) if self._heard is None else (self._heard, SILENCE_LIMIT)
            if now - last > limit:
                logger.warning("relay: the owning process went silent", extra={"workspace_id": self.workspace_id})
                await self.tui.close_tui(*CLOSE_UNAVAILABLE)
                return
            if self.link is not None and now - last_alive >= KEEPALIVE:
                last_alive = now
                with contextlib.suppress(ReceiverStuck):
                    await send_with_backpressure(self.layer, self.link.channel, {"type": ALIVE})
