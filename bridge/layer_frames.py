"""Text frames over the channel layer: split above the layer's safe size, reassembled on the
other side; a full channel is waited out (backpressure), never dropped silently."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from bridge.protocol import LAYER_CHUNK_CHARS

logger = logging.getLogger(__name__)

_message_ids = itertools.count(1)
# How long a sender waits for a full channel to drain before giving up on its receiver.
FULL_CHANNEL_PATIENCE = 30.0


class ReceiverStuck(Exception):
    """The receiving channel stayed full for the sender's patience (FULL_CHANNEL_PATIENCE)."""


async def send_with_backpressure(
    layer: BaseChannelLayer, channel: str, message: dict[str, Any], patience: float = FULL_CHANNEL_PATIENCE
) -> None:
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            await layer.send(channel, message)
            return
        except ChannelFull:
            if time.monotonic() >= deadline:
                raise ReceiverStuck(channel) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)


async def send_text(layer: BaseChannelLayer, channel: str, message_type: str, text: str, **extra: Any) -> None:
    if len(text) <= LAYER_CHUNK_CHARS:
        await send_with_backpressure(layer, channel, {"type": message_type, "text": text, **extra})
        return
    message_id = next(_message_ids)
    parts = [text[i : i + LAYER_CHUNK_CHARS] for i in range(0, len(text), LAYER_CHUNK_CHARS)]
    for index, part in enumerate(parts):
        await send_with_backpressure(
            layer,
            channel,
            {"type": message_type, "text": part, "msg": message_id, "part": index, "parts": len(parts), **extra},
        )


class Reassembler:
    """Collects the parts of split messages; returns the whole text when the last part arrives."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, int], list[str | None]] = {}

    def add(self, sender: str, message: dict[str, Any]) -> str | None:
        if "parts" not in message:
            return str(message["text"])
        key = (sender, int(message["msg"]))
        parts = self._partial.setdefault(key, [None] * int(message["parts"]))
        parts[int(message["part"])] = str(message["text"])
        if any(part is None for part in parts):
            return None
        del self._partial[key]
        return "".join(part for part in parts if part is not None)

    def forget(self, sender: str) -> int:
        """Drop the unfinished messages of a departed sender; returns how many were lost."""
        keys = [key for key in self._partial if key[0] == sender]
        for key in keys:
            del self._partial[key]
        return len(keys)
