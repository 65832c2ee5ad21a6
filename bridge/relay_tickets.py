"""Byte-relay tickets (reference §5): minting one (``create_ticket``, capped per workspace), what
a ticket looks like, and the relay's Redis keys (``key``). The transfer itself: ``bridge.relay``.

Redis, under ``<CODEXGW_REDIS_PREFIX>relay:``: ``t:<ticket>``, the ticket's hash (its fields and
states are ``bridge.relay``'s), and ``w:<workspace>``, a sorted set of the workspace's live
tickets scored by expiry: the cap counts its members after dropping the expired ones.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from django.conf import settings

from codexgw import redis as gwredis

TICKET_PREFIX = "rly_"
MAX_TTL_SECONDS = 24 * 3600
# Keys outlive the ticket by this much, so a side that hits the deadline still finds them.
KEY_GRACE_MS = 30_000


class CapReached(Exception):
    pass


def enabled() -> bool:
    """The relay needs a public base URL for its tickets and Redis for their state."""
    return bool(settings.CXG_PUBLIC_HTTPS_BASE_URL and settings.REDIS_URL)


def relay_url(ticket: str) -> str:
    return settings.CXG_PUBLIC_HTTPS_BASE_URL.rstrip("/") + "/relay/" + ticket


def is_ticket(value: str) -> bool:
    body = value.removeprefix(TICKET_PREFIX)
    return (
        value.startswith(TICKET_PREFIX)
        and len(body) == 43
        and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in body)
    )


def key(kind: str, name: str) -> str:
    return gwredis.key("relay", kind, name)


# KEYS: workspace set, ticket hash. ARGV: ticket, cap, ttl ms, grace ms, workspace, source,
# dest, max_bytes. Returns the expiry (ms) or 0 when the workspace is at its cap.
_CREATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local expires = now + tonumber(ARGV[3])
local keep = expires + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or now + ttl < keep then redis.call('PEXPIREAT', KEYS[1], keep) end
redis.call('HSET', KEYS[2], 'workspace', ARGV[5], 'source', ARGV[6], 'dest', ARGV[7], 'max_bytes', ARGV[8],
  'expires', expires, 'state', 'open', 'put', '0', 'get', '0')
redis.call('PEXPIREAT', KEYS[2], keep)
return expires
"""


@dataclass(frozen=True)
class Ticket:
    ticket: str
    expires_at: datetime

    @property
    def url(self) -> str:
        return relay_url(self.ticket)


@cache
def _create_script(client: redis.Redis) -> Any:
    return client.register_script(_CREATE)


def create_ticket(workspace_id: str, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int) -> Ticket:
    """A new ticket; ``CapReached`` when the workspace has ``CXG_RELAY_MAX_PER_WORKSPACE``
    pending or running relays. ``ttl_seconds`` ≤ 0 means ``CXG_RELAY_DEFAULT_TTL``."""
    client = gwredis.sync_client()
    ttl = ttl_seconds if ttl_seconds > 0 else settings.CXG_RELAY_DEFAULT_TTL
    ticket = TICKET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    expires = int(
        _create_script(client)(
            keys=[key("w", workspace_id), key("t", ticket)],
            args=[
                ticket,
                settings.CXG_RELAY_MAX_PER_WORKSPACE,
                int(ttl * 1000),
                KEY_GRACE_MS,
                workspace_id,
                source_exe_id,
                dest_exe_id,
                max_bytes,
            ],
        )
    )
    if not expires:
        raise CapReached(workspace_id)
    return Ticket(ticket=ticket, expires_at=datetime.fromtimestamp(expires / 1000, UTC))
