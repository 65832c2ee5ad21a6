"""The channel layer's direct path: messages between gateway processes over one TCP connection
per (sending event loop, receiving process), Redis kept for addresses and as the fallback.

* The event loop that receives (codexgw/layer_inbox.py) listens (``DirectPath.listen``) and
  registers ``addr:<inbox> -> host:port`` in Redis with a TTL it refreshes. A sender looks the
  address up (cached), dials, and authenticates both ways (codexgw/layer_wire.py); a listener
  that turns out to be another process (a port reused after a restart) is not used.
* Capacity is the receiver's: every DATA frame is answered OK (queued, ``Inbox.offer``) or FULL
  (the channel holds ``capacity`` messages or ``byte_capacity`` bytes; nothing queued). ``send``
  awaits that answer, as it awaits the Redis script's, so a full channel slows only its own
  senders and the caller's ``ChannelFull`` logic is the same on both paths.
* Exactly once, in order: frames carry a sequence number per sender session; the receiver keeps,
  per session, the highest sequence number it handled and which were refused, so a frame sent
  again after a broken connection gets its first answer and is not queued twice. The sending
  side (dialling again, sending again, moving to Redis) is codexgw/layer_peer.py.
* If the receiver cannot be reached (no address, dial refused or timed out, wrong process), the
  unanswered frames go to its Redis inbox, in order and tagged with session and sequence so the
  receiver drops one it had already queued. A receiver that is gone is then as on the Redis
  path: its inbox expires. Counted in ``codexgw_channel_layer_direct_fallback_total``.
* A channel never moves from Redis back to the direct path (``sticky``): a message on the direct
  path could overtake one still in the Redis inbox. It may move from direct to Redis (above), as
  what was answered is already queued at the receiver and the rest goes first, in order.
* A send to a channel of the sending loop's own inbox is queued at once, no socket.

The listener belongs to the event loop that calls ``new_channel`` or ``receive`` (as the Inbox
does); the last loop to listen holds the process's address. In the gateway that is the server's
loop. A short-lived loop that listens (``async_to_sync``) takes the address over while it lives
and removes it when it ends; until the server's loop registers again (``ttl / 3``), senders that
must dial use Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, Protocol

from codexgw import layer_wire as wire
from codexgw import metrics
from codexgw.layer_inbox import OUTAGE_ERRORS, Inbox
from codexgw.layer_peer import Peer
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

STICKY_KEEP = 600.0
SESSION_KEEP = 600.0
HANDSHAKE_TIMEOUT = 5.0

# KEYS: the address key. ARGV: this listener's address. Deletes it only if it is still ours.
_UNREGISTER = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Sessions:
    """Per process: what each sender session's frames were answered, so a frame that comes again
    (a resend after a broken connection, or a copy through Redis) is not queued twice."""

    def __init__(self) -> None:
        self._seen: dict[bytes, _Seen] = {}

    def open(self, session: bytes) -> _Seen:
        now = time.monotonic()
        # Forgotten only once unused (no connection, no frame) for SESSION_KEEP: a record dropped
        # while its session lives would let a frame sent again after a broken connection in twice.
        for old in [
            s for s, seen in list(self._seen.items()) if not seen.connections and now - seen.used > SESSION_KEEP
        ]:
            del self._seen[old]
        seen = self._seen.get(session)
        if seen is None:
            seen = self._seen[session] = _Seen()
        seen.used = now
        return seen

    def duplicate(self, payload: bytes) -> bool:
        """A tagged payload from Redis: was it queued directly already?"""
        tagged = wire.untag(payload)
        if tagged is None:
            return False
        session, seq, _ = tagged
        seen = self._seen.get(session)
        return seen is not None and seq <= seen.last and seq not in seen.refused


class _Seen:
    def __init__(self) -> None:
        self.last = 0
        self.refused: set[int] = set()
        self.used = time.monotonic()
        self.connections = 0  # authenticated connections of this session open now


class Layer(Protocol):
    """What the direct path uses of its channel layer (``channel_layer.RedisInboxChannelLayer``)."""

    inbox_name: str
    byte_capacity: int
    direct_config: dict[str, Any]
    sessions: Sessions

    def _key(self, *parts: str) -> str: ...

    def get_capacity(self, channel: str) -> int: ...

    async def push_redis(self, channel: str, payload: bytes) -> bool: ...


class DirectPath:
    """One event loop's direct path: its listener, if it receives, and its links to peers."""

    def __init__(self, layer: Layer, inbox: Inbox, key: bytes) -> None:
        self.layer = layer
        self.inbox = inbox
        self.key = key
        self.address = ""
        self._server: asyncio.Server | None = None
        self._accepted: set[_Accepted] = set()
        self._listening: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._peers: dict[str, Peer] = {}
        self._addresses: dict[str, str] = {}
        self.sticky: dict[str, float] = {}  # channel -> when it last went through Redis

    # --- receiving ----------------------------------------------------------------------------

    @property
    def listened(self) -> bool:
        return self._listening is not None and self._listening.done()

    async def listen(self) -> None:
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="channel layer listen")
        await asyncio.shield(self._listening)

    async def _listen(self) -> None:
        config = self.layer.direct_config
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Accepted(self), config["host"], config["port"]
            )
        except OSError as error:  # e.g. a fixed port another loop holds: this loop stays on Redis
            logger.warning("channel layer: cannot listen for direct messages: %s", error)
            return
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{config['advertise'] or config['host']}:{port}"
        with contextlib.suppress(*OUTAGE_ERRORS):
            await self._register()
        if self._refresher is not None:
            self._refresher.cancel()
        self._refresher = asyncio.create_task(self._refresh(), name="channel layer address")

    async def _register(self) -> None:
        ttl = self.layer.direct_config["ttl"]
        await self.inbox.client.set(self.layer._key("addr", self.layer.inbox_name), self.address, ex=ttl)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.layer.direct_config["ttl"] / 3)
            with contextlib.suppress(*OUTAGE_ERRORS):
                await self._register()

    def accept(self, seen: _Seen, seq: int, low: int, payload: bytes) -> int:
        if seq <= seen.last:
            return wire.FULL if seq in seen.refused else wire.OK
        seen.last = seq
        if seen.refused and min(seen.refused) < low:
            seen.refused = {refused for refused in seen.refused if refused >= low}
        channel = Inbox.channel_of(payload)
        if self.inbox.offer(channel, payload, self.layer.get_capacity(channel), self.layer.byte_capacity):
            return wire.OK
        seen.refused.add(seq)
        return wire.FULL

    # --- sending ------------------------------------------------------------------------------

    async def send(self, inbox: str, channel: str, payload: bytes) -> bool:
        """Queue ``payload`` at the receiver: True, or False if its channel is full."""
        peer = self._peers.get(inbox)
        if channel in self.sticky:
            if peer is not None:  # behind what its peer may still be moving to Redis
                return await peer.to_redis(channel, payload)
            self.went_to_redis(channel)
            return await self.layer.push_redis(channel, payload)
        if inbox == self.layer.inbox_name and self._server is not None:
            channel_capacity = self.layer.get_capacity(channel)
            return self.inbox.offer(channel, payload, channel_capacity, self.layer.byte_capacity)
        if peer is None:
            if len(self._peers) >= 64:  # forget idle links to processes long gone
                for name, idle in list(self._peers.items()):
                    if idle.idle:
                        del self._peers[name]
            peer = self._peers[inbox] = Peer(self, inbox)
        return await peer.send(channel, payload)

    def went_to_redis(self, channel: str) -> None:
        now = time.monotonic()
        if len(self.sticky) > 10_000:
            self.sticky = {c: t for c, t in self.sticky.items() if now - t < STICKY_KEEP}
        self.sticky[channel] = now

    async def address_of(self, inbox: str, fresh: bool) -> str | None:
        if not fresh and inbox in self._addresses:
            return self._addresses[inbox]
        try:
            value = await self.inbox.client.get(self.layer._key("addr", inbox))
        except OUTAGE_ERRORS:
            return None
        if value is None:
            self._addresses.pop(inbox, None)
            return None
        address = self._addresses[inbox] = value.decode() if isinstance(value, bytes) else str(value)
        return address

    async def shut(self) -> None:
        """Stop listening (answers already written: what was answered is queued, what was not
        is sent again by its sender) and close the links to peers."""
        await cancel_and_wait(task for task in (self._refresher, self._listening) if task is not None)
        if self._server is not None:
            self._server.close()
            for accepted in list(self._accepted):
                accepted.close()
            with contextlib.suppress(*OUTAGE_ERRORS):
                await self.inbox.client.eval(
                    _UNREGISTER, 1, self.layer._key("addr", self.layer.inbox_name), self.address
                )
            self._server = None
        for peer in self._peers.values():
            await peer.shut()


class _Accepted(asyncio.Protocol):
    """A sender's connection to this loop's listener."""

    def __init__(self, path: DirectPath) -> None:
        self.path = path
        self.reader = wire.FrameReader()
        self.nonce = os.urandom(wire.NONCE_BYTES)
        self.seen: _Seen | None = None
        self.transport: asyncio.Transport | None = None
        self.handshake_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.path._accepted.add(self)
        # A peer that does not authenticate in time is dropped (it would hold a descriptor).
        self.handshake_deadline = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_late)
        transport.write(wire.frame(wire.HELLO, self.nonce, self.path.layer.inbox_name.encode()))  # type: ignore[attr-defined]

    def _handshake_late(self) -> None:
        if self.seen is None:
            self._drop("no authentication in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self.path._accepted.discard(self)
        if self.handshake_deadline is not None:
            self.handshake_deadline.cancel()
        if self.seen is not None:
            self.seen.connections -= 1
            self.seen.used = time.monotonic()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError as error:
            self._drop(str(error))
            return
        acks: list[bytes] = []
        for kind, body in frames:
            if self.seen is not None and kind == wire.DATA:
                seq, low = wire.DATA_HEAD.unpack_from(body)
                acks.append(wire.ACK.pack(seq, self.path.accept(self.seen, seq, low, body[wire.DATA_HEAD.size :])))
            elif self.seen is None and kind == wire.AUTH and len(body) == wire.AUTH_HEAD.size + wire.MAC_BYTES:
                if not self._authenticate(body):
                    self._drop("bad authentication")
                    return
            else:
                self._drop(f"unexpected frame {kind}")
                return
        if acks and self.transport is not None:
            self.transport.write(wire.frame(wire.ACKS, *acks))

    def _authenticate(self, body: bytes) -> bool:
        session, their_nonce = wire.AUTH_HEAD.unpack_from(body)
        inbox = self.path.layer.inbox_name.encode()
        expected = wire.mac(self.path.key, b"auth", self.nonce, inbox, session, their_nonce)
        if not wire.same(body[wire.AUTH_HEAD.size :], expected):
            return False
        self.seen = self.path.layer.sessions.open(session)
        self.seen.connections += 1
        self.reader.limit = wire.FRAME_MAX
        assert self.transport is not None
        self.transport.write(wire.frame(wire.WELCOME, wire.mac(self.path.key, b"welcome", their_nonce, inbox)))
        return True

    def _drop(self, reason: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        logger.warning("channel layer: dropped a direct connection from %s: %s", peer, reason)
        metrics.LAYER_DIRECT_REFUSED.inc()
        self.close()
