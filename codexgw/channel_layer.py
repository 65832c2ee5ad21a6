"""The channel layer: one Redis inbox per process, one Redis command per hop.

Consumers keep Channels' layer API (``new_channel``, ``send``, ``receive``, groups, ``flush``).
Underneath, instead of channels_redis (four Redis round trips to send a message and four to
receive one, and a receive buffer that drops the oldest message when full):

* Every channel is process-specific: ``new_channel`` names it ``<prefix>.<inbox>!<id>``, where
  ``<inbox>`` is the process's inbox, a Redis list. ``send`` is one script call that pushes onto
  the receiver's inbox; sends issued while others are on the wire go together in one pipeline.
* While a ``receive`` waits, a reader task pops the inbox in batches (``BLMPOP``; ``BLPOP`` on
  Redis before 7.0) and hands each message to its channel's local queue (codexgw/layer_inbox.py).
  One event loop receives at a time (as with channels_redis); what one loop had queued and not
  handed out when it ends goes back to the inbox for the next.
* Capacity is per channel: a counter in Redis of messages (and bytes) sent and not yet handed out by
  ``receive``. The send script refuses past ``capacity`` (``ChannelFull``: the sender waits and
  retries); the reader gives the credit back in batches, a little after ``receive`` took the
  messages. A slow consumer slows its senders; nothing is dropped to make room.
* Messages for a channel nobody has received from for ``expiry`` seconds (its consumer is gone)
  are dropped and counted (``codexgw_channel_layer_expired_total``). An inbox nobody pops (its
  process died) expires ``expiry`` seconds after its last message.
* A Redis outage: the reader waits it out; ``send`` and ``group_send`` retry for
  ``outage_patience`` seconds, then raise ``ChannelFull``, which every sender already treats as
  "wait, then give up on the receiver"; group memberships of this process are added again once
  Redis answers. A message inside Redis when it restarted is gone with it (docs/reliability.md).

With ``direct`` on, messages between processes go over a TCP connection instead
(codexgw/layer_direct.py), Redis holding each listener's address and taking what cannot go
directly; capacity, ``ChannelFull``, expiry and order are kept. Off, only the Redis path is used.

Only process-specific channels exist here: a channel name without ``!`` is refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import types
import weakref
from typing import Any

import msgpack
import redis.asyncio
import redis.exceptions
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from codexgw import layer_wire
from codexgw.layer_direct import DirectPath, Sessions
from codexgw.layer_inbox import OUTAGE_ERRORS, RETRY_FIRST, RETRY_MAX, Inbox
from codexgw.layer_pipe import SendPipe
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

BYTE_CAPACITY = 4 << 20  # bytes a channel may hold (sent, not yet received)
# How long a send watches a full channel for room before raising ChannelFull, and how often.
FULL_WAIT = 0.1
FULL_POLL_FIRST = 0.001
FULL_POLL_MAX = 0.01

LoopState = tuple[Inbox, SendPipe, DirectPath | None]


class RedisInboxChannelLayer(BaseChannelLayer):
    extensions = ["groups", "flush"]

    def __init__(
        self,
        url: str,
        prefix: str = "layer:",
        expiry: int = 60,
        group_expiry: int = 86400,
        capacity: int = 5000,
        byte_capacity: int = BYTE_CAPACITY,
        outage_patience: float = 30.0,
        socket_timeout: float = 30.0,
        socket_connect_timeout: float = 5.0,
        direct: bool = False,
        direct_host: str = "127.0.0.1",
        direct_port: int = 0,
        direct_advertise: str = "",
        direct_secret: str = "",
        direct_ttl: int = 30,
    ) -> None:
        super().__init__(expiry=expiry, capacity=capacity)
        self.url = url
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.byte_capacity = byte_capacity
        self.outage_patience = outage_patience
        self._socket_timeouts = (socket_timeout, socket_connect_timeout)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = weakref.WeakKeyDictionary()
        self._memberships: dict[str, set[str]] = {}  # group -> this process's channels in it
        self._restoring: asyncio.Task[None] | None = None
        self.outages = 0
        # The process's inbox; every event loop that receives reads it, one at a time.
        self.inbox_name = secrets.token_hex(8)
        if direct and not direct_secret:
            raise ValueError("the direct path needs a secret (direct_secret)")
        self.direct = direct
        self.direct_config: dict[str, Any] = {
            "host": direct_host,
            "port": direct_port,
            "advertise": direct_advertise,
            "ttl": direct_ttl,
        }
        self._direct_key = layer_wire.derive_key(direct_secret) if direct else b""
        self.sessions = Sessions()  # the direct path's record of what each sender's frames got

    # --- names and state ---------------------------------------------------------------------

    def _state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            timeout, connect_timeout = self._socket_timeouts
            client = redis.asyncio.Redis.from_url(
                self.url, decode_responses=False, socket_timeout=timeout, socket_connect_timeout=connect_timeout
            )
            inbox = Inbox(self.inbox_name, client, self._key, self.expiry, self._lost, self.sessions.duplicate)
            direct = DirectPath(self, inbox, self._direct_key) if self.direct else None
            state = self._loops[loop] = (inbox, SendPipe(client), direct)
            self._close_with(loop)
        return state

    def _close_with(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the loop's Redis client and tasks when the loop closes (a loop made for one
        ``async_to_sync`` call, a test's loop), as their connections belong to it."""
        original = loop.close

        def close(this: asyncio.AbstractEventLoop) -> None:
            state = self._loops.pop(this, None)
            if state is not None and not this.is_closed():
                this.run_until_complete(self._shut(*state))
            this.close = original  # type: ignore[method-assign]
            original()

        loop.close = types.MethodType(close, loop)  # type: ignore[method-assign]

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _inbox_of(self, channel: str) -> str:
        self.require_valid_channel_name(channel)
        head, bang, _ = channel.partition("!")
        if not bang:
            raise TypeError(f"only process-specific channels (from new_channel) are supported: {channel!r}")
        return head.rpartition(".")[2]

    def _inbox_key_of(self, channel: str) -> str:
        return self._key("inbox", self._inbox_of(channel))

    def _client(self) -> redis.asyncio.Redis:
        return self._state()[1].client

    async def new_channel(self, prefix: str = "specific") -> str:
        direct = self._state()[2]
        if direct is not None and not direct.listened:  # before the name is out: senders find us
            await direct.listen()
        return f"{prefix}.{self.inbox_name}!{secrets.token_hex(12)}"

    # --- sending and receiving ---------------------------------------------------------------

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Push ``message`` onto its receiver's inbox. A full channel is watched for room a little
        while (``_try_send``) before ``ChannelFull`` is raised."""
        assert isinstance(message, dict), "message is not a dict"
        payload = channel.encode() + b"\n" + msgpack.packb(message, use_bin_type=True)
        direct = self._state()[2]
        if await self._try_send(direct, channel, payload, again=False):
            return
        # The wait starts at the first "full": a slow first answer (a loaded Redis, an outage
        # ridden out) must not use it up.
        deadline = time.monotonic() + FULL_WAIT
        delay = FULL_POLL_FIRST
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, FULL_POLL_MAX)
            if await self._try_send(direct, channel, payload, again=True):
                return
        raise ChannelFull(channel)

    async def _try_send(self, direct: DirectPath | None, channel: str, payload: bytes, *, again: bool) -> bool:
        """One attempt: True if sent, False if the channel is full. Asking again is cheap on the
        direct path (the message again); on the Redis path a cheap read (not the message again)
        comes first."""
        if direct is not None:
            return await direct.send(self._inbox_of(channel), channel, payload)
        if again and not await self._retrying("send", lambda: self._has_room(channel, len(payload))):
            return False
        return await self.push_redis(channel, payload)

    async def push_redis(self, channel: str, payload: bytes) -> bool:
        """The Redis path of one message (the direct path's fallback): True, or False if full."""
        return bool(await self._retrying("send", lambda: self._push(channel, payload)))

    async def _push(self, channel: str, payload: bytes) -> bool:
        keys = [self._inbox_key_of(channel), self._key("credit", channel)]
        limits = [self.get_capacity(channel), self.byte_capacity, int(self.expiry * 1000)]
        return bool(await self._state()[1].call([*keys, payload, *limits]))

    async def _has_room(self, channel: str, size: int) -> bool:
        """``SEND_SCRIPT``'s rule (codexgw/layer_pipe.py: empty, or under both capacities with this
        message), read without sending the message: keep the two alike."""
        held, held_bytes = await self._client().hmget(self._key("credit", channel), ["n", "b"])
        messages, size_held = int(held or 0), int(held_bytes or 0)
        return messages == 0 or (messages < self.get_capacity(channel) and size_held + size <= self.byte_capacity)

    async def receive(self, channel: str) -> dict[str, Any]:
        inbox, _, direct = self._state()
        if self._inbox_key_of(channel) != inbox.list_key:
            raise RuntimeError(f"{channel!r} is not a channel of this process's inbox")
        loop = asyncio.get_running_loop()
        if any(state[0].receiving for other_loop, state in self._loops.items() if other_loop is not loop):
            raise RuntimeError("two event loops are trying to receive() on one channel layer at once")
        if direct is not None and not direct.listened:
            await direct.listen()
        return await inbox.receive(channel)

    # --- groups ------------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._memberships.setdefault(group, set()).add(channel)
        await self._retrying("group_add", lambda: self._add_member(group, channel))

    async def _add_member(self, group: str, channel: str) -> None:
        pipe = self._client().pipeline(transaction=False)
        pipe.zadd(self._key("group", group), {channel: time.time()})
        pipe.expire(self._key("group", group), self.group_expiry)
        await pipe.execute()

    async def group_discard(self, group: str, channel: str) -> None:
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        channels = self._memberships.get(group)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._memberships[group]
        await self._retrying("group_discard", lambda: self._client().zrem(self._key("group", group), channel))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        self.require_valid_group_name(group)
        members = await self._retrying("group_send", lambda: self._members(group))
        results = await asyncio.gather(*(self.send(member, message) for member in members), return_exceptions=True)
        full = sum(isinstance(result, ChannelFull) for result in results)
        if full:
            logger.warning("channel layer: %d of %d channels full in group %s", full, len(members), group)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ChannelFull):
                raise result

    async def _members(self, group: str) -> list[str]:
        key = self._key("group", group)
        pipe = self._client().pipeline(transaction=False)
        pipe.zremrangebyscore(key, 0, time.time() - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        return [member.decode() for member in members]

    # --- outages -----------------------------------------------------------------------------

    def _lost(self, operation: str, error: BaseException) -> None:
        """An operation failed for want of Redis: note it once and restore groups when it is back."""
        if self._restoring is None or self._restoring.done():
            self.outages += 1
            logger.warning("channel layer: Redis unavailable (%s): %s; retrying", operation, error)
            self._restoring = asyncio.create_task(self._restore_groups(), name="channel layer restore")

    async def _restore_groups(self) -> None:
        """Once Redis answers again, add this process's memberships back (a restarted Redis lost
        them; adding an existing member again only refreshes it)."""
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            try:
                await self._client().ping()
                for group, channels in list(self._memberships.items()):
                    for channel in list(channels):
                        await self._add_member(group, channel)
            except OUTAGE_ERRORS:
                continue
            logger.info("channel layer: Redis is back; group memberships restored")
            return

    async def _retrying(self, operation: str, call: Any) -> Any:
        deadline = time.monotonic() + self.outage_patience
        delay = RETRY_FIRST
        while True:
            try:
                return await call()
            except OUTAGE_ERRORS as error:
                self._lost(operation, error)
                if time.monotonic() >= deadline:
                    raise ChannelFull(f"Redis unavailable for {self.outage_patience:.0f}s") from error
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    # --- flush -------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every key under the prefix and end this loop's inbox (tests)."""
        client = self._client()
        async for key in client.scan_iter(match=self.prefix + "*", count=1000):
            await client.delete(key)
        self._memberships.clear()
        await self._shut(*self._loops.pop(asyncio.get_running_loop()))

    @staticmethod
    async def _shut(inbox: Inbox, pipe: SendPipe, direct: DirectPath | None) -> None:
        if direct is not None:
            await direct.shut()
        await inbox.shut()
        if pipe.flusher is not None:
            await cancel_and_wait([pipe.flusher])
        await inbox.client.aclose()
