"""Which gateway process holds each executor's WebSocket, shared by every process.

An entry names the holder's channel-layer channel and a connection id. It expires unless the
holder refreshes it (``CXG_PRESENCE_TTL``), so a process that dies without a goodbye stops
counting as the executor's holder within one TTL. The newest connection wins: ``claim``
replaces any holder and returns it, and ``release``/``refresh`` only act while the caller is
still the holder, so an evicted connection can never clobber its successor's entry.

Redis (the embedded default's in-process one too): one key per executor
(``<prefix>presence:<exe_id>``) holding JSON, with a TTL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache

from django.conf import settings

from codexgw import redis as gwredis


@dataclass(frozen=True)
class Holder:
    channel_name: str
    connection_id: str
    since: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Holder:
        data = json.loads(raw)
        return cls(channel_name=data["channel_name"], connection_id=data["connection_id"], since=data["since"])


# Act only while ARGV[1] is still the holder's connection id (JSON field "connection_id"). A
# refresh with ARGV[4] (the holder's entry) puts a vanished entry back.
_IF_HOLDER = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  if ARGV[2] == 'refresh' and ARGV[4] and ARGV[4] ~= '' then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
    return 1
  end
  return 0
end
if cjson.decode(raw)['connection_id'] ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


class PresenceStore:
    def __init__(self, ttl: float) -> None:
        self._client = gwredis.sync_client()
        self._ttl_ms = int(ttl * 1000)
        self._if_holder = self._client.register_script(_IF_HOLDER)

    @staticmethod
    def _key(exe_id: str) -> str:
        return gwredis.key("presence", exe_id)

    def claim(self, exe_id: str, holder: Holder) -> Holder | None:
        """Make ``holder`` the executor's holder; returns the holder it replaced, if any."""
        previous = self._client.set(self._key(exe_id), holder.to_json(), px=self._ttl_ms, get=True)
        return Holder.from_json(str(previous)) if isinstance(previous, str) and previous else None

    def release(self, exe_id: str, connection_id: str) -> bool:
        """Remove the entry if ``connection_id`` still holds it."""
        return bool(self._if_holder(keys=[self._key(exe_id)], args=[connection_id, "release", 0, ""]))

    def refresh(self, exe_id: str, connection_id: str, holder: Holder | None = None) -> bool:
        """Extend the entry's TTL if ``connection_id`` still holds it. With ``holder`` (the
        caller's own entry), an entry that is gone altogether (a restarted Redis lost it, or it
        expired) is put back: nobody else claimed the executor meanwhile."""
        entry = holder.to_json() if holder is not None and holder.connection_id == connection_id else ""
        return bool(self._if_holder(keys=[self._key(exe_id)], args=[connection_id, "refresh", self._ttl_ms, entry]))

    def get(self, exe_id: str) -> Holder | None:
        raw = self._client.get(self._key(exe_id))
        return Holder.from_json(raw) if isinstance(raw, str) and raw else None

    def online(self, exe_ids: Iterable[str]) -> set[str]:
        ids = list(exe_ids)
        if not ids:
            return set()
        values = self._client.mget([self._key(exe_id) for exe_id in ids])
        return {exe_id for exe_id, value in zip(ids, values, strict=True) if value}

    def all_online(self) -> set[str]:
        prefix = self._key("")
        return {key[len(prefix) :] for key in self._client.scan_iter(match=prefix + "*", count=1000)}


@cache
def _presence_store(redis_url: str, ttl: float) -> PresenceStore:
    return PresenceStore(ttl)  # one per Redis (the URL) and TTL


def presence_store() -> PresenceStore:
    return _presence_store(settings.REDIS_URL, settings.CXG_PRESENCE_TTL)
