"""The channel layer's direct path (codexgw/layer_direct.py) on the real Redis: the receiving layer
runs on an event loop of its own in another thread, as another process's would; order, capacity
without head-of-line blocking, a connection broken mid-stream, authentication, the fallback to
Redis, and expiry."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
import redis.asyncio
from channels.exceptions import ChannelFull
from django.conf import settings

from codexgw import channel_layer, layer_direct, layer_peer, layer_wire, metrics
from codexgw.channel_layer import RedisInboxChannelLayer
from codexgw.layer_direct import DirectPath

T = TypeVar("T")


def layer(**config: Any) -> RedisInboxChannelLayer:
    config.setdefault("direct", True)
    config.setdefault("direct_secret", "test-direct-secret")
    return RedisInboxChannelLayer(settings.REDIS_URL, prefix=f"{settings.CODEXGW_REDIS_PREFIX}dltest:", **config)


class Remote:
    """A layer on an event loop of its own in a thread (another process, as far as the layer knows)."""

    def __init__(self, **config: Any) -> None:
        self.layer = layer(**config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(call(), self.loop)
        return await asyncio.wrap_future(future)

    def direct(self) -> DirectPath:
        state = self.layer._loops[self.loop][2]
        assert state is not None
        return state

    async def receive_all(self, channel: str, count: int, patience: float = 10) -> list[dict[str, Any]]:
        async def many() -> list[dict[str, Any]]:
            return [await asyncio.wait_for(self.layer.receive(channel), patience) for _ in range(count)]

        return await self.run(many)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.layer.flush(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def remote() -> Iterator[Callable[..., Remote]]:
    made: list[Remote] = []

    def make(**config: Any) -> Remote:
        made.append(Remote(**config))
        return made[-1]

    yield make
    for one in made:
        one.stop()


def break_once_before_answering(
    monkeypatch: Any, when: Callable[[Any], bool] = lambda accepted: True
) -> threading.Event:
    """The first authenticated connection (for which ``when`` holds) queues what it receives,
    then dies before its answers go out; the event is set once it did."""
    original = layer_direct._Accepted.data_received
    broken = threading.Event()

    def data_received(self: Any, data: bytes) -> None:
        if self.seen is not None and not broken.is_set() and when(self):
            broken.set()
            self.transport.write = lambda data: None  # the answers are lost with the connection
            original(self, data)
            self.transport.abort()
            return
        original(self, data)

    monkeypatch.setattr(layer_direct._Accepted, "data_received", data_received)
    return broken


async def _inbox_len(receiver: RedisInboxChannelLayer) -> int:
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    try:
        return int(await client.llen(receiver._key("inbox", receiver.inbox_name)))
    finally:
        await client.aclose()


async def test_messages_go_directly_in_order_and_not_through_redis(remote):
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    fallbacks = metrics.LAYER_DIRECT_FALLBACK._value.get()
    pushed: list[str] = []
    original = sender._push

    async def counted(channel: str, payload: bytes) -> bool:
        pushed.append(channel)
        return await original(channel, payload)

    sender._push = counted  # type: ignore[method-assign]
    await asyncio.gather(*(sender.send(channel, {"type": "t", "n": n, "blob": b"\x00\xff"}) for n in range(300)))
    for n in range(300, 600):
        await sender.send(channel, {"type": "t", "n": n})
    received = await receiver.receive_all(channel, 600)
    assert [message["n"] for message in received] == list(range(600))
    assert received[0] == {"type": "t", "n": 0, "blob": b"\x00\xff"}
    assert pushed == []
    assert metrics.LAYER_DIRECT_FALLBACK._value.get() == fallbacks
    await sender.flush()


async def test_a_full_channel_refuses_its_sender_while_its_neighbour_flows(remote, monkeypatch):
    receiver, sender = remote(capacity=2), layer()
    full, neighbour = [await receiver.run(receiver.layer.new_channel) for _ in range(2)]
    await sender.send(full, {"type": "t", "n": 0})
    await sender.send(full, {"type": "t", "n": 1})
    with pytest.raises(ChannelFull):
        await sender.send(full, {"type": "t", "n": 2})
    await sender.send(neighbour, {"type": "t", "n": 9})
    assert [m["n"] for m in await receiver.receive_all(neighbour, 1)] == [9]
    # Bytes too: a lone message goes whatever its size, a second one past 4 MiB waits.
    big = await receiver.run(receiver.layer.new_channel)
    await sender.send(big, {"type": "t", "blob": b"x" * (5 << 20)})
    with pytest.raises(ChannelFull):
        await sender.send(big, {"type": "t", "blob": b"y"})
    # A send watches a full channel a while: a receive meanwhile lets it through.
    monkeypatch.setattr(channel_layer, "FULL_WAIT", 5.0)
    waiting = asyncio.ensure_future(sender.send(full, {"type": "t", "n": 2}))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert [m["n"] for m in await receiver.receive_all(full, 1)] == [0]
    await asyncio.wait_for(waiting, 5)
    assert [m["n"] for m in await receiver.receive_all(full, 2)] == [1, 2]
    await sender.flush()


async def test_a_connection_broken_after_delivery_before_the_answer_duplicates_nothing(remote, monkeypatch):
    """The receiver queues a batch, then its connection dies before the answers go out: the sender
    dials again and sends the batch again; the receiver answers from its record, queues nothing."""
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    broken = break_once_before_answering(monkeypatch, lambda accepted: bool(accepted.path.inbox._queues))
    await sender.send(channel, {"type": "t", "n": 0})
    await asyncio.wait_for(asyncio.gather(*(sender.send(channel, {"type": "t", "n": n}) for n in range(1, 200))), 10)
    assert broken.is_set()
    assert [m["n"] for m in await receiver.receive_all(channel, 200)] == list(range(200))
    with pytest.raises(TimeoutError):
        await receiver.receive_all(channel, 1, patience=0.3)
    await sender.flush()


async def test_connections_killed_at_random_mid_stream_lose_and_repeat_nothing(remote):
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    done = asyncio.Event()

    async def killer() -> None:
        rng = random.Random(16)
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.001, 0.02))
            for accepted in list(receiver.direct()._accepted):
                receiver.loop.call_soon_threadsafe(accepted.transport.abort)

    killing = asyncio.create_task(killer())

    async def stream(start: int) -> None:
        for n in range(start, start + 500):
            await sender.send(channel, {"type": "t", "n": n})

    await asyncio.wait_for(asyncio.gather(stream(0), stream(1000)), 30)
    done.set()
    await killing
    got = [m["n"] for m in await receiver.receive_all(channel, 1000)]
    assert [n for n in got if n < 1000] == list(range(500))
    assert [n for n in got if n >= 1000] == list(range(1000, 1500))
    with pytest.raises(TimeoutError):
        await receiver.receive_all(channel, 1, patience=0.3)
    await sender.flush()


async def test_a_sender_without_the_secret_is_refused_and_its_messages_go_through_redis(remote):
    receiver, stranger = remote(), layer(direct_secret="not-the-secret")
    channel = await receiver.run(receiver.layer.new_channel)
    refused = metrics.LAYER_DIRECT_REFUSED._value.get()
    await stranger.send(channel, {"type": "t", "n": 1})
    assert metrics.LAYER_DIRECT_REFUSED._value.get() > refused
    assert await _inbox_len(receiver.layer) == 1  # it went through Redis
    assert [m["n"] for m in await receiver.receive_all(channel, 1)] == [1]
    # A raw peer that answers the challenge with a wrong proof is cut off before any DATA counts.
    address = receiver.direct().address
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    size, kind = layer_wire.HEADER.unpack(await reader.readexactly(layer_wire.HEADER.size))
    assert kind == layer_wire.HELLO
    assert len(await reader.readexactly(size - 1)) > layer_wire.NONCE_BYTES
    writer.write(layer_wire.frame(layer_wire.AUTH, layer_wire.AUTH_HEAD.pack(b"s" * 8, b"n" * 16), b"m" * 32))
    writer.writelines(layer_wire.data_frame(1, 1, channel.encode() + b"\n\x80"))
    try:
        answered = await reader.read()
    except ConnectionResetError:
        answered = b""  # closed with the DATA frame still unread: a reset, not an end of stream
    assert answered == b""  # closed, nothing answered
    writer.close()
    assert receiver.direct().inbox._queues == {}
    await stranger.flush()


async def test_an_unreachable_receiver_gets_its_messages_through_redis_in_order(remote, monkeypatch):
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    await sender.send(channel, {"type": "t", "n": 0})  # direct
    monkeypatch.setattr(layer_peer, "DOWN_FOR", 0.05)
    # The listener goes away (its address now points at a closed port), the process stays.
    fallbacks = metrics.LAYER_DIRECT_FALLBACK._value.get()
    path = receiver.direct()

    async def close_listener() -> None:
        assert path._server is not None
        path._server.close()
        for accepted in list(path._accepted):
            accepted.transport.abort()
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()[1]
        await path.inbox.client.set(receiver.layer._key("addr", receiver.layer.inbox_name), f"127.0.0.1:{dead}")

    await receiver.run(close_listener)
    await asyncio.gather(*(sender.send(channel, {"type": "t", "n": n}) for n in range(1, 50)))
    assert metrics.LAYER_DIRECT_FALLBACK._value.get() > fallbacks
    # The receiver listens again, the sender may dial it again: a channel that went through Redis
    # stays there, or these would overtake the ones still in the Redis inbox (nobody reads it yet).
    await asyncio.sleep(0.1)  # DOWN_FOR

    async def listen_again() -> None:
        path._listening = None
        await path.listen()

    await receiver.run(listen_again)
    assert await _inbox_len(receiver.layer) == 49
    for n in range(50, 60):
        await sender.send(channel, {"type": "t", "n": n})
    assert [m["n"] for m in await receiver.receive_all(channel, 60)] == list(range(60))
    # ... while a new channel goes directly again.
    fresh = await receiver.run(receiver.layer.new_channel)
    await sender.send(fresh, {"type": "t", "n": 1})
    assert await _inbox_len(receiver.layer) == 0
    assert [m["n"] for m in await receiver.receive_all(fresh, 1)] == [1]
    # A receiver with the direct path off (no address): Redis, as before.
    plain = remote(direct=False)
    other = await plain.run(plain.layer.new_channel)
    await sender.send(other, {"type": "t", "n": 7})
    assert await _inbox_len(plain.layer) == 1
    assert [m["n"] for m in await plain.receive_all(other, 1)] == [7]
    await sender.flush()


async def test_moved_to_redis_after_delivery_is_not_queued_twice(remote, monkeypatch):
    """Frames the receiver queued but never answered, moved to Redis when it cannot be dialled
    again: their tagged copies are dropped on arrival."""
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    await sender.send(channel, {"type": "t", "n": 0})
    monkeypatch.setattr(layer_peer, "DIAL_DELAYS", (0.0,))
    path = receiver.direct()
    original = layer_direct._Accepted.data_received

    def data_received(self: Any, data: bytes) -> None:
        self.transport.write = lambda data: None
        original(self, data)
        assert path._server is not None
        path._server.close()  # its address stays: dials are refused
        self.transport.abort()

    monkeypatch.setattr(layer_direct._Accepted, "data_received", data_received)
    await asyncio.wait_for(asyncio.gather(*(sender.send(channel, {"type": "t", "n": n}) for n in range(1, 20))), 10)
    assert [m["n"] for m in await receiver.receive_all(channel, 20)] == list(range(20))
    with pytest.raises(TimeoutError):
        await receiver.receive_all(channel, 1, patience=0.5)
    await sender.flush()


async def test_direct_messages_nobody_receives_expire_counted_and_free_their_channel(remote):
    receiver, sender = remote(capacity=3, expiry=1), layer(expiry=1)
    abandoned, alive = [await receiver.run(receiver.layer.new_channel) for _ in range(2)]
    for n in range(3):
        await sender.send(abandoned, {"type": "t", "n": n})
    with pytest.raises(ChannelFull):
        await sender.send(abandoned, {"type": "t", "n": 3})
    before = metrics.LAYER_EXPIRED._value.get()
    for n in range(4):
        await asyncio.sleep(0.5)
        await sender.send(alive, {"type": "t", "n": n})
        assert [m["n"] for m in await receiver.receive_all(alive, 1)] == [n]
    await asyncio.sleep(0.6)
    await sender.send(alive, {"type": "t", "n": 99})  # the receiver sweeps as it queues
    assert [m["n"] for m in await receiver.receive_all(alive, 1)] == [99]
    assert metrics.LAYER_EXPIRED._value.get() - before == 3
    await sender.send(abandoned, {"type": "t", "n": 3})  # room again
    await sender.flush()


async def test_a_long_lived_session_is_remembered_across_a_broken_connection(remote, monkeypatch):
    """A connection older than SESSION_KEEP breaks after the receiver queued a frame and before its
    answer left: the record of that session must still be there, or the frame is queued twice."""
    monkeypatch.setattr(layer_direct, "SESSION_KEEP", 0.3)
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    await sender.send(channel, {"type": "t", "n": 0})  # the session authenticates now
    await asyncio.sleep(0.5)  # and its connection lives on past SESSION_KEEP
    broken = break_once_before_answering(monkeypatch)
    await asyncio.wait_for(sender.send(channel, {"type": "t", "n": 1}), 10)
    assert broken.is_set()
    assert [m["n"] for m in await receiver.receive_all(channel, 2)] == [0, 1]
    with pytest.raises(TimeoutError):
        await receiver.receive_all(channel, 1, patience=0.5)
    await sender.flush()


async def test_a_peer_that_stops_answering_is_dropped_and_its_messages_still_arrive(remote, monkeypatch):
    """The receiver's process freezes (it reads nothing and answers nothing, its connection stays
    open): after ANSWER_TIMEOUT the sender drops the connection, cannot get a new one through the
    handshake, and the message goes through Redis; the send does not hang."""
    monkeypatch.setattr(layer_peer, "ANSWER_TIMEOUT", 0.5)
    receiver, sender = remote(), layer()
    channel = await receiver.run(receiver.layer.new_channel)
    await sender.send(channel, {"type": "t", "n": 0})
    monkeypatch.setattr(layer_direct._Accepted, "data_received", lambda self, data: None)  # frozen
    await asyncio.wait_for(sender.send(channel, {"type": "t", "n": 1}), 10)
    assert [m["n"] for m in await receiver.receive_all(channel, 2)] == [0, 1]
    await sender.flush()
