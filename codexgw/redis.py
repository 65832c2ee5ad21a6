"""The process's Redis clients (sync and async), or None on the embedded default."""

from __future__ import annotations

from functools import cache

import redis
import redis.asyncio
from django.conf import settings

SOCKET_TIMEOUT = 5.0


def key(*parts: str) -> str:
    """A Redis key under the gateway's prefix (``CODEXGW_REDIS_PREFIX``)."""
    return settings.CODEXGW_REDIS_PREFIX + ":".join(parts)


def sync_client() -> redis.Redis | None:
    """The process-wide sync client (thread-safe connection pool) for ``REDIS_URL``."""
    return _sync_client(settings.REDIS_URL) if settings.REDIS_URL else None


@cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )


def async_client() -> redis.asyncio.Redis | None:
    """A new asyncio client; asyncio clients are bound to their event loop, so callers own it."""
    if not settings.REDIS_URL:
        return None
    return redis.asyncio.Redis.from_url(
        settings.REDIS_URL, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )
