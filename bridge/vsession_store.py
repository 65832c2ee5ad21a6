"""Each executor's virtual-session table, shared by every gateway process so that the process an
executor reconnects to (after its holder died or drained) can take its bridges' sessions over.

Redis: one hash per executor (``<prefix>vsessions:<exe_id>``) with the field ``owner`` (the
inbox channel of the executor session that may write), ``next_handle`` (the next gateway-unique
integer handle) and one ``vs:<session id>`` field per virtual session (JSON, see
``VirtualSession.snapshot``). Claiming makes the caller the owner and returns the table in one
step; a write from anyone else is refused, so a process that lost the executor cannot overwrite
its successor's table.

A restarted Redis has lost the table altogether (no ``owner``): that is not another process
claiming it. The owner keeps a copy of what it stored (``_copies``) and writes the whole table
back, owner field included, unless someone claimed it meanwhile; the exec-server session id
goes back with it (``exec_session_store.restore``).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from asgiref.sync import sync_to_async

from bridge import exec_session_store
from bridge.multiplexer import TableChanges
from bridge.protocol import JSON
from codexgw import redis as gwredis

# As long as the exec-server session id is kept (bridge/exec_session_store.py); refreshed by
# every write. Sessions of an executor that never comes back vanish with it.
KEEP_SECONDS = 7 * 24 * 3600

_SESSION_FIELD = "vs:"

logger = logging.getLogger(__name__)

_CLAIM = """
local previous = redis.call('HGET', KEYS[1], 'owner')
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {previous or '', redis.call('HGETALL', KEYS[1])}
"""

# ARGV: owner, ttl, next_handle, number of upserts, then field/value pairs, then deleted fields.
# Returns 1 when written, 0 when another owner holds the table, -1 when the table is gone.
_WRITE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  return -1
end
if owner ~= ARGV[1] then
  return 0
end
local upserts = tonumber(ARGV[4])
local i = 5
for _ = 1, upserts do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
redis.call('HSET', KEYS[1], 'next_handle', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


# ARGV: owner, ttl, then field/value pairs: the whole table, written back unless claimed meanwhile.
_RESTORE = """
if redis.call('HGET', KEYS[1], 'owner') then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
local i = 3
while i < #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass
class Claimed:
    previous_owner: str | None
    sessions: dict[str, JSON] = field(default_factory=dict)
    next_handle: int = 1


_copies_lock = threading.Lock()
# What this process stored as the owner of each executor's table: (owner, fields).
_copies: dict[str, tuple[str, dict[str, str]]] = {}


def _key(exe_id: str) -> str:
    return gwredis.key("vsessions", exe_id)


def _parse(previous: str, fields: dict[str, str]) -> Claimed:
    claimed = Claimed(previous_owner=previous or None)
    for name, raw in fields.items():
        if name.startswith(_SESSION_FIELD):
            claimed.sessions[name[len(_SESSION_FIELD) :]] = json.loads(raw)
        elif name == "next_handle":
            claimed.next_handle = int(raw)
    return claimed


def _claim(exe_id: str, owner: str) -> Claimed:
    client = gwredis.sync_client()
    previous, flat = client.eval(_CLAIM, 1, _key(exe_id), owner, KEEP_SECONDS)
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    with _copies_lock:
        _copies[exe_id] = (owner, {name: value for name, value in fields.items() if name != "owner"})
    return _parse(previous, fields)


def _write(exe_id: str, owner: str, changes: TableChanges) -> bool:
    """Store ``changes``; False if ``owner`` no longer owns the table (nothing is written)."""
    upserts = {_SESSION_FIELD + vsid: json.dumps(data, separators=(",", ":")) for vsid, data in changes.upserts.items()}
    deletes = [_SESSION_FIELD + vsid for vsid in changes.deletes]
    client = gwredis.sync_client()
    args: list[Any] = [owner, KEEP_SECONDS, changes.next_handle, len(upserts), *chain.from_iterable(upserts.items())]
    with _copies_lock:
        copy = _copies.get(exe_id)
        if copy is not None and copy[0] == owner:
            copy[1].update(upserts)
            for name in deletes:
                copy[1].pop(name, None)
            copy[1]["next_handle"] = str(changes.next_handle)
    written = int(client.eval(_WRITE, 1, _key(exe_id), *args, *deletes))
    if written == -1:
        written = _restore(client, exe_id, owner)
    if written != 1:
        with _copies_lock:
            if _copies.get(exe_id, ("",))[0] == owner:
                del _copies[exe_id]
    return written == 1


def _restore(client: Any, exe_id: str, owner: str) -> int:
    """The table is gone (Redis restarted, or was flushed): write this owner's copy back."""
    with _copies_lock:
        copy = _copies.get(exe_id)
        fields = dict(copy[1]) if copy is not None and copy[0] == owner else None
    if fields is None:
        return 0  # no copy (this process never claimed it): not ours to recreate
    written = int(client.eval(_RESTORE, 1, _key(exe_id), owner, KEEP_SECONDS, *chain.from_iterable(fields.items())))
    if written == 1:
        exec_session_store.restore(exe_id)
        logger.warning(
            "virtual-session table was gone from Redis (restarted?); written back from this process's copy",
            extra={"exe_id": exe_id, "sessions": sum(name.startswith(_SESSION_FIELD) for name in fields)},
        )
    return written


claim = sync_to_async(_claim, thread_sensitive=False)
write = sync_to_async(_write, thread_sensitive=False)

__all__ = ["Claimed", "claim", "write"]
