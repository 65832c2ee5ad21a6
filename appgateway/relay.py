"""The app-server leg of a TUI connection, and its relay between gateway processes.

A workspace's ``codex app-server`` runs in the one gateway process that owns its lease
(``appgateway.supervisor``); only that process can reach the child's loopback WebSocket. Each TUI
connection gets its own loopback WebSocket (``AppServerLeg``), opened in the owner:

* TUI on the owner: the consumer holds the leg itself.
* TUI on another process: the consumer (``RelayClient``) sends ``appgw.relay_open`` to the owner's
  process channel, naming a channel of its own; the owner (``RelayedConnection``) opens the leg
  and answers with a channel of its own for this connection. From then on each side is one end
  of a ``bridge.layer_conn.Connection``: frames both ways in order, a close passed on after the
  frames sent before it, and a keepalive both ways, so a gateway process that dies without a
  goodbye does not leave a TUI attached to nothing or a loopback WebSocket open forever.

The leg is also where every frame is seen in both directions, so it bumps the workspace's
activity clock (``Supervisor.touch``) and answers approval requests (``rpc_filter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, Protocol, TypeVar

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from appgateway import process_messages, rpc_filter, supervisor
from appgateway.rpc_filter import Frame
from bridge.layer_conn import Connection
from bridge.layer_frames import ReceiverStuck, send_with_backpressure
from bridge.protocol import CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN, MAX_MESSAGE_BYTES
from codexgw import drain
from codexgw.tasks import cancel_and_wait
from codexgw.websocket import SENDABLE_CLOSE_CODES

logger = logging.getLogger(__name__)

Close = tuple[int, str]  # how a side ended: the WebSocket close (code, reason) to pass on
CLOSE_UNAVAILABLE: Final = (1011, "subprocess unavailable")
CLOSE_GATEWAY: Final = (1000, "gateway closing")
DIAL_TIMEOUT = 10.0
# Frames larger than this are inspected on a worker thread: parsing megabytes of JSON would
# stall every other connection of the process.
INLINE_INSPECT_LIMIT = 256 * 1024

# On the owner's process channel.
RELAY_OPEN = "appgw.relay_open"  # {conn, reply_to, workspace_id}
RELAY_CANCEL = "appgw.relay_cancel"  # {conn}: the TUI left before the relay opened

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


# --- the loopback leg ---------------------------------------------------------------------------


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

    async def pump(self, deliver: Callable[[Frame], Awaitable[None]]) -> Close:
        """Read the app-server until it closes: answer approval requests (per
        ``CXG_APPROVAL_MODE``), ``deliver`` every other frame verbatim, in order. Returns the
        close to give the TUI."""
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
            return CLOSE_UNAVAILABLE
        return received.code, received.reason

    async def close(self) -> None:
        await self.ws.close(*CLOSE_GATEWAY)


# --- a client of the app-server in this process (``attach``, at the end, picks it or a relay) ----


class TuiSink(Protocol):
    """Where a client's frames from the app-server go: the TUI's consumer, or the turn broker."""

    async def deliver(self, frame: Frame) -> None: ...

    async def close_tui(self, code: int, reason: str) -> None: ...


async def _read_to_end(read: Callable[[], Awaitable[Close | None]], tui: TuiSink, workspace_id: str, what: str) -> None:
    """A client's reader (``what``: the leg or the relay): tell ``tui`` once how the app-server
    side ended, when ``read()`` returns (None: the owning process went silent) or fails. Called
    here, in the task: a task cancelled before its first step leaves no coroutine unawaited."""
    try:
        end = await read()
    except Exception:
        logger.exception("%s failed", what, extra={"workspace_id": workspace_id})
        end = CLOSE_UNAVAILABLE
    if end is None:
        logger.warning("relay: the owning process went silent", extra={"workspace_id": workspace_id})
        end = CLOSE_UNAVAILABLE
    await tui.close_tui(*end)


class LocalClient:
    """This process owns the app-server: a leg, read by a task of its own."""

    def __init__(self, leg: AppServerLeg, tui: TuiSink) -> None:
        self.leg = leg
        reading = _read_to_end(partial(leg.pump, tui.deliver), tui, leg.workspace_id, "app-server leg")
        self._reader = asyncio.create_task(reading, name=f"app-server leg {leg.workspace_id}")

    async def send(self, frame: Frame) -> None:
        await self.leg.send(frame)

    async def stop(self) -> None:
        if self._reader is not asyncio.current_task():
            await cancel_and_wait({self._reader})
        await self.leg.close()


# --- the owner's side of a relay --------------------------------------------------------------


class RelayedConnection:
    """A TUI attached through another gateway process, served here (where the app-server is)."""

    def __init__(self, conn: str, reply_to: str, workspace_id: str) -> None:
        self.conn = conn
        self.reply_to = reply_to
        self.workspace_id = workspace_id
        self.leg: AppServerLeg | None = None

    async def run(self) -> None:
        layer = _layer()
        tui = Connection(layer, await layer.new_channel(), on_stuck=self._stuck)
        await tui.connect(self.reply_to)  # its first ``alive`` acknowledges the open, before any spawn
        end: Close | None = None
        try:
            try:
                self.leg = await AppServerLeg.open(self.workspace_id)
            except (AppServerUnavailable, supervisor.OwnedElsewhere):
                # OwnedElsewhere: the lease moved since the TUI's process looked it up.
                end = CLOSE_UNAVAILABLE
                return
            await tui.opened()
            end = await self._pump_both_ways(tui, self.leg)
            if end is not None and drain.is_draining():
                end = (CLOSE_SERVICE_RESTART, "gateway restarting")  # the app-server stopped for the drain
        except ReceiverStuck:
            logger.warning("relay: the TUI's process stopped reading", extra={"workspace_id": self.workspace_id})
        except Exception:
            logger.exception("relay failed", extra={"workspace_id": self.workspace_id})
            end = CLOSE_UNAVAILABLE
        finally:
            # The app-server side ended, never began or failed: so does the TUI, after the frames
            # before. Else the TUI's side ended, stopped reading, or the relay was cancelled.
            await tui.close(end)
            if self.leg is not None:
                await self.leg.close()

    async def _stuck(self) -> None:
        """The TUI's process stopped reading: end the leg, which ends the relay."""
        logger.warning("relay: the TUI's process stopped reading", extra={"workspace_id": self.workspace_id})
        if self.leg is not None:
            await self.leg.close()

    async def _pump_both_ways(self, tui: Connection, leg: AppServerLeg) -> Close | None:
        """Until either side ends; the app-server side's end, or None when the TUI's ended."""
        from_tui = asyncio.create_task(tui.run(leg.send), name=f"relay from tui {self.conn}")
        to_tui = asyncio.create_task(leg.pump(tui.send), name=f"relay to tui {self.conn}")
        try:
            done, _ = await asyncio.wait({from_tui, to_tui}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait({from_tui, to_tui})
        if from_tui in done:
            if from_tui.result() is None:  # re-raises its failure, if any
                logger.warning("relay: the TUI's process went silent", extra={"workspace_id": self.workspace_id})
            return None
        return to_tui.result()


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


# --- the TUI's side of a relay, and ``attach`` --------------------------------------------------


class RelayClient:
    """The TUI's end of a relay, in a process that does not own the workspace: what arrives on
    its channel goes to ``tui``, read by a task of its own."""

    def __init__(self, conn: str, workspace_id: str, owner_channel: str, tui: TuiSink) -> None:
        self.conn = conn
        self.workspace_id = workspace_id
        self.owner_channel = owner_channel
        self.tui = tui
        self.layer = _layer()
        self.owner: Connection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        owner = self.owner = Connection(self.layer, await self.layer.new_channel(), on_stuck=self._stuck)
        await send_with_backpressure(
            self.layer,
            self.owner_channel,
            {"type": RELAY_OPEN, "conn": self.conn, "reply_to": owner.inbox, "workspace_id": self.workspace_id},
        )
        reading = _read_to_end(partial(owner.run, self.tui.deliver), self.tui, self.workspace_id, "relay")
        self._reader = asyncio.create_task(reading, name=f"relay reader {self.conn}")

    async def send(self, frame: Frame) -> None:
        assert self.owner is not None, "send after open"
        await self.owner.send(frame)  # held until the owner has answered

    async def _stuck(self) -> None:
        logger.warning("relay: the owner stopped reading", extra={"workspace_id": self.workspace_id})
        await self.tui.close_tui(CLOSE_TRY_AGAIN, "app gateway owner not keeping up")

    async def stop(self) -> None:
        """The TUI left: tell the owner to close its leg (after the frames sent before)."""
        if self._reader is not None and self._reader is not asyncio.current_task():
            await cancel_and_wait({self._reader})
        if self.owner is None:
            return
        answered = self.owner.link is not None
        # Also stops the keepalive, which runs from the owner's answer on, while the frames held
        # until then are still going out. A failed link sends nothing: the owner's silence limit
        # ends it.
        await self.owner.close(CLOSE_GATEWAY)
        if answered:
            return
        with contextlib.suppress(ReceiverStuck):
            await send_with_backpressure(self.layer, self.owner_channel, {"type": RELAY_CANCEL, "conn": self.conn})


AppServerClient = LocalClient | RelayClient


async def attach(workspace_id: str, conn: str, tui: TuiSink) -> AppServerClient:
    """A client of the workspace's app-server that hands its frames to ``tui`` and tells it once
    how the app-server side ended: the leg itself when this process owns the app-server, else a
    relay to the process that does. Raises ``AppServerUnavailable``."""
    try:
        return LocalClient(await AppServerLeg.open(workspace_id), tui)
    except supervisor.OwnedElsewhere as elsewhere:
        client = RelayClient(conn, workspace_id, elsewhere.lease.channel_name, tui)
        await client.open()
        logger.info("app-server relayed", extra={"workspace_id": workspace_id, "owner": elsewhere.lease.process_id})
        return client
