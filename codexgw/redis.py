"""The process's Redis clients (sync and async). Every shared store goes through them.

With ``REDIS_URL`` set they reach that Redis. Without it (the embedded default: one process, no
server) they reach one in-process ``fakeredis`` server (with Lua through lupa), so the embedded
default runs the very same store code as a deployment; ``embedded()`` tells which.
"""

from __future__ import annotations

from functools import cache

import fakeredis
import redis
import redis.asyncio
from django.conf import settings

SOCKET_TIMEOUT = 5.0


def key(*parts: str) -> str:
    """A Redis key under the gateway's prefix (``CODEXGW_REDIS_PREFIX``)."""
    return settings.CODEXGW_REDIS_PREFIX + ":".join(parts)


def embedded() -> bool:
    """No Redis server configured: the stores live in this process (``fakeredis``)."""
    return not settings.REDIS_URL


def sync_client() -> redis.Redis:
    """The process-wide sync client (thread-safe connection pool)."""
    return _embedded_sync_client() if embedded() else _sync_client(settings.REDIS_URL)


@cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )


@cache
def _embedded_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@cache
def _embedded_sync_client() -> redis.Redis:
    return fakeredis.FakeRedis(server=_embedded_server(), decode_responses=True)


def async_client() -> redis.asyncio.Redis:
    """A new asyncio client; asyncio clients are bound to their event loop, so callers own it."""
    if embedded():
        return fakeredis.FakeAsyncRedis(server=_embedded_server(), decode_responses=True)
    return redis.asyncio.Redis.from_url(
        settings.REDIS_URL, decode_responses=True, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )
