"""A connection to another gateway process over the channel layer, one end of it.

``LayerEnd`` is what every such connection has: frames out through a ``LayerLink`` to the other
end's channel (ordered, batched, split above the layer's safe size, a full channel waited out;
frames sent before that channel is known wait, in order), frames in reassembled, and a close
sent after the frames sent before it. A bridge to an executor session in another process uses it
as it is (``endpoint.py``; the session's side is ``session.py``).

``Connection`` adds what an end needs whose other end may die without a goodbye: a channel of its
own that it reads (``run``), ``alive`` sent every ``KEEPALIVE`` seconds, and an end after
``SILENCE_LIMIT`` without hearing anything (``FIRST_CONTACT_LIMIT`` before the first message).
Its messages, the same both ways: ``OPENED`` (the answering end's channel, to the dialling end),
``FRAME``, ``ALIVE``, ``CLOSE``. Frames are text or bytes; bytes travel byte for byte as latin-1
(no base64 growth). The TUI relay is one on each side (``appgateway/relay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from channels.layers import BaseChannelLayer

from bridge.layer_frames import LayerLink, Reassembler, ReceiverStuck, send_with_backpressure
from codexgw.tasks import cancel_and_wait

OPENED: Final = "layer.opened"  # {inbox}
FRAME: Final = "layer.frame"  # {text, [binary], [msg, part, parts]} or {texts}
ALIVE: Final = "layer.alive"
CLOSE: Final = "layer.close"  # {code, reason}

KEEPALIVE = 15.0
SILENCE_LIMIT = 60.0
FIRST_CONTACT_LIMIT = 10.0  # the answering end acknowledges an open at once (its first alive), before any slow work

Frame = str | bytes


class LayerEnd:
    """``on_stuck`` is awaited once if the other end's channel stays full: what was queued is
    lost (``link.discarded``) and later frames go nowhere, so it must end the connection."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        frame_type: str,
        *,
        extra: dict[str, Any] | None = None,
        on_stuck: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.layer = layer
        self.frame_type = frame_type
        self.extra = extra
        self.on_stuck = on_stuck
        self.link: LayerLink | None = None
        self._early: list[Frame] = []
        self._parts = Reassembler()

    async def connect(self, channel: str) -> None:
        """The other end's channel is known: frames go there from now on, the early ones first."""
        link = LayerLink(self.layer, channel, self.frame_type, extra=self.extra, on_stuck=self.on_stuck)
        while self._early:  # a frame sent meanwhile queues behind them
            await self._put(link, self._early.pop(0))
        self.link = link

    async def send(self, frame: Frame) -> None:
        """Queue a frame (waiting while the link's outbox is full)."""
        if self.link is None:
            self._early.append(frame)
        else:
            await self._put(self.link, frame)

    @staticmethod
    async def _put(link: LayerLink, frame: Frame) -> None:
        with contextlib.suppress(ReceiverStuck):  # the link failed: on_stuck ends the connection
            if isinstance(frame, bytes):
                await link.send(frame.decode("latin-1"), binary=True)
            else:
                await link.send(frame)

    def received(self, message: dict[str, Any]) -> list[str]:
        """The whole texts a frame message completes, in order (binary ones as latin-1)."""
        return self._parts.add_all("peer", message)

    def finish(self, final: dict[str, Any], on_final_lost: Callable[[], None] | None = None) -> None:
        """Send ``final`` after the frames queued before it, once the other end's channel is known
        (tried even when the link failed: the other end may be reading again by then)."""
        if self.link is not None:
            self.link.finish(final, on_final_lost)


class Connection(LayerEnd):
    """One end reading its own channel ``inbox``. The answering end connects at once to the
    dialling end's channel and tells it ``inbox`` with ``opened``; the dialling end connects
    when that arrives (in ``run``)."""

    def __init__(self, layer: BaseChannelLayer, inbox: str, on_stuck: Callable[[], Awaitable[None]]) -> None:
        super().__init__(layer, FRAME, on_stuck=on_stuck)
        self.inbox = inbox
        self._keepalive: asyncio.Task[None] | None = None

    async def connect(self, channel: str) -> None:
        self._keepalive = asyncio.create_task(self._keep_alive(channel), name=f"keepalive {channel}")
        await super().connect(channel)

    async def opened(self) -> None:
        assert self.link is not None
        await send_with_backpressure(self.layer, self.link.channel, {"type": OPENED, "inbox": self.inbox})

    def frames(self, message: dict[str, Any]) -> list[Frame]:
        """The whole frames a frame message completes (a batch's frames are text)."""
        texts = self.received(message)
        return [text.encode("latin-1") for text in texts] if message.get("binary") else list(texts)

    async def run(self, deliver: Callable[[Frame], Awaitable[None]]) -> tuple[int, str] | None:
        """Read ``inbox``, handing each frame to ``deliver`` in order, until the other end closes
        (its code and reason) or stays silent (None)."""
        heard = self.link is not None  # the answering end: the dialling end has spoken (open)
        first_contact_by = asyncio.get_running_loop().time() + FIRST_CONTACT_LIMIT
        while True:
            try:
                silence = asyncio.timeout(SILENCE_LIMIT) if heard else asyncio.timeout_at(first_contact_by)
                async with silence:
                    message = await self.layer.receive(self.inbox)
            except TimeoutError:
                return None
            kind = message.get("type")
            # Only this protocol's messages count as contact: an end of an older version answers
            # with messages of its own, and must be given up on after FIRST_CONTACT_LIMIT.
            heard = heard or kind in (FRAME, OPENED, CLOSE, ALIVE)
            if kind == FRAME:
                for frame in self.frames(message):
                    await deliver(frame)
            elif kind == OPENED:
                await self.connect(str(message["inbox"]))
            elif kind == CLOSE:
                return int(message["code"]), str(message.get("reason", ""))

    async def close(self, end: tuple[int, str] | None) -> None:
        """Stop the keepalive and tell the other end ``end`` (code, reason) after the frames sent
        before it; None when the other end closed first or is gone: what is queued is dropped."""
        if self._keepalive is not None:
            await cancel_and_wait({self._keepalive})
        if self.link is None:
            return
        if end is None or self.link.failed:
            self.link.abandon()
        else:
            self.finish({"type": CLOSE, "code": end[0], "reason": end[1]})

    async def _keep_alive(self, channel: str) -> None:
        with contextlib.suppress(ReceiverStuck):
            while True:
                await send_with_backpressure(self.layer, channel, {"type": ALIVE})
                await asyncio.sleep(KEEPALIVE)
