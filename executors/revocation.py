"""The set of revoked turns: a capability token whose ``turn_id`` is in it is refused.

Bounded (``CXG_REVOKED_SET_CAPACITY``). An entry is kept until its ``exp`` (the latest expiry of
the turn's tokens) has passed: after that the tokens are refused as expired anyway, and the
Celery task ``prune_revoked_set`` removes it. When the set is full, the entries closest to
expiry are evicted first; evicting one that has not expired yet un-revokes a live turn, which
is logged and returned so the caller can see it.

Redis (the embedded default's in-process one too): one sorted set (member = turn_id, score =
exp) shared by every gateway process.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import cache

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from codexgw import redis as gwredis

logger = logging.getLogger(__name__)


# Add and evict atomically: ZADD, then pop the lowest scores while over capacity and count
# the popped entries that had not expired yet.
_ADD_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
local live = 0
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 2, #popped, 2 do
    if tonumber(popped[i]) >= tonumber(ARGV[4]) then live = live + 1 end
  end
end
return live
"""


class RevokedSet:
    def __init__(self, capacity: int) -> None:
        self._client = gwredis.sync_client()
        self._capacity = capacity
        self._key = gwredis.key("revoked")
        self._add = self._client.register_script(_ADD_SCRIPT)

    def add(self, turn_id: str, exp: int) -> int:
        """Revoke ``turn_id`` until ``exp``; returns how many unexpired entries were evicted."""
        return int(self._add(keys=[self._key], args=[turn_id, exp, self._capacity, int(time.time())]))

    def contains(self, turn_id: str) -> bool:
        return self._client.zscore(self._key, turn_id) is not None

    def prune(self, now: float | None = None) -> int:
        """Remove entries whose exp has passed; returns how many."""
        cutoff = time.time() if now is None else now
        return int(self._client.zremrangebyscore(self._key, "-inf", f"({cutoff}"))

    def size(self) -> int:
        return int(self._client.zcard(self._key))


@cache
def _revoked_set(redis_url: str, capacity: int) -> RevokedSet:
    return RevokedSet(capacity)  # one per Redis (the URL) and capacity


def revoked_set() -> RevokedSet:
    return _revoked_set(settings.REDIS_URL, settings.CXG_REVOKED_SET_CAPACITY)


def turn_group(turn_id: str) -> str:
    """The channel-layer group of the live bridges opened with this turn's tokens (group
    names are restricted to a short ASCII alphabet, turn ids are not)."""
    return "turn." + hashlib.sha256(turn_id.encode()).hexdigest()[:40]


def revoke_turn(turn_id: str, exp: int) -> None:
    """Refuse the turn's tokens from now on and close the bridges already open with them."""
    evicted_live = revoked_set().add(turn_id, exp)
    if evicted_live:
        logger.warning(
            "revoked set full: evicted unexpired revocations",
            extra={"evicted_live": evicted_live, "capacity": settings.CXG_REVOKED_SET_CAPACITY},
        )
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(turn_group(turn_id), {"type": "bridge.revoke"})
