"""Which gateway process owns a workspace's app-server: one lease per workspace, cluster-wide.

A lease ``<prefix>appserver:<workspace_id>`` names the owning gateway process, its process
channel, the child's pid and loopback URL. It is taken atomically (a process never takes a lease
another live process holds), refreshed by its owner (``appgateway.supervisor``) and expires when
the owner dies, so another process can take over. Redis holds the leases (the embedded
default's in-process one too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import redis.asyncio
from django.conf import settings

from codexgw import redis as gwredis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseInfo:
    process_id: str
    channel_name: str
    pid: int  # the child's; 0 while it is starting
    ws_url: str  # "" while starting
    started_at: float
    last_activity: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> LeaseInfo:
        data = json.loads(raw)
        return cls(
            process_id=str(data["process_id"]),
            channel_name=str(data["channel_name"]),
            pid=int(data["pid"]),
            ws_url=str(data["ws_url"]),
            started_at=float(data["started_at"]),
            last_activity=float(data["last_activity"]),
        )


@dataclass(frozen=True)
class LiveSession:
    """One workspace's app-server, as the admin lists it (cluster-wide, from the leases)."""

    workspace_id: str
    process_id: str
    pid: int
    ws_url: str
    started_at: float
    last_activity: float

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started_at)


# Take the lease unless another process holds it; returns the holder's JSON, or nil when taken.
_ACQUIRE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['process_id'] ~= ARGV[2] then return raw end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
"""
# Rewrite our lease (re-taking it if it expired), keeping the later last_activity; nil if lost.
_REFRESH = """
local new = cjson.decode(ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw then
  local current = cjson.decode(raw)
  if current['process_id'] ~= new['process_id'] then return false end
  if current['last_activity'] > new['last_activity'] then new['last_activity'] = current['last_activity'] end
end
local encoded = cjson.encode(new)
redis.call('SET', KEYS[1], encoded, 'PX', ARGV[2])
return encoded
"""
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['process_id'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
_BUMP = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local current = cjson.decode(raw)
if tonumber(ARGV[1]) <= current['last_activity'] then return 0 end
current['last_activity'] = tonumber(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(current), 'KEEPTTL')
return 1
"""


def _lease_key(workspace_id: str) -> str:
    return gwredis.key("appserver", workspace_id)


class LeaseStore:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._bump = client.register_script(_BUMP)

    @staticmethod
    def _ttl_ms() -> int:
        return int(settings.CXG_APP_SERVER_LEASE_TTL * 1000)

    async def acquire(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        """Take the lease (or re-take our own); returns the other holder if it is taken."""
        holder = await self._acquire(
            keys=[_lease_key(workspace_id)], args=[lease.to_json(), lease.process_id, self._ttl_ms()]
        )
        return LeaseInfo.from_json(holder) if isinstance(holder, str) and holder else None

    async def refresh(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        """Rewrite and extend our lease (keeping the later last_activity); None if another process holds it."""
        stored = await self._refresh(keys=[_lease_key(workspace_id)], args=[lease.to_json(), self._ttl_ms()])
        return LeaseInfo.from_json(stored) if isinstance(stored, str) and stored else None

    async def release(self, workspace_id: str, process_id: str) -> None:
        await self._release(keys=[_lease_key(workspace_id)], args=[process_id])

    async def get(self, workspace_id: str) -> LeaseInfo | None:
        raw = await self._client.get(_lease_key(workspace_id))
        return LeaseInfo.from_json(raw) if isinstance(raw, str) and raw else None

    async def bump_activity(self, workspace_id: str, at: float) -> None:
        """Raise the lease's last_activity to ``at`` (a touch seen by a non-owner)."""
        await self._bump(keys=[_lease_key(workspace_id)], args=[repr(at)])

    async def close(self) -> None:
        await self._client.aclose()


def open_store() -> LeaseStore:
    """The lease store for the running event loop (an asyncio client is bound to its loop)."""
    return LeaseStore(gwredis.async_client())


def lease_of(workspace_id: str) -> LeaseInfo | None:
    """The workspace's live lease (blocking; for sync callers)."""
    raw = gwredis.sync_client().get(_lease_key(workspace_id))
    return LeaseInfo.from_json(raw) if isinstance(raw, str) and raw else None


def all_leases() -> dict[str, LeaseInfo]:
    """Every live lease in the cluster (blocking; for sync callers)."""
    client = gwredis.sync_client()
    prefix = _lease_key("")
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    leases: dict[str, LeaseInfo] = {}
    for key, raw in zip(keys, client.mget(keys) if keys else [], strict=True):
        if isinstance(raw, str) and raw:
            leases[key[len(prefix) :]] = LeaseInfo.from_json(raw)
    return leases


def live_sessions() -> list[LiveSession]:
    """Every workspace app-server in the cluster, by workspace (blocking, like ``all_leases``)."""
    return [
        LiveSession(ws, lease.process_id, lease.pid, lease.ws_url, lease.started_at, lease.last_activity)
        for ws, lease in sorted(all_leases().items())
    ]


class HeldLeases:
    """The leases this process holds on one event loop (from before its child starts), each with
    the last_activity the store last gave back: touches other processes merged into it."""

    def __init__(self, store: LeaseStore, process_id: str) -> None:
        self.store = store
        self.process_id = process_id
        self._held: dict[str, LeaseInfo] = {}
        self._merged_activity: dict[str, float] = {}

    def __contains__(self, workspace_id: str) -> bool:
        return workspace_id in self._held

    def merged_activity(self, workspace_id: str) -> float:
        return self._merged_activity.get(workspace_id, 0.0)

    async def take(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        """Take the workspace's lease; returns the other process's lease instead when it holds it."""
        holder = await self.store.acquire(workspace_id, lease)
        if holder is None:
            self._held[workspace_id] = lease
        return holder

    async def rewrite(self, workspace_id: str, lease: LeaseInfo) -> bool:
        """Replace our lease (once the child runs); False, and no longer held, when it was lost."""
        if await self.store.refresh(workspace_id, lease) is None:
            self._held.pop(workspace_id, None)
            return False
        self._held[workspace_id] = lease
        return True

    async def still_ours(self, workspace_id: str) -> bool:
        lease = self._held.get(workspace_id)
        return lease is not None and await self.store.refresh(workspace_id, lease) is not None

    def forget(self, workspace_id: str) -> None:
        """Stop holding a lease that another process has taken (nothing to release)."""
        self._held.pop(workspace_id, None)

    async def release(self, workspace_id: str) -> None:
        self._held.pop(workspace_id, None)
        self._merged_activity.pop(workspace_id, None)
        try:
            await self.store.release(workspace_id, self.process_id)
        except Exception:
            logger.exception("could not release the app-server lease", extra={"workspace_id": workspace_id})

    async def refresh_all(self, touched_at: Callable[[str], float], lost: Callable[[str], None]) -> None:
        """Extend every lease held, raising its last_activity to this process's latest touch;
        ``lost(workspace_id)`` for each one another process holds now."""
        for workspace_id, lease in list(self._held.items()):
            current = replace(lease, last_activity=max(lease.last_activity, touched_at(workspace_id)))
            stored = await self.store.refresh(workspace_id, current)
            if stored is None:
                logger.error("lost the app-server lease to another process", extra={"workspace_id": workspace_id})
                lost(workspace_id)
                continue
            self._merged_activity[workspace_id] = stored.last_activity
