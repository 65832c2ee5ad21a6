"""The receiving side of the channel layer (codexgw/channel_layer.py): the process's inbox, as
one event loop reads it.

While a ``receive`` waits, a reader task pops the inbox (a Redis list) in batches and puts each
message on its channel's local queue; ``receive`` takes from there. What is still queued when
the loop ends goes back to the head of the inbox, in order, for the next loop that receives (a
loop made for one ``async_to_sync`` call). The credit of what was taken (messages and bytes, per
channel) goes back to Redis in batches: ``CREDIT_DELAY`` after the first, or at once when
``CREDIT_AT_ONCE`` bytes are owed, so a stream is not held up. What waits for a channel nobody
has received from for ``expiry`` seconds is dropped, counted and logged (its consumer is gone).

Messages that came over the direct path (codexgw/layer_direct.py) join the same queues through
``offer``, which applies the channel's capacity here (their credit is this process's count, given
back as ``receive`` hands them out); a payload the Redis path brought that a sender had first sent
directly is dropped if it arrived directly after all (``duplicate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import msgpack
import redis.asyncio
import redis.exceptions

from codexgw import metrics
from codexgw.layer_wire import untag
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError)
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
READ_BATCH = 512  # messages one pop takes at most
READ_BLOCK_SECONDS = 5
CREDIT_DELAY = 0.05
CREDIT_AT_ONCE = 1 << 20

# KEYS: credits (hashes: n messages, b bytes). ARGV: messages and bytes to give back, in pairs.
_RELEASE = """
for i, key in ipairs(KEYS) do
  local n = redis.call('HINCRBY', key, 'n', -tonumber(ARGV[2 * i - 1]))
  redis.call('HINCRBY', key, 'b', -tonumber(ARGV[2 * i]))
  if n <= 0 then redis.call('DEL', key) end
end
return 0
"""


class Inbox:
    def __init__(
        self,
        name: str,
        client: redis.asyncio.Redis,
        key: Callable[..., str],
        expiry: float,
        on_outage: Callable[[str, BaseException], None],
        duplicate: Callable[[bytes], bool] = lambda payload: False,
    ) -> None:
        self.name = name
        self.client = client
        self._key = key
        self.list_key = key("inbox", name)
        self.expiry = expiry
        self._on_outage = on_outage
        self._duplicate = duplicate
        # Encoded messages by channel, each with whether it came directly (credit held here).
        self._queues: dict[str, asyncio.Queue[tuple[bytes, bool]]] = {}
        self._direct_held: dict[str, list[int]] = {}  # channel -> [messages, bytes] held here
        self._waiting: Counter[str] = Counter()  # receive calls waiting, by channel
        self._last_receive: dict[str, float] = {}  # monotonic, by channel
        self._owed_messages: Counter[str] = Counter()
        self._owed_bytes: Counter[str] = Counter()
        self._credit_now = asyncio.Event()
        self._release_script = client.register_script(_RELEASE)  # reloads itself after NOSCRIPT
        self._use_blmpop = True
        self._next_sweep = 0.0
        self.reader: asyncio.Task[None] | None = None
        self.crediting: asyncio.Task[None] | None = None

    @property
    def receiving(self) -> bool:
        return bool(self._waiting)

    async def receive(self, channel: str) -> dict[str, Any]:
        queue = self._queue(channel)
        self._waiting[channel] += 1
        if self.reader is None or self.reader.done():
            self.reader = asyncio.create_task(self._read(), name="channel layer inbox")
        try:
            payload, direct = await queue.get()
        finally:
            self._waiting[channel] -= 1
            if not self._waiting[channel]:
                del self._waiting[channel]  # so an empty Counter means nobody waits
            self._last_receive[channel] = time.monotonic()
            if queue.empty() and channel not in self._waiting:
                self._forget(channel)
        self._give_back(channel, payload, direct)
        message: dict[str, Any] = msgpack.unpackb(
            memoryview(payload)[payload.index(b"\n", _body(payload)) + 1 :], raw=False
        )
        return message

    def offer(self, channel: str, payload: bytes, capacity: int, byte_capacity: int) -> bool:
        """Queue a message that came directly, if its channel has room by the rule of the Redis
        path's send script (a message alone in its channel goes in whatever its size)."""
        held = self._direct_held.setdefault(channel, [0, 0])
        if held[0] and (held[0] + 1 > capacity or held[1] + len(payload) > byte_capacity):
            return False
        held[0] += 1
        held[1] += len(payload)
        self._queue(channel).put_nowait((payload, True))
        self._sweep()
        return True

    def _queue(self, channel: str) -> asyncio.Queue[tuple[bytes, bool]]:
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = asyncio.Queue()
            self._last_receive.setdefault(channel, time.monotonic())
        return queue

    def _forget(self, channel: str) -> None:
        self._queues.pop(channel, None)
        self._last_receive.pop(channel, None)
        self._waiting.pop(channel, None)

    @staticmethod
    def channel_of(payload: bytes) -> str:
        """The channel an encoded message is for: ``<channel>\n<msgpack message>`` (a channel
        name has no newline), after the tag of one moved from the direct path."""
        start = _body(payload)
        return payload[start : payload.index(b"\n", start)].decode()

    # --- the reader ------------------------------------------------------------------------

    async def _read(self) -> None:
        """Pop while someone waits (a pop in flight is never cancelled but at the loop's end)."""
        delay = RETRY_FIRST
        while self._waiting:
            try:
                payloads = await self._pop()
            except OUTAGE_ERRORS as error:
                self._on_outage("receive", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            for payload in payloads:
                if payload.startswith(b"\x00") and self._duplicate(payload):
                    self._give_back(self.channel_of(payload), payload, False)  # charged by the send
                    continue
                self._queue(self.channel_of(payload)).put_nowait((payload, False))
            self._sweep()

    async def _pop(self) -> list[bytes]:
        if self._use_blmpop:
            try:
                popped = await self.client.blmpop(
                    READ_BLOCK_SECONDS, 1, self.list_key, direction="LEFT", count=READ_BATCH
                )
            except redis.exceptions.ResponseError as error:
                if "unknown command" not in str(error).lower():
                    raise
                self._use_blmpop = False  # Redis before 7.0
            else:
                return cast(list[bytes], popped[1]) if popped else []
        one = await self.client.blpop([self.list_key], READ_BLOCK_SECONDS)
        return [cast(bytes, one[1])] if one else []

    def _sweep(self) -> None:
        """Drop what waits for channels nobody has received from for ``expiry`` seconds."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.expiry / 4
        for channel, queue in list(self._queues.items()):
            if self._waiting[channel] or now - self._last_receive.get(channel, now) < self.expiry:
                continue
            self._forget(channel)
            expired = _drain(queue)
            if expired:
                metrics.LAYER_EXPIRED.inc(len(expired))
                logger.warning("channel layer: dropped messages nobody received", extra={"channel": channel})
                for payload, direct in expired:
                    self._give_back(channel, payload, direct)

    # --- credit ----------------------------------------------------------------------------

    def _give_back(self, channel: str, payload: bytes, direct: bool) -> None:
        """The credit of one message taken or dropped: this process's count if it came directly,
        else owed to Redis, where it goes back in batches."""
        if direct:
            held = self._direct_held.get(channel)
            if held is not None:
                held[0] -= 1
                held[1] -= len(payload)
                if held[0] <= 0:
                    del self._direct_held[channel]
            return
        self._owed_messages[channel] += 1
        self._owed_bytes[channel] += len(payload)
        if self._owed_bytes[channel] >= CREDIT_AT_ONCE:
            self._credit_now.set()
        if self.crediting is None:
            self.crediting = asyncio.create_task(self._give_credit(), name="channel layer credit")

    async def _give_credit(self) -> None:
        delay = CREDIT_DELAY
        try:
            while self._owed_messages:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._credit_now.wait(), delay)
                self._credit_now.clear()
                owed, self._owed_messages = self._owed_messages, Counter()
                owed_bytes, self._owed_bytes = self._owed_bytes, Counter()
                try:
                    await self._release(owed, owed_bytes)
                    delay = CREDIT_DELAY
                except OUTAGE_ERRORS as error:
                    self._on_outage("credit", error)
                    self._owed_messages.update(owed)
                    self._owed_bytes.update(owed_bytes)
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            self.crediting = None

    async def _release(self, owed: Counter[str], owed_bytes: Counter[str]) -> None:
        keys = [self._key("credit", channel) for channel in owed]
        amounts = [amount for channel in owed for amount in (owed[channel], owed_bytes[channel])]
        await self._release_script(keys, amounts)

    async def shut(self) -> None:
        """End the loop's part: stop reading, give back credit owed, and put what is still
        queued back at the head of the inbox, in order (its credit is still held; what came
        directly is charged to the Redis credit, as the next loop gives it back there)."""
        if self.reader is not None:
            await cancel_and_wait([self.reader])
        if self.crediting is not None:  # after the reader: it may have owed credit as it ended
            await cancel_and_wait([self.crediting])
        if self._owed_messages:
            with contextlib.suppress(*OUTAGE_ERRORS):
                await self._release(self._owed_messages, self._owed_bytes)
        left = [item for queue in self._queues.values() for item in _drain(queue)]
        if left:
            with contextlib.suppress(*OUTAGE_ERRORS):
                pipe = self.client.pipeline(transaction=False)
                for payload, direct in left:
                    if direct:
                        credit = self._key("credit", self.channel_of(payload))
                        pipe.hincrby(credit, "n", 1)
                        pipe.hincrby(credit, "b", len(payload))
                        pipe.pexpire(credit, int(self.expiry * 1000))
                pipe.lpush(self.list_key, *reversed([payload for payload, _ in left]))
                await pipe.execute()
        self._queues.clear()
        self._direct_held.clear()


def _drain(queue: asyncio.Queue[tuple[bytes, bool]]) -> list[tuple[bytes, bool]]:
    return [queue.get_nowait() for _ in range(queue.qsize())]


def _body(payload: bytes) -> int:
    """Where the ``<channel>\n<msgpack>`` part of a payload starts (after a tag, if any)."""
    if not payload.startswith(b"\x00"):
        return 0
    tagged = untag(payload)
    return tagged[2] if tagged else 0
