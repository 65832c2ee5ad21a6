"""Text frames over the channel layer: split above the layer's safe size, reassembled on the
other side; a full channel is waited out (backpressure), never dropped silently.

``LayerLink`` is one sender's ordered link to one channel: frames produced while a layer send is
in flight are batched into the next message (``{"texts": [...]}``), so a burst of small frames
costs one channel-layer round trip, not one each. A lone frame goes out at once (no delay)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from bridge.protocol import LAYER_CHUNK_CHARS
from codexgw import metrics

logger = logging.getLogger(__name__)

_message_ids = itertools.count(1)
# How long a sender waits for a full channel to drain before giving up on its receiver.
FULL_CHANNEL_PATIENCE = 30.0


class ReceiverStuck(Exception):
    """The receiving channel stayed full for the sender's patience (FULL_CHANNEL_PATIENCE)."""


async def send_with_backpressure(
    layer: BaseChannelLayer, channel: str, message: dict[str, Any], patience: float = FULL_CHANNEL_PATIENCE
) -> None:
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            started = time.perf_counter()
            await layer.send(channel, message)
            metrics.LAYER_SEND_SECONDS.observe(time.perf_counter() - started)
            return
        except ChannelFull:
            metrics.LAYER_FULL.inc()
            if time.monotonic() >= deadline:
                raise ReceiverStuck(channel) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


async def send_text(
    layer: BaseChannelLayer,
    channel: str,
    message_type: str,
    text: str,
    patience: float = FULL_CHANNEL_PATIENCE,
    **extra: Any,
) -> None:
    if len(text) <= LAYER_CHUNK_CHARS:
        await send_with_backpressure(layer, channel, {"type": message_type, "text": text, **extra}, patience)
        return
    message_id = next(_message_ids)
    parts = [text[i : i + LAYER_CHUNK_CHARS] for i in range(0, len(text), LAYER_CHUNK_CHARS)]
    for index, part in enumerate(parts):
        await send_with_backpressure(
            layer,
            channel,
            {"type": message_type, "text": part, "msg": message_id, "part": index, "parts": len(parts), **extra},
            patience,
        )


class Reassembler:
    """Collects the parts of split messages; returns the whole text when the last part arrives."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, int], list[str | None]] = {}

    def add_all(self, sender: str, message: dict[str, Any]) -> list[str]:
        """The whole texts a message completes, in order: a batch (``texts``), one text, or the
        text whose last part it is (parts may come in any order)."""
        if "texts" in message:
            return [str(text) for text in message["texts"]]
        if "parts" not in message:
            return [str(message["text"])]
        key = (sender, int(message["msg"]))
        parts = self._partial.setdefault(key, [None] * int(message["parts"]))
        parts[int(message["part"])] = str(message["text"])
        if any(part is None for part in parts):
            return []
        del self._partial[key]
        return ["".join(part for part in parts if part is not None)]

    def forget(self, sender: str) -> int:
        """Drop the unfinished messages of a departed sender; returns how many were lost."""
        keys = [key for key in self._partial if key[0] == sender]
        for key in keys:
            del self._partial[key]
        return len(keys)


# Bound of one link's outbox (queued and in-flight text, in characters): a sender past it waits.
LINK_OUTBOX_CHARS = 4 * LAYER_CHUNK_CHARS
# Pump tasks are referenced here until they end (the event loop only keeps weak references).
_pumps: set[asyncio.Task[None]] = set()


async def links_drained() -> None:
    """Wait until every link's pump in this process has sent what it holds (orderly shutdown)."""
    while _pumps:
        await asyncio.gather(*list(_pumps), return_exceptions=True)


class LayerLink:
    """One sender's ordered link to one channel, batching frames produced while a send is in flight.

    ``send`` queues a text and returns; a pump task sends it (alone when nothing else is queued,
    else batched with what queued up behind the previous send, up to ``LAYER_CHUNK_CHARS``;
    a longer text goes alone, split into parts). A text marked ``binary`` (a binary WebSocket
    frame as latin-1, for the TUI relay) goes alone too, with ``binary: True`` in its message.
    The outbox is bounded (``limit`` characters, or one text of any size when empty): past it
    ``send`` waits — backpressure, never loss. If the receiver stays full for ``patience``, the
    link fails: queued texts are discarded (and kept in ``discarded``, so the sender can owe them
    again), waiting and later ``send`` calls raise ``ReceiverStuck`` and ``on_stuck`` is awaited
    once. ``finish`` sends a last message (a close) after everything queued before it.
    ``queued``/``sent`` count texts, so a sender can tell when everything it queued up to a point
    has left the process."""

    def __init__(
        self,
        layer: BaseChannelLayer,
        channel: str,
        message_type: str,
        *,
        extra: dict[str, Any] | None = None,
        on_stuck: Callable[[], Awaitable[None]] | None = None,
        limit: int = LINK_OUTBOX_CHARS,
        patience: float = FULL_CHANNEL_PATIENCE,
    ) -> None:
        self.layer = layer
        self.channel = channel
        self.message_type = message_type
        self.extra = dict(extra or {})
        self.on_stuck = on_stuck
        self.limit = limit
        self.patience = patience
        self.failed = False
        self.discarded: list[str] = []  # what it held when it failed: never sent
        self.closed = False
        self._abandoned = False
        self._outbox: deque[tuple[str, bool]] = deque()  # (text, binary)
        self._pending = 0  # characters queued or in flight
        self.queued = 0  # texts ever queued
        self.sent = 0  # texts ever handed to the channel layer (the rest were queued, or discarded)
        self._final: dict[str, Any] | None = None
        self._on_final_lost: Callable[[], None] | None = None
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def settled(self) -> bool:
        """Every text queued so far has left this process (is in the channel layer)."""
        return self.sent >= self.queued

    @property
    def given_up(self) -> bool:
        """Failed or abandoned: what it still held was discarded, not sent."""
        return self.failed or self._abandoned

    async def send(self, text: str, binary: bool = False) -> None:
        """Queue ``text`` (waiting while the outbox is full). Raises ``ReceiverStuck`` if the link
        failed; a text sent after ``finish``/``abandon`` is ignored."""
        while True:
            if self.failed:
                raise ReceiverStuck(self.channel)
            if self.closed:
                return
            if self._pending == 0 or self._pending + len(text) <= self.limit:
                break
            self._room.clear()
            await self._room.wait()
        self._outbox.append((text, binary))
        self._pending += len(text)
        self.queued += 1
        self._kick()

    def finish(self, final: dict[str, Any] | None = None, on_final_lost: Callable[[], None] | None = None) -> None:
        """No more texts: send what is queued, then ``final`` (if any), then stop. Does not wait."""
        if self.closed:
            return
        self.closed = True
        self._final = final
        self._on_final_lost = on_final_lost
        self._room.set()
        self._kick()

    def abandon(self) -> list[str]:
        """The receiver is gone: discard what is queued (an in-flight send completes). Returns
        the texts discarded."""
        lost = [text for text, _ in self._outbox]
        self._pending -= sum(len(text) for text in lost)
        self._outbox.clear()
        self.closed = True
        self._abandoned = True
        self._final = None
        self._room.set()
        return lost

    async def drained(self) -> None:
        """Wait until the pump has nothing left to send (for tests and orderly shutdown)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._task is None and (self._outbox or self._final is not None):
            task = asyncio.create_task(self._pump(), name=f"layer link {self.channel}")
            self._task = task
            _pumps.add(task)
            task.add_done_callback(_pumps.discard)

    def _take_batch(self) -> tuple[list[str], bool]:
        """The next texts to send in one message, and whether it is a lone binary one."""
        text, binary = self._outbox.popleft()
        batch, size = [text], len(text)
        while (
            not binary
            and self._outbox
            and not self._outbox[0][1]
            and size + len(self._outbox[0][0]) <= LAYER_CHUNK_CHARS
        ):
            size += len(self._outbox[0][0])
            batch.append(self._outbox.popleft()[0])
        return batch, binary

    async def _pump(self) -> None:
        try:
            while self._outbox:
                batch, binary = self._take_batch()
                try:
                    if len(batch) == 1:
                        extra = {**self.extra, "binary": True} if binary else self.extra
                        await send_text(self.layer, self.channel, self.message_type, batch[0], self.patience, **extra)
                    else:
                        await send_with_backpressure(
                            self.layer,
                            self.channel,
                            {"type": self.message_type, "texts": batch, **self.extra},
                            self.patience,
                        )
                except ReceiverStuck:
                    await self._fail(batch)
                    break
                else:
                    self.sent += len(batch)
                finally:
                    self._pending -= sum(len(text) for text in batch)
                    self._room.set()
            final, self._final = self._final, None
            if final is not None:
                try:
                    await send_with_backpressure(self.layer, self.channel, final, self.patience)
                except ReceiverStuck:
                    if self._on_final_lost is not None:
                        self._on_final_lost()
        finally:
            self._task = None
        # Between the last check above and here nothing awaited, so nothing queued is left behind.

    async def _fail(self, batch: list[str]) -> None:
        self.failed = True
        self.discarded = [*batch, *(text for text, _ in self._outbox)]
        self._pending -= sum(len(text) for text, _ in self._outbox)
        self._outbox.clear()
        self._room.set()
        logger.warning("layer link gave up on a full channel", extra={"channel": self.channel})
        if self.on_stuck is not None and not self._abandoned:
            try:
                await self.on_stuck()
            except Exception:
                logger.exception("layer link: on_stuck failed", extra={"channel": self.channel})
