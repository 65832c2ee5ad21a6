"""The gateway's consumers read their socket and their channel without Channels' per-message
task (``bridge.consumers.GatewayConsumer.__call__``): one message is still handled at a time, and
a handler's error on the channel's side still ends the connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from bridge.consumers import GatewayConsumer
from tests.e2e.harness import async_wait_for

pytestmark = pytest.mark.usefixtures("fresh_channel_layer")


class Recorder(GatewayConsumer):
    """Records what it handles; a ``slow.notice`` waits for ``release``, a ``bad.notice`` fails."""

    def __init__(self, events: list[str], channel: asyncio.Future[str], release: asyncio.Event) -> None:
        super().__init__()
        self.events, self.channel, self.release = events, channel, release

    async def connect(self) -> None:
        await self.accept()
        self.channel.set_result(self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        self.events.append(f"frame {text_data}")
        await self.send(text_data=f"echo {text_data}")

    async def slow_notice(self, message: dict[str, Any]) -> None:
        self.events.append("slow begins")
        await self.release.wait()
        self.events.append("slow ends")

    async def bad_notice(self, message: dict[str, Any]) -> None:
        self.events.append("bad begins")
        await asyncio.sleep(0.2)
        raise RuntimeError("handler failed")


async def connected() -> tuple[WebsocketCommunicator, list[str], str, asyncio.Event]:
    events: list[str] = []
    channel: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    communicator = WebsocketCommunicator(Recorder.as_asgi(events=events, channel=channel, release=release), "/x")
    ok, _ = await communicator.connect()
    assert ok
    return communicator, events, await channel, release


async def handling(channel: str, kind: str, events: list[str]) -> None:
    """Send the consumer a channel message and return once its handler has begun."""
    layer = get_channel_layer()
    assert layer is not None
    await layer.send(channel, {"type": kind})
    assert await async_wait_for(lambda: events, 2)


async def test_a_frame_waits_for_the_channel_message_being_handled() -> None:
    communicator, events, channel, release = await connected()
    await handling(channel, "slow.notice", events)
    await communicator.send_to(text_data="one")
    await asyncio.sleep(0.2)
    assert events == ["slow begins"]
    release.set()
    assert await communicator.receive_from(timeout=5) == "echo one"
    assert events == ["slow begins", "slow ends", "frame one"]
    await communicator.disconnect()


async def test_a_failing_channel_handler_ends_the_connection_before_the_next_frame() -> None:
    communicator, events, channel, _ = await connected()
    await handling(channel, "bad.notice", events)
    await communicator.send_to(text_data="waiting")  # for its turn when the handler fails
    with pytest.raises(RuntimeError, match="handler failed"):
        await communicator.wait(timeout=5)
    assert events == ["bad begins"]


async def test_frames_are_handled_in_order_while_the_channel_is_quiet() -> None:
    communicator, events, _, _ = await connected()
    for n in range(50):
        await communicator.send_to(text_data=str(n))
    assert [await communicator.receive_from(timeout=5) for _ in range(50)] == [f"echo {n}" for n in range(50)]
    assert events == [f"frame {n}" for n in range(50)]
    await communicator.disconnect()
