"""The bridge without a socket, for tools that run inside a gateway process (the SDK).

``connect`` authorises the token exactly as the ``/bridge`` upgrade does (a refusal is the
``BridgeDialError`` a refused upgrade gives, with its HTTP status) and returns a
``BridgeClient`` transport backed by a ``BridgeEndpoint`` in this process: the executor's session
gets the frames directly when this process holds it, else over the channel layer, as for a
WebSocket bridge that landed here. The close codes are the WebSocket's (4002: reconnect and
resume; 1012; 1013 ...). Unlike an upgrade, a dial is not refused while this process drains:
the caller is already here, and the executor's new holder is reached over the channel layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

from channels.layers import BaseChannelLayer, get_channel_layer

from bridge.client import BridgeDialError
from bridge.endpoint import BridgeEndpoint, authorize
from bridge.ws_auth import BridgeGrant, Denial
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# Frames handed over but not yet read by the client; past it the endpoint's outbox waits (its
# pacing by the client's reading, as a full socket buffer does).
UNREAD_FRAMES = 64
NORMAL_CLOSURE = 1000
INTERNAL_ERROR = 1011


async def connect(exe_id: str, token: str, open_timeout: float) -> InProcessConnection:
    """A bridge to ``exe_id`` with the capability (or access) token ``token``."""
    try:
        async with asyncio.timeout(open_timeout):
            grant = await authorize(exe_id, {"authorization": f"Bearer {token}"})
    except TimeoutError:
        raise BridgeDialError(f"bridge authorisation timed out after {open_timeout:g}s") from None
    if isinstance(grant, Denial):
        raise BridgeDialError(f"{grant.message} (HTTP {grant.status})", grant.status)
    layer = get_channel_layer()
    assert layer is not None
    connection = InProcessConnection()
    await connection.open(exe_id, layer, grant)
    return connection


class InProcessConnection:
    """``bridge.client.Transport`` over a ``BridgeEndpoint``: ``send`` hands the endpoint a frame,
    iterating yields the endpoint's frames until the connection closes (frames sent before a
    close from the gateway first), ``close_code``/``close_reason`` say how it ended."""

    def __init__(self) -> None:
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._unread: deque[str] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._endpoint: BridgeEndpoint | None = None
        self._layer_reader: asyncio.Task[None] | None = None
        self._detaching: asyncio.Task[None] | None = None

    async def open(self, exe_id: str, layer: BaseChannelLayer, grant: BridgeGrant) -> None:
        channel = await layer.new_channel()
        self._endpoint = BridgeEndpoint(exe_id, layer, channel, self._from_endpoint, self._closed_by_gateway)
        try:
            await self._endpoint.attach(grant)
        except Exception as error:
            logger.warning("in-process bridge: attach failed", extra={"exe_id": exe_id}, exc_info=True)
            await self.close(INTERNAL_ERROR, "attach failed")
            raise BridgeDialError(f"cannot open the bridge: {error or type(error).__name__}") from None
        if self.close_code is None:  # else closed while attaching (the executor moved: 4002)
            self._layer_reader = asyncio.create_task(self._read_layer(layer, channel), name=f"bridge inbox {exe_id}")

    # --- the client's side ----------------------------------------------------------------------

    async def send(self, message: str) -> None:
        if self.close_code is not None or self._endpoint is None:
            raise ConnectionError("the bridge connection is closed")
        await self._endpoint.receive(message)

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            if self._unread:
                text = self._unread.popleft()
                self._room.set()
                yield text
            elif self.close_code is not None:
                return
            else:
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Close from the client's side (what it has not read is dropped) and wait for the
        endpoint to leave the session; idempotent."""
        if self.close_code is None:
            self._unread.clear()
            self._ended(code, reason)
        if self._detaching is not None:
            await asyncio.shield(self._detaching)

    # --- the endpoint's side --------------------------------------------------------------------

    async def _from_endpoint(self, text: str) -> None:
        while len(self._unread) >= UNREAD_FRAMES and self.close_code is None:
            self._room.clear()
            await self._room.wait()
        if self.close_code is None:  # closed by the client: like a socket, the frame goes nowhere
            self._unread.append(text)
            self._arrived.set()

    async def _closed_by_gateway(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self._ended(code, reason)

    def _ended(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self._arrived.set()
        self._room.set()
        # Its own task: the close may come from one of the endpoint's tasks, which detaching ends.
        self._detaching = asyncio.create_task(self._detach(), name="in-process bridge detach")

    async def _detach(self) -> None:
        if self._layer_reader is not None:
            await cancel_and_wait({self._layer_reader})
        if self._endpoint is not None:
            await self._endpoint.detach()

    async def _read_layer(self, layer: BaseChannelLayer, channel: str) -> None:
        """What the consumer's channel would receive: the session's frames and the notices."""
        assert self._endpoint is not None
        try:
            while True:
                await self._endpoint.on_layer_message(await layer.receive(channel))
        except Exception:
            # Deaf to the session and the notices, the bridge cannot go on (as a failed consumer).
            logger.exception("in-process bridge: its channel failed", extra={"exe_id": self._endpoint.exe_id})
            await self._closed_by_gateway(INTERNAL_ERROR, "bridge channel failed")
