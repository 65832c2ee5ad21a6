"""The Redis inbox channel layer on the real Redis: one inbox per layer (process), capacity per
channel in messages and bytes, credit given back after receive, expiry of abandoned channels,
groups across processes, refusals."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis.asyncio
from channels.exceptions import ChannelFull
from django.conf import settings

from codexgw import channel_layer, metrics
from codexgw.channel_layer import FULL_WAIT, RedisInboxChannelLayer
from codexgw.layer_pipe import SendCall


def layer(**config) -> RedisInboxChannelLayer:
    return RedisInboxChannelLayer(settings.REDIS_URL, prefix=f"{settings.CODEXGW_REDIS_PREFIX}cltest:", **config)


async def test_messages_cross_between_two_processes_in_order():
    sender, receiver = layer(), layer()
    channel = await receiver.new_channel()
    assert channel.split("!")[0].rsplit(".", 1)[1] != (await sender.new_channel()).split("!")[0].rsplit(".", 1)[1]
    # Sent all at once: those queued behind the first share pipelines, in order.
    await asyncio.gather(*(sender.send(channel, {"type": "t", "n": n, "blob": b"\x00\xff"}) for n in range(500)))
    received = [await asyncio.wait_for(receiver.receive(channel), 5) for _ in range(500)]
    assert [message["n"] for message in received] == list(range(500))
    assert received[0] == {"type": "t", "n": 0, "blob": b"\x00\xff"}
    await sender.flush()
    await receiver.flush()


async def test_a_full_channel_refuses_while_its_neighbour_on_the_same_inbox_flows(monkeypatch):
    sender, receiver = layer(capacity=2), layer(capacity=2)
    full, neighbour = await receiver.new_channel(), await receiver.new_channel()
    await sender.send(full, {"type": "t", "n": 0})
    await sender.send(full, {"type": "t", "n": 1})
    with pytest.raises(ChannelFull):
        await sender.send(full, {"type": "t", "n": 2})
    await sender.send(neighbour, {"type": "t", "n": 9})
    assert (await asyncio.wait_for(receiver.receive(neighbour), 5))["n"] == 9
    # A send to a full channel watches it for room a little while: a receive meanwhile (which
    # gives the credit back after a short delay) lets it through without ChannelFull.
    monkeypatch.setattr(channel_layer, "FULL_WAIT", 5.0)  # a loaded machine may be slow to give credit back
    waiting = asyncio.ensure_future(sender.send(full, {"type": "t", "n": 2}))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert (await asyncio.wait_for(receiver.receive(full), 5))["n"] == 0
    await asyncio.wait_for(waiting, 5)
    assert [(await receiver.receive(full))["n"] for _ in range(2)] == [1, 2]
    await sender.flush()
    await receiver.flush()


async def test_a_slow_first_full_answer_still_leaves_the_whole_wait_for_room(monkeypatch):
    sender, calls = layer(), []

    async def push(channel: str, payload: bytes) -> bool:
        calls.append("push")
        if len(calls) == 1:
            await asyncio.sleep(FULL_WAIT * 1.5)  # a loaded Redis answers late: full
            return False
        return True

    async def has_room(channel: str, size: int) -> bool:
        calls.append("room")
        return True  # the receiver gave credit back meanwhile

    monkeypatch.setattr(sender, "_push", push)
    monkeypatch.setattr(sender, "_has_room", has_room)
    await sender.send("specific.abc!def", {"type": "t"})
    assert calls == ["push", "room", "push"]


async def test_byte_capacity_bounds_a_channel_but_a_lone_message_of_any_size_goes():
    sender, receiver = layer(byte_capacity=100_000), layer()
    channel = await receiver.new_channel()
    await sender.send(channel, {"type": "t", "text": "x" * 300_000})  # alone: goes
    with pytest.raises(ChannelFull):
        await sender.send(channel, {"type": "t", "text": "y"})
    assert len((await asyncio.wait_for(receiver.receive(channel), 5))["text"]) == 300_000
    await asyncio.wait_for(_send_when_room(sender, channel, {"type": "t", "text": "y" * 40_000}), 5)
    await sender.send(channel, {"type": "t", "text": "z" * 40_000})
    with pytest.raises(ChannelFull):
        await sender.send(channel, {"type": "t", "text": "w" * 40_000})
    await sender.flush()
    await receiver.flush()


async def test_messages_nobody_receives_expire_counted_and_give_their_credit_back():
    sender, receiver = layer(capacity=3, expiry=1), layer(expiry=1)
    abandoned, alive = await receiver.new_channel(), await receiver.new_channel()
    for n in range(3):
        await sender.send(abandoned, {"type": "t", "n": n})
    before = metrics.LAYER_EXPIRED._value.get()
    # A consumer that keeps receiving its own channel is not affected by the sweep.
    for n in range(4):
        await asyncio.sleep(0.5)
        await sender.send(alive, {"type": "t", "n": n})
        assert (await asyncio.wait_for(receiver.receive(alive), 6))["n"] == n
    await asyncio.sleep(0.6)
    await sender.send(alive, {"type": "t", "n": 99})  # wakes the reader, which sweeps
    assert (await asyncio.wait_for(receiver.receive(alive), 6))["n"] == 99
    assert metrics.LAYER_EXPIRED._value.get() - before == 3
    await asyncio.wait_for(_send_when_room(sender, abandoned, {"type": "t", "n": 3}), 5)
    await sender.flush()
    await receiver.flush()


async def test_group_send_reaches_members_on_every_process_and_skips_full_ones():
    one, two = layer(capacity=1), layer(capacity=1)
    a, b, c = await one.new_channel(), await two.new_channel(), await two.new_channel()
    for channel in (a, b, c):
        await one.group_add("revoke.x", channel)
    await one.send(c, {"type": "filler"})  # c is full
    await two.group_send("revoke.x", {"type": "bridge.revoke"})
    assert await asyncio.wait_for(one.receive(a), 5) == {"type": "bridge.revoke"}
    assert await asyncio.wait_for(two.receive(b), 5) == {"type": "bridge.revoke"}
    assert await asyncio.wait_for(two.receive(c), 5) == {"type": "filler"}
    await one.group_discard("revoke.x", a)
    await asyncio.sleep(0.3)  # the credit of what b received comes back
    await two.group_send("revoke.x", {"type": "again"})
    assert await asyncio.wait_for(two.receive(b), 5) == {"type": "again"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(one.receive(a), 0.3)
    await one.flush()
    await two.flush()


async def test_refusals_general_channels_foreign_receive_and_no_redis():
    own, other = layer(), layer()
    with pytest.raises(TypeError, match="process-specific"):
        await own.send("general-channel", {"type": "t"})
    with pytest.raises(RuntimeError, match="not a channel of this process"):
        await own.receive(await other.new_channel())
    gone = RedisInboxChannelLayer("redis://127.0.0.1:1/0", outage_patience=0.3, socket_connect_timeout=0.2)
    with pytest.raises(ChannelFull, match="Redis unavailable"):
        await gone.send(await own.new_channel(), {"type": "t"})
    await own.flush()
    await other.flush()


async def _send_when_room(sender: RedisInboxChannelLayer, channel: str, message: dict[str, object]) -> None:
    while True:
        try:
            await sender.send(channel, message)
            return
        except ChannelFull:
            await asyncio.sleep(0.01)


async def test_another_event_loop_receives_once_the_first_stops_and_gets_what_it_left():
    """As with a sync caller's ``async_to_sync``: each call runs on an event loop of its own, which
    ends; what one loop had taken from the inbox and not handed out goes back for the next."""
    sender, receiver = layer(), layer()
    channel = await receiver.new_channel()
    for n in range(3):
        await sender.send(channel, {"type": "t", "n": n})

    def receive_one() -> dict[str, object]:
        return asyncio.run(asyncio.wait_for(receiver.receive(channel), 5))

    # Each asyncio.run is a loop of its own, closed afterwards (the layer's inbox goes with it).
    got = [await asyncio.to_thread(receive_one) for _ in range(3)]
    assert [message["n"] for message in got] == [0, 1, 2]
    await sender.flush()
    await receiver.flush()


async def test_sends_and_credit_survive_redis_forgetting_its_scripts():
    """A restarted Redis has no scripts loaded: a lone send, a pipelined batch and the credit given
    back after receive all load theirs again."""
    sender, receiver = layer(capacity=5), layer()
    channel = await receiver.new_channel()
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    await client.script_flush()
    await sender.send(channel, {"type": "t", "n": 0})
    await asyncio.gather(*(sender.send(channel, {"type": "t", "n": n}) for n in (1, 2)))
    # A pipelined batch that meets a flushed Redis, as the layer's send pipe runs one (in use, the
    # lone send before a batch would mostly have reloaded the script already).
    await client.script_flush()
    keys = [receiver._key("inbox", receiver.inbox_name), sender._key("credit", channel)]
    batch: list[SendCall] = [
        ([*keys, channel.encode() + b"\n" + msgpack.packb({"type": "t", "n": n}), 5, 1 << 20, 60_000], None)
        for n in (3, 4)
    ]
    assert await sender._state()[1]._run(batch) == [1, 1]
    await client.script_flush()
    assert [(await asyncio.wait_for(receiver.receive(channel), 5))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    # Full until the credit of those five comes back through a reloaded release script.
    await asyncio.wait_for(_send_when_room(sender, channel, {"type": "t", "n": 5}), 5)
    assert (await asyncio.wait_for(receiver.receive(channel), 5))["n"] == 5
    await client.aclose()
    await sender.flush()
    await receiver.flush()
