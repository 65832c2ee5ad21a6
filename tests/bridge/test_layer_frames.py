"""Frames over the real Redis channel layer: split and reassembled, backpressure on a full channel."""

from __future__ import annotations

import asyncio
import random
import string
from typing import Any

import pytest

from bridge.layer_frames import LayerLink, Reassembler, ReceiverStuck, send_text, send_with_backpressure
from bridge.protocol import LAYER_CHUNK_CHARS
from tests.codexgw.test_channel_layer import layer as redis_layer


async def test_large_text_is_split_and_reassembled_exactly():
    layer = redis_layer()
    channel = await layer.new_channel()
    text = "".join(random.choices(string.ascii_letters + "é€😀", k=3 * LAYER_CHUNK_CHARS + 17))
    await send_text(layer, channel, "bridge.frame", text, conn="c1")
    reassembler = Reassembler()
    received: list[str] = []
    parts = 0
    while not received:
        message = await asyncio.wait_for(layer.receive(channel), 5)
        assert len(message["text"]) <= LAYER_CHUNK_CHARS
        assert message["conn"] == "c1"
        parts += 1
        received = reassembler.add_all("sender", message)
    assert parts == 4
    assert received == [text]
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
    assert reassembler.add_all("s", parts[2]) == []
    assert reassembler.add_all("s", parts[0]) == []
    assert reassembler.add_all("s", parts[1]) == ["abcdef"]
    assert reassembler.add_all("s", {"text": "x", "msg": 8, "part": 0, "parts": 2}) == []
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


async def _receive_texts(layer, channel, reassembler, sender="s") -> tuple[list[str], dict[str, Any]]:
    message = await asyncio.wait_for(layer.receive(channel), 5)
    if "text" not in message and "texts" not in message:
        return [], message
    return reassembler.add_all(sender, message), message


async def test_link_batches_frames_queued_behind_a_send_in_order_and_closes_last():
    layer = redis_layer()
    channel = await layer.new_channel()
    link = LayerLink(layer, channel, "bridge.frame", extra={"conn": "c1"})
    big = "x" * (2 * LAYER_CHUNK_CHARS + 5)
    texts = [f'{{"n":{n}}}' for n in range(300)]
    texts.insert(150, big)
    for text in texts:
        await link.send(text)
    link.finish({"type": "bridge.close", "code": 1000})
    reassembler = Reassembler()
    received: list[str] = []
    messages = 0
    while True:
        got, message = await _receive_texts(layer, channel, reassembler)
        messages += 1
        if message["type"] == "bridge.close":
            break
        assert message["conn"] == "c1"
        assert sum(len(t) for t in message.get("texts", [message.get("text", "")])) <= LAYER_CHUNK_CHARS
        received.extend(got)
    assert received == texts  # exact order, nothing lost, close after everything
    assert messages < 20  # batched: not one layer message per frame
    await link.drained()
    assert link.sent == link.queued == len(texts)  # settled: nothing left behind
    await layer.flush()


async def test_link_sends_a_lone_frame_at_once_as_a_plain_message():
    layer = redis_layer()
    channel = await layer.new_channel()
    link = LayerLink(layer, channel, "bridge.frame")
    await link.send('{"id":1}')
    message = await asyncio.wait_for(layer.receive(channel), 1)
    assert message == {"type": "bridge.frame", "text": '{"id":1}'}
    await layer.flush()


async def test_link_outbox_is_bounded_the_sender_waits_not_drops():
    layer = redis_layer(capacity=1)
    channel = await layer.new_channel()
    link = LayerLink(layer, channel, "t", limit=100, patience=10)
    await link.send("a" * 60)  # goes out: fills the channel
    await link.drained()
    await link.send("b" * 60)  # in flight, waiting for room in the channel
    blocked = asyncio.ensure_future(link.send("c" * 60))
    await asyncio.sleep(0.3)
    assert not blocked.done()  # outbox full: waits
    reassembler = Reassembler()
    received: list[str] = []
    while len(received) < 3:
        got, _ = await _receive_texts(layer, channel, reassembler)
        received.extend(got)
    await asyncio.wait_for(blocked, 5)
    assert received == ["a" * 60, "b" * 60, "c" * 60]
    await layer.flush()


async def test_link_gives_up_on_a_stuck_receiver_and_reports_it_once():
    layer = redis_layer(capacity=1)
    channel = await layer.new_channel()
    stuck: list[bool] = []

    async def on_stuck() -> None:
        stuck.append(True)

    link = LayerLink(layer, channel, "t", limit=10, patience=0.3, on_stuck=on_stuck)
    await link.send("first")  # fills the channel
    await link.drained()
    await link.send("second-1")  # stuck in flight
    waiting = asyncio.ensure_future(link.send("third-long"))  # outbox full: waits
    with pytest.raises(ReceiverStuck):
        await asyncio.wait_for(waiting, 5)
    await link.drained()
    assert stuck == [True]
    with pytest.raises(ReceiverStuck):
        await link.send("later")
    await layer.flush()


async def test_abandoned_link_discards_its_queue_without_reporting():
    layer = redis_layer(capacity=1)
    channel = await layer.new_channel()
    stuck: list[bool] = []

    async def on_stuck() -> None:
        stuck.append(True)

    link = LayerLink(layer, channel, "t", patience=0.3, on_stuck=on_stuck)
    await link.send("first")
    await link.drained()
    await link.send("in-flight")
    await asyncio.sleep(0.05)  # the pump took it and waits for room
    await link.send("queued")
    assert len(link.abandon()) == 1
    await link.send("after")  # ignored
    await link.drained()
    assert stuck == []
    await layer.flush()


def test_reassembler_add_all_handles_batches_single_texts_and_parts():
    reassembler = Reassembler()
    assert reassembler.add_all("s", {"texts": ["a", "b"]}) == ["a", "b"]
    assert reassembler.add_all("s", {"text": "c"}) == ["c"]
    assert reassembler.add_all("s", {"text": "d", "msg": 1, "part": 0, "parts": 2}) == []
    assert reassembler.add_all("s", {"text": "e", "msg": 1, "part": 1, "parts": 2}) == ["de"]
