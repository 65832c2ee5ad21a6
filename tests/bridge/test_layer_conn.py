"""A connection over the channel layer (``bridge/layer_conn.py``) at its edges: a TUI that leaves
while the frames held for the owner are still going out, and an owner of an older version that
answers in messages of its own. On channels' in-memory layer, whose capacity the tests choose."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer

from appgateway import relay
from appgateway.rpc_filter import Frame
from bridge import layer_conn
from bridge.layer_frames import LINK_OUTBOX_CHARS


class Tui:
    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    async def deliver(self, frame: Frame) -> None:
        pass

    async def close_tui(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


async def test_a_tui_that_leaves_while_its_held_frames_go_out_stops_the_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = InMemoryChannelLayer(capacity=1)
    monkeypatch.setattr(relay, "_layer", lambda: layer)
    client = relay.RelayClient("conn-1", "ws-1", "owner-process", Tui())
    await client.open()
    assert client.owner is not None
    assert (await layer.receive("owner-process"))["type"] == relay.RELAY_OPEN
    # More than the link holds, sent before the owner answered: held, then sent after its answer
    # into a channel nobody reads (the owner is slow), so the flush waits.
    for _ in range(3):
        await client.send("x" * LINK_OUTBOX_CHARS)
    owner_inbox = await layer.new_channel()
    await layer.send(client.owner.inbox, {"type": layer_conn.OPENED, "inbox": owner_inbox})
    for _ in range(100):
        if client.owner._keepalive is not None:
            break
        await asyncio.sleep(0.01)
    keepalive = client.owner._keepalive
    assert keepalive is not None
    assert client.owner.link is None  # still flushing what was held

    await client.stop()

    assert keepalive.done()
    # The owner is told on its process channel that the TUI left.
    assert (await asyncio.wait_for(layer.receive("owner-process"), 1))["type"] == relay.RELAY_CANCEL


async def test_an_owner_that_answers_in_another_protocol_is_given_up_on_after_first_contact_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(layer_conn, "FIRST_CONTACT_LIMIT", 0.5)
    layer = InMemoryChannelLayer()
    connection = layer_conn.Connection(layer, await layer.new_channel(), on_stuck=lambda: asyncio.sleep(0))

    async def older_owner() -> None:
        # A process of the version before layer_conn: it acknowledged and keeps the relay alive
        # in its own messages, more often than the limit.
        for kind in ["appgw.opened", "appgw.alive", "appgw.alive", "appgw.alive", "appgw.alive"]:
            await layer.send(connection.inbox, {"type": kind, "inbox": "old"})
            await asyncio.sleep(0.2)

    talking = asyncio.create_task(older_owner())
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await connection.run(lambda frame: asyncio.sleep(0)) is None
    assert loop.time() - began < 0.8
    await talking
