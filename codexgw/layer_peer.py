"""The sending side of the channel layer's direct path (codexgw/layer_direct.py): one event
loop's link to one receiving process.

A ``Peer`` numbers its frames in a session and keeps each until the receiver answers it (OK or
FULL). A broken connection is dialled again (``DIAL_DELAYS``, the address looked up afresh) and
the unanswered frames are sent again, in order; the receiver answers one it had seen from its
record. If the receiver cannot be reached they go to its Redis inbox, in order and tagged (so
the receiver drops one it had queued after all), sends meanwhile queue behind them, and the
peer is left to Redis for ``DOWN_FOR`` seconds; a new session starts after that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Protocol

from codexgw import layer_wire as wire
from codexgw import metrics
from codexgw.layer_pipe import settle
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

DIAL_DELAYS = (0.0, 0.05, 0.2)  # attempts to reach a peer before its frames go to Redis
DIAL_TIMEOUT = 1.0
DOWN_FOR = 2.0  # seconds a peer that could not be reached is left to Redis
# A connection whose oldest unanswered frame has waited this long is dropped and dialled again (a
# host gone without a reset, a frozen process): a send never hangs on a silent peer.
ANSWER_TIMEOUT = 5.0


class RedisPath(Protocol):
    async def push_redis(self, channel: str, payload: bytes) -> bool: ...


class Path(Protocol):
    """What a peer uses of its event loop's direct path (``layer_direct.DirectPath``)."""

    key: bytes

    @property
    def layer(self) -> RedisPath: ...

    async def address_of(self, inbox: str, fresh: bool) -> str | None: ...

    def went_to_redis(self, channel: str) -> None: ...


class Peer:
    """This loop's link to one receiving process: a session of numbered frames, sent again after
    a broken connection until answered, or moved to Redis if the peer cannot be reached."""

    def __init__(self, path: Path, inbox: str) -> None:
        self.path = path
        self.inbox = inbox
        self.link: _Dialled | None = None
        self.dialling: asyncio.Task[None] | None = None
        self.down_until = 0.0
        self.forwarding: list[tuple[str, bytes, asyncio.Future[bool]]] = []
        self.forwarder: asyncio.Task[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self._new_session()

    def _new_session(self) -> None:
        self.session = os.urandom(8)
        self.seq = 0
        self.unanswered: dict[int, tuple[str, bytes, asyncio.Future[bool]]] = {}  # by seq, in order

    async def send(self, channel: str, payload: bytes) -> bool:
        if self.forwarder is not None or time.monotonic() < self.down_until:
            return await self.to_redis(channel, payload)
        self.seq += 1
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.unanswered[self.seq] = (channel, payload, future)
        if self.link is not None:
            self.link.write(self.seq, next(iter(self.unanswered)), payload)
        elif self.dialling is None:
            self.dialling = asyncio.create_task(self._dial(), name="channel layer dial")
        if self.watchdog is None:
            self._watch()
        return await future

    def _watch(self) -> None:
        first = next(iter(self.unanswered), None)
        if first is not None:
            self.watchdog = asyncio.get_running_loop().call_later(ANSWER_TIMEOUT, self._check, first)

    def _check(self, first: int) -> None:
        """No answer to ``first`` in ANSWER_TIMEOUT: drop the connection (``lost`` dials again)."""
        self.watchdog = None
        if next(iter(self.unanswered), None) == first and self.link is not None:
            logger.warning("channel layer: no answer from %s for %g s; connecting again", self.inbox, ANSWER_TIMEOUT)
            self.link.close()
        self._watch()

    @property
    def idle(self) -> bool:
        return self.link is None and not self.unanswered and self.dialling is None and self.forwarder is None

    def answered(self, seq: int, result: int) -> None:
        entry = self.unanswered.pop(seq, None)
        if entry is not None and not entry[2].done():
            entry[2].set_result(result == wire.OK)

    def lost(self, link: _Dialled) -> None:
        if self.link is link:
            self.link = None
            if self.unanswered and self.dialling is None:
                self.dialling = asyncio.create_task(self._dial(), name="channel layer dial")

    async def _dial(self) -> None:
        reason = "no address"
        try:
            for attempt, delay in enumerate(DIAL_DELAYS):
                await asyncio.sleep(delay)
                address = await self.path.address_of(self.inbox, fresh=attempt > 0)
                if address is None:
                    break
                host, _, port = address.rpartition(":")
                link = _Dialled(self, host)
                try:
                    await asyncio.wait_for(link.open(host, int(port)), DIAL_TIMEOUT)
                except (OSError, TimeoutError, ConnectionError, ValueError) as error:
                    link.close()
                    reason = type(error).__name__
                    continue
                if link.transport is None or link.transport.is_closing():  # lost as it was made
                    reason = "closed"
                    continue
                self.link = link
                for seq, (_, payload, _) in self.unanswered.items():  # in order; answered again if seen
                    link.write(seq, next(iter(self.unanswered)), payload)
                return
            self._give_up(reason)
        finally:
            self.dialling = None

    def _give_up(self, reason: str) -> None:
        moved, session = list(self.unanswered.items()), self.session
        self._new_session()
        self.down_until = time.monotonic() + DOWN_FOR
        metrics.LAYER_DIRECT_FALLBACK.inc(max(len(moved), 1))
        logger.info(
            "channel layer: %s not reachable directly (%s); %d message(s) to Redis", self.inbox, reason, len(moved)
        )
        for seq, (channel, payload, future) in moved:
            self._forward(channel, wire.tag(session, seq, payload), future)

    async def to_redis(self, channel: str, payload: bytes) -> bool:
        if self.forwarder is None:  # nothing of ours ahead of it on the Redis path
            self.path.went_to_redis(channel)
            return await self.path.layer.push_redis(channel, payload)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._forward(channel, payload, future)
        return await future

    def _forward(self, channel: str, payload: bytes, future: asyncio.Future[bool]) -> None:
        self.path.went_to_redis(channel)
        self.forwarding.append((channel, payload, future))
        if self.forwarder is None:
            self.forwarder = asyncio.create_task(self._run_forwarder(), name="channel layer to Redis")

    async def _run_forwarder(self) -> None:
        """Push what was moved to Redis in order (sends meanwhile queue up behind it)."""
        try:
            while self.forwarding:
                batch, self.forwarding = self.forwarding, []
                pushes = (self.path.layer.push_redis(channel, payload) for channel, payload, _ in batch)
                results: list[Any] = await asyncio.gather(*pushes, return_exceptions=True)
                for (_, _, future), result in zip(batch, results, strict=True):
                    settle(future, result)
        finally:
            self.forwarder = None

    async def shut(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        await cancel_and_wait(task for task in (self.dialling, self.forwarder) if task is not None)
        if self.link is not None:
            self.link.close()


class _Dialled(asyncio.Protocol):
    """This loop's connection to a peer's listener."""

    def __init__(self, peer: Peer, host: str) -> None:
        self.peer = peer
        self.reader = wire.FrameReader()
        self.nonce = os.urandom(wire.NONCE_BYTES)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(lambda ready: ready.cancelled() or ready.exception())  # seen: no warning
        self._parts: list[bytes] = []

    async def open(self, host: str, port: int) -> None:
        await asyncio.get_running_loop().create_connection(lambda: self, host, port)
        await self.ready

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))
        else:
            self.peer.lost(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def write(self, seq: int, low: int, payload: bytes) -> None:
        """Frames written in one turn of the loop go out in one write."""
        if not self._parts:
            asyncio.get_running_loop().call_soon(self._flush)
        self._parts += wire.data_frame(seq, low, payload)

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError:
            self.close()
            return
        for kind, body in frames:
            if kind == wire.ACKS and self.ready.done() and self.peer.link is self:  # not a stale link's
                for offset in range(0, len(body), wire.ACK.size):
                    self.peer.answered(*wire.ACK.unpack_from(body, offset))
            elif kind == wire.HELLO and self.transport is not None and not self.ready.done():
                self._hello(body)
            elif kind == wire.WELCOME and not self.ready.done():
                inbox = self.peer.inbox.encode()
                if not wire.same(body, wire.mac(self.peer.path.key, b"welcome", self.nonce, inbox)):
                    self.ready.set_exception(ConnectionError("the listener failed to authenticate"))
                    self.close()
                    return
                self.reader.limit = wire.FRAME_MAX
                self.ready.set_result(None)
            else:
                self.close()
                return

    def _hello(self, body: bytes) -> None:
        their_nonce, inbox = body[: wire.NONCE_BYTES], body[wire.NONCE_BYTES :]
        if inbox != self.peer.inbox.encode():  # a stale address: another process listens there now
            self.ready.set_exception(ConnectionError("another process listens at that address"))
            self.close()
            return
        session = self.peer.session
        proof = wire.mac(self.peer.path.key, b"auth", their_nonce, inbox, session, self.nonce)
        assert self.transport is not None
        self.transport.write(wire.frame(wire.AUTH, wire.AUTH_HEAD.pack(session, self.nonce), proof))
