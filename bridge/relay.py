"""The HTTPS byte relay (reference §5): a ticket's state machine and the byte stream (tickets are
minted by ``bridge.relay_tickets``).

``copy_path`` mints a ticket, then the source executor PUTs the bytes and the destination
executor GETs them. The two requests may reach different gateway processes, so everything
lives in Redis and the bytes go through it in chunks of ``CXG_RELAY_CHUNK_BYTES``.

Redis, under ``<CODEXGW_REDIS_PREFIX>relay:``; every key expires on its own, so a process that
dies mid-relay leaves nothing behind for longer than the ticket's TTL plus ``KEY_GRACE_MS``:

* ``t:<ticket>``: hash ``workspace, source, dest, max_bytes, expires`` (ms since the epoch),
  ``state`` (``open`` → ``done``), ``put``/``get`` (``1`` once that side is claimed),
  ``outcome`` and ``reason``. Once done it stays ``FINISHED_TOMBSTONE_MS`` as a tombstone, so
  a late side hears "relay already finished" and a side woken by an abort reads why.
* ``w:<workspace>``: sorted set of the workspace's live tickets, scored by expiry. The cap
  counts its members after dropping the expired ones; finishing a relay removes its ticket,
  and only the call that moves the ticket to ``done`` does, so the count drops exactly once.
* ``d:<ticket>``: list of frames from the upload to the download: ``D``+bytes, ``E``+total
  byte count (the end), ``A`` (aborted: the outcome is in the hash).
* ``c:<ticket>``: list of frames from the download to the upload: ``C`` (a credit), ``K``
  (everything was written to the download connection), ``A``.

Backpressure is credit based: the upload starts with ``CXG_RELAY_BUFFERED_CHUNKS`` credits,
spends one per chunk and the download returns one per chunk it has written to its client, so
Redis never holds more than that many chunks of a relay. Neither side polls: both wait in
blocking pops (in ``POP_SLICE`` steps, to notice their own client leaving). The TTL, counted
from creation, bounds the whole relay, reads and writes to the clients included; both sides
share the deadline and the first to hit it finishes the relay for both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar, cast

import redis
import redis.asyncio
from django.conf import settings
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.relay_tickets import KEY_GRACE_MS, key
from codexgw import metrics

logger = logging.getLogger(__name__)
T = TypeVar("T")

FINISHED_TOMBSTONE_MS = 60_000
# Longest single blocking pop: between pops a side notices its own client going away.
POP_SLICE = 1.0
SOCKET_TIMEOUT = 5.0

DATA, END, ABORT, CREDIT, DONE = b"D", b"E", b"A", b"C", b"K"
# A gateway that stops (SIGTERM) cancels its requests: their relays fail at once for the other
# side instead of leaving it to wait for the deadline.
CANCELLED = "the gateway serving the other side stopped"


class Side(StrEnum):
    UPLOAD = "put"
    DOWNLOAD = "get"


class Outcome(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    UPLOAD_FAILED = "upload_failed"
    DOWNLOAD_FAILED = "download_failed"


class Refusal(StrEnum):
    """Why a side may not use a ticket."""

    UNKNOWN = "ticket not found or expired"
    FINISHED = "relay already finished"
    PUT_CLAIMED = "PUT side already claimed"
    GET_CLAIMED = "GET side already claimed"


class Refused(Exception):
    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


# --- the two sides ---------------------------------------------------------------------------

# KEYS: ticket hash. ARGV: side. Returns {'ok', ms left, max_bytes, workspace} or {refusal}.
_CLAIM = """
local h = redis.call('HMGET', KEYS[1], 'state', ARGV[1], 'expires', 'max_bytes')
if not h[1] then return {'unknown'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if h[1] ~= 'open' then return {'finished'} end
if now >= tonumber(h[3]) then return {'unknown'} end
if h[2] == '1' then return {'claimed'} end
redis.call('HSET', KEYS[1], ARGV[1], '1')
return {'ok', tostring(tonumber(h[3]) - now), h[4], redis.call('HGET', KEYS[1], 'workspace')}
"""

# KEYS: ticket hash, list. ARGV: frame. Appends while the relay is open; returns 1, else 0.
_SEND = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'expires')) + tonumber(ARGV[2]))
return 1
"""

# KEYS: ticket hash, workspace set, data list, control list. ARGV: ticket, outcome, index of
# the list to leave the abort frame in (0: none), frame, tombstone ms, reason. Returns 1 for
# the one call that finishes the relay, 0 after.
_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[2], 'reason', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
local notify = tonumber(ARGV[3])
if notify > 0 then
  redis.call('RPUSH', KEYS[notify], ARGV[4])
  redis.call('PEXPIRE', KEYS[notify], ARGV[5])
end
return 1
"""


class RelayFailed(Exception):
    """The relay ended without delivering everything; ``outcome`` says why. ``received`` is
    what the upload had taken from its client by then."""

    def __init__(self, outcome: Outcome, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.received = received


@dataclass
class Claim:
    ticket: str
    side: Side
    workspace_id: str
    max_bytes: int
    deadline: float  # event-loop time

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    @property
    def own_failure(self) -> Outcome:
        return Outcome.UPLOAD_FAILED if self.side is Side.UPLOAD else Outcome.DOWNLOAD_FAILED


class Downstream(Protocol):
    """The download's client connection."""

    @property
    def gone(self) -> bool: ...

    async def start(self) -> None:
        """Send the response head (200)."""

    async def write(self, data: bytes) -> None:
        """Send bytes; returns once the connection can take more."""

    async def end(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection mid-body, so the client sees the transfer fail."""


class RelayConnection:
    """One side's Redis connection (its blocking pops need a connection of their own).

    The client has no ``socket_timeout`` (redis-py's default is 5 s): with one, redis-py writes
    each command through ``asyncio.wait_for``, which on Python 3.11 swallows the task's
    cancellation when the write completes at the same moment, and a stopping gateway then waits
    forever for the relay it cancelled (seen in ``tests/e2e/test_relay.py``). Every call is
    bounded here instead, with ``asyncio.timeout``, which keeps cancellations.
    """

    def __init__(self) -> None:
        self.client = redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=SOCKET_TIMEOUT
        )
        self._claim = self.client.register_script(_CLAIM)
        self._send = self.client.register_script(_SEND)
        self._finish = self.client.register_script(_FINISH)

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, call: Awaitable[T], blocking: float = 0.0) -> T:
        """One round trip, bounded by ``SOCKET_TIMEOUT`` past the time it may block the server."""
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT + blocking):
                return await call
        except TimeoutError:
            raise RedisTimeoutError("Redis did not answer in time") from None

    async def claim(self, ticket: str, side: Side) -> Claim:
        """Take ``side`` of ``ticket``; ``Refused`` if it is unknown, finished or taken."""
        reply = await self._call(self._claim(keys=[key("t", ticket)], args=[side.value]))
        status = reply[0].decode()
        if status == "claimed":
            raise Refused(Refusal.PUT_CLAIMED if side is Side.UPLOAD else Refusal.GET_CLAIMED)
        if status != "ok":
            raise Refused(Refusal.FINISHED if status == "finished" else Refusal.UNKNOWN)
        return Claim(
            ticket=ticket,
            side=side,
            workspace_id=reply[3].decode(),
            max_bytes=int(reply[2]),
            deadline=asyncio.get_running_loop().time() + int(reply[1]) / 1000,
        )

    def _keys(self, claim: Claim) -> tuple[str, str, str]:
        return key("t", claim.ticket), key("d", claim.ticket), key("c", claim.ticket)

    async def send(self, claim: Claim, frame: bytes) -> None:
        """Append a frame for the other side; ``RelayFailed`` if the relay has ended."""
        hash_key, data_key, control_key = self._keys(claim)
        target = data_key if claim.side is Side.UPLOAD else control_key
        if not await self._call(self._send(keys=[hash_key, target], args=[frame, KEY_GRACE_MS])):
            raise await self.ended(claim)

    async def receive(self, claim: Claim, gone: Callable[[], bool]) -> bytes:
        """The next frame from the other side. ``RelayFailed``: ``TIMEOUT`` at the deadline,
        this side's failure as soon as ``gone()`` (its client went away)."""
        _, data_key, control_key = self._keys(claim)
        source = control_key if claim.side is Side.UPLOAD else data_key
        while (left := claim.remaining()) > 0:
            if gone():
                raise RelayFailed(claim.own_failure, f"{claim.side.value.upper()} connection lost")
            wait = min(POP_SLICE, left)
            popped = await self._call(self.client.blpop([source], timeout=wait), blocking=wait)
            if popped is not None:
                return cast(bytes, popped[1])  # the client does not decode
        raise await self.timeout(claim)

    async def timeout(self, claim: Claim) -> RelayFailed:
        other = Side.DOWNLOAD if claim.side is Side.UPLOAD else Side.UPLOAD
        if await self._call(self.client.hget(key("t", claim.ticket), other.value)) != b"1":
            return RelayFailed(Outcome.TIMEOUT, f"timed out waiting for {other.value.upper()} side")
        return RelayFailed(Outcome.TIMEOUT, "relay expired before the transfer completed")

    async def finish(self, claim: Claim, outcome: Outcome, reason: str = "") -> bool:
        """End the relay; unless it succeeded the other side gets an abort frame. True for the
        call that ended it (and so dropped the workspace count), False if it had ended."""
        hash_key, data_key, control_key = self._keys(claim)
        notify = 0 if outcome is Outcome.OK else (3 if claim.side is Side.UPLOAD else 4)
        finishing = self._finish(
            keys=[hash_key, key("w", claim.workspace_id), data_key, control_key],
            args=[claim.ticket, outcome.value, notify, ABORT, FINISHED_TOMBSTONE_MS, reason],
        )
        return bool(await self._call(finishing))

    async def fail(self, claim: Claim, failure: RelayFailed) -> RelayFailed:
        """Finish the relay with ``failure`` unless it has ended already; returns the failure
        that stands (the other side's, if it was first)."""
        if await self.finish(claim, failure.outcome, failure.message):
            logger.info(
                "relay failed",
                extra={
                    "ticket": claim.ticket[:12],
                    "side": claim.side.value,
                    "outcome": failure.outcome.value,
                    "reason": failure.message,
                },
            )
            return failure
        return await self.ended(claim)

    async def ended(self, claim: Claim) -> RelayFailed:
        """The failure the relay ended with (read after it was finished by the other side)."""
        fields = await self._call(self.client.hmget(key("t", claim.ticket), ["outcome", "reason"]))
        outcome, reason = cast(list[bytes | None], fields)
        if not outcome:  # the tombstone expired too
            return RelayFailed(Outcome.TIMEOUT, "relay expired")
        return RelayFailed(Outcome(outcome.decode()), (reason or b"").decode())


# --- upload ------------------------------------------------------------------------------------


async def upload(
    connection: RelayConnection,
    claim: Claim,
    read: Callable[[], Awaitable[bytes | None]],
    gone: Callable[[], bool],
    declared_length: int | None,
) -> int:
    """Stream the request body into the relay, then wait until the download has written all of
    it to its client. ``read`` returns the next body bytes, ``b""`` at the end and None when the
    client went away. Returns the byte count; ``RelayFailed`` once the relay has failed."""
    received = 0
    try:
        if claim.max_bytes and declared_length is not None and declared_length > claim.max_bytes:
            message = f"upload of {declared_length} bytes exceeds max_bytes {claim.max_bytes}"
            raise RelayFailed(Outcome.TOO_LARGE, message)
        chunk_bytes = settings.CXG_RELAY_CHUNK_BYTES
        credits = settings.CXG_RELAY_BUFFERED_CHUNKS
        pending = bytearray()
        while True:
            data = await _before_deadline(connection, claim, read())
            if data is None:
                raise RelayFailed(Outcome.UPLOAD_FAILED, "PUT connection lost")
            received += len(data)
            metrics.RELAY_BYTES.labels("upload").inc(len(data))
            if claim.max_bytes and received > claim.max_bytes:
                raise RelayFailed(Outcome.TOO_LARGE, f"upload exceeds max_bytes {claim.max_bytes}")
            pending += data
            while len(pending) >= chunk_bytes or (pending and not data):
                if not credits:
                    await _expect(connection, claim, CREDIT, gone)
                    credits = 1
                await connection.send(claim, DATA + pending[:chunk_bytes])
                del pending[:chunk_bytes]
                credits -= 1
            if not data:
                break
        await connection.send(claim, END + str(received).encode())
        await _expect(connection, claim, DONE, gone)
        await connection.finish(claim, Outcome.OK)
        return received
    except RelayFailed as failure:
        standing = await connection.fail(claim, failure)
        standing.received = received
        raise standing from None
    except asyncio.CancelledError:
        await connection.fail(claim, RelayFailed(Outcome.UPLOAD_FAILED, CANCELLED))
        raise


async def _before_deadline(connection: RelayConnection, claim: Claim, step: Awaitable[T]) -> T:
    """``step`` (a read from or write to this side's client), bounded by the ticket's TTL."""
    try:
        async with asyncio.timeout(max(claim.remaining(), 0)):
            return await step
    except TimeoutError:
        raise await connection.timeout(claim) from None


async def _expect(connection: RelayConnection, claim: Claim, tag: bytes, gone: Callable[[], bool]) -> None:
    """Wait for a ``tag`` frame from the download (skipping credits when waiting for ``DONE``).
    The PUT client must stay for its response: if it leaves, the relay fails."""
    while True:
        frame = await connection.receive(claim, gone)
        if frame[:1] == tag:
            return
        if frame[:1] == ABORT:
            raise await connection.ended(claim)


# --- download ----------------------------------------------------------------------------------


async def download(connection: RelayConnection, claim: Claim, downstream: Downstream) -> int:
    """Stream the relay to ``downstream``; returns the byte count. ``RelayFailed`` once the
    relay has failed; if the response had started, ``downstream`` has been aborted."""
    sent = 0
    started = False
    try:
        while True:
            frame = await connection.receive(claim, lambda: downstream.gone)
            tag, payload = frame[:1], frame[1:]
            if tag == ABORT:
                raise await connection.ended(claim)
            if not started:
                await downstream.start()
                started = True
            if tag == END:
                if int(payload) != sent:
                    raise RelayFailed(Outcome.UPLOAD_FAILED, f"upload ended at {int(payload)} bytes, {sent} relayed")
                await downstream.end()
                await connection.send(claim, DONE)
                return sent
            await _before_deadline(connection, claim, downstream.write(payload))
            if downstream.gone:
                raise RelayFailed(Outcome.DOWNLOAD_FAILED, "GET connection lost")
            sent += len(payload)
            metrics.RELAY_BYTES.labels("download").inc(len(payload))
            await connection.send(claim, CREDIT)
    except RelayFailed as failure:
        standing = await connection.fail(claim, failure)
        if started:
            downstream.abort()
        raise standing from None
    except asyncio.CancelledError:
        await connection.fail(claim, RelayFailed(Outcome.DOWNLOAD_FAILED, CANCELLED))
        if started:
            downstream.abort()
        raise
