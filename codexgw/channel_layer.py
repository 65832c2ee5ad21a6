"""The Redis channel layer, made to outlive a Redis outage or restart.

``channels_redis`` raises the client's connection error out of ``receive``, ``send`` and the
group calls. Out of ``receive`` that ends whoever reads: a consumer's application (its WebSocket
is closed with 1011) or an executor session's inbox reader (no bridge in another process is
heard again). Out of ``send`` it ends a ``LayerLink``'s pump with its batch of frames unsent. And
a restarted Redis has forgotten every group membership, so revocations and move notices would
reach nobody. Here:

* ``receive`` waits the outage out (retrying with backoff) instead of raising;
* ``send`` and ``group_send`` retry for ``outage_patience`` seconds, then raise ``ChannelFull``,
  which every sender already treats as "wait, then give up on the receiver" (close 1013);
* memberships added in this process are remembered and added again once Redis answers after an
  error.

A message that was in Redis when it restarted is gone with it; nothing here can bring it back
(see docs/reliability.md, *Redis restarted*).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.exceptions
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

logger = logging.getLogger(__name__)

OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError)
RETRY_FIRST = 0.05
RETRY_MAX = 1.0


class ResilientRedisChannelLayer(RedisChannelLayer):  # type: ignore[misc]  # channels_redis is untyped
    def __init__(self, *args: Any, outage_patience: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outage_patience = outage_patience
        self._memberships: dict[str, set[str]] = {}  # group -> this process's channels in it
        self._restoring: asyncio.Task[None] | None = None
        self.outages = 0

    # --- the outage ----------------------------------------------------------------------------

    def _lost(self, operation: str, error: BaseException) -> None:
        """An operation failed for want of Redis: note it once and restore groups when it is back."""
        if self._restoring is None or self._restoring.done():
            self.outages += 1
            logger.warning("channel layer: Redis unavailable (%s): %s; retrying", operation, error)
            self._restoring = asyncio.create_task(self._restore_groups(), name="channel layer restore")

    async def _restore_groups(self) -> None:
        """Once Redis answers again, add this process's memberships back (a restarted Redis lost
        them; adding an existing member again only refreshes it)."""
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            try:
                await self.connection(0).ping()
                for group, channels in list(self._memberships.items()):
                    for channel in list(channels):
                        await super().group_add(group, channel)
            except OUTAGE_ERRORS:
                continue
            logger.info("channel layer: Redis is back; group memberships restored")
            return

    async def _retrying(self, operation: str, call: Any) -> Any:
        deadline = time.monotonic() + self.outage_patience
        delay = RETRY_FIRST
        while True:
            try:
                return await call()
            except OUTAGE_ERRORS as error:
                self._lost(operation, error)
                if time.monotonic() >= deadline:
                    raise ChannelFull(f"Redis unavailable for {self.outage_patience:.0f}s") from error
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    # --- the layer's operations ----------------------------------------------------------------

    async def receive(self, channel: str) -> dict[str, Any]:
        delay = RETRY_FIRST
        while True:
            try:
                message: dict[str, Any] = await super().receive(channel)
                return message
            except OUTAGE_ERRORS as error:
                self._lost("receive", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._retrying("send", lambda: super(ResilientRedisChannelLayer, self).send(channel, message))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._retrying("group_send", lambda: super(ResilientRedisChannelLayer, self).group_send(group, message))

    async def group_add(self, group: str, channel: str) -> None:
        self._memberships.setdefault(group, set()).add(channel)
        await self._retrying("group_add", lambda: super(ResilientRedisChannelLayer, self).group_add(group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        channels = self._memberships.get(group)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._memberships[group]
        await self._retrying(
            "group_discard", lambda: super(ResilientRedisChannelLayer, self).group_discard(group, channel)
        )
