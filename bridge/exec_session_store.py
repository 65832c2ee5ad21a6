"""The executor's exec-server session id and environment info, shared by every gateway process
so whichever process the executor reconnects to can resume the same session (and its running
processes). Redis key ``<prefix>execsession:<exe_id>``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from asgiref.sync import sync_to_async

from bridge.protocol import JSON
from codexgw import redis as gwredis

# Long enough to outlive any reconnect; refreshed on every handshake.
KEEP_SECONDS = 7 * 24 * 3600

# The last value this process saved per executor, to put back after a Redis restart lost it.
_saved_here: dict[str, str] = {}


@dataclass(frozen=True)
class SavedSession:
    session_id: str
    environment_info: JSON


def _key(exe_id: str) -> str:
    return gwredis.key("execsession", exe_id)


def _load(exe_id: str) -> SavedSession | None:
    raw = gwredis.sync_client().get(_key(exe_id))
    if not isinstance(raw, str):
        return None
    data = json.loads(raw)
    return SavedSession(session_id=data["session_id"], environment_info=data["environment_info"])


def _save(exe_id: str, saved: SavedSession) -> None:
    raw = json.dumps({"session_id": saved.session_id, "environment_info": saved.environment_info})
    _saved_here[exe_id] = raw
    gwredis.sync_client().set(_key(exe_id), raw, ex=KEEP_SECONDS)


def restore(exe_id: str) -> None:
    """Put back what this process last saved for ``exe_id`` if the key is gone (a restarted
    Redis); a value saved since by anyone is left alone. Sync: called from store threads."""
    raw = _saved_here.get(exe_id)
    if raw is not None:
        gwredis.sync_client().set(_key(exe_id), raw, ex=KEEP_SECONDS, nx=True)


load = sync_to_async(_load, thread_sensitive=False)
save = sync_to_async(_save, thread_sensitive=False)

__all__ = ["SavedSession", "load", "save"]
