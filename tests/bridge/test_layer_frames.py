"""Frames over the real Redis channel layer: split and reassembled, backpressure on a full channel."""

from __future__ import annotations

import asyncio
import random
import string

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from bridge.layer_frames import Reassembler, ReceiverStuck, send_text, send_with_backpressure
from bridge.protocol import LAYER_CHUNK_CHARS


def redis_layer(**config) -> RedisChannelLayer:
    return RedisChannelLayer(
        hosts=[{"address": settings.REDIS_URL, "socket_timeout": 30}],
        prefix=f"{settings.CODEXGW_REDIS_PREFIX}layertest:",
        **config,
    )


async def test_large_text_is_split_and_reassembled_exactly():
    layer = redis_layer()
    channel = await layer.new_channel()
    text = "".join(random.choices(string.ascii_letters + "é€😀", k=3 * LAYER_CHUNK_CHARS + 17))
    await send_text(layer, channel, "bridge.frame", text, conn="c1")
    reassembler = Reassembler()
    received = None
    parts = 0
    while received is None:
        message = await asyncio.wait_for(layer.receive(channel), 5)
        assert len(message["text"]) <= LAYER_CHUNK_CHARS
        assert message["conn"] == "c1"
        parts += 1
        received = reassembler.add("sender", message)
    assert parts == 4
    assert received == text
    await layer.flush()


async def test_small_text_is_one_message():
    layer = redis_layer()
    channel = await layer.new_channel()
    await send_text(layer, channel, "bridge.frame", '{"id":1}')
    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert message == {"type": "bridge.frame", "text": '{"id":1}'}
    await layer.flush()


def test_reassembler_accepts_parts_in_any_order_and_forgets_departed_senders():
    reassembler = Reassembler()
    parts = [{"text": t, "msg": 7, "part": i, "parts": 3} for i, t in enumerate(["ab", "cd", "ef"])]
    assert reassembler.add("s", parts[2]) is None
    assert reassembler.add("s", parts[0]) is None
    assert reassembler.add("s", parts[1]) == "abcdef"
    assert reassembler.add("s", {"text": "x", "msg": 8, "part": 0, "parts": 2}) is None
    assert reassembler.forget("s") == 1
    assert reassembler.forget("s") == 0


async def test_full_channel_makes_the_sender_wait_not_drop():
    layer = redis_layer(capacity=2)
    channel = await layer.new_channel()
    for n in range(2):
        await send_with_backpressure(layer, channel, {"type": "t", "n": n})
    blocked = asyncio.ensure_future(send_with_backpressure(layer, channel, {"type": "t", "n": 2}, patience=10))
    await asyncio.sleep(0.3)
    assert not blocked.done()  # waiting for room, not dropped
    assert (await layer.receive(channel))["n"] == 0
    await asyncio.wait_for(blocked, 5)
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [1, 2]
    await layer.flush()


async def test_receiver_that_never_drains_is_given_up_on():
    layer = redis_layer(capacity=1)
    channel = await layer.new_channel()
    await send_with_backpressure(layer, channel, {"type": "t"})
    with pytest.raises(ReceiverStuck):
        await send_with_backpressure(layer, channel, {"type": "t"}, patience=0.3)
    await layer.flush()
