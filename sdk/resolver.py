"""Environment names → executor ids for one workspace (app-gateway §4.4, exec-gateway §6.5).

Tools take the names the workspace gave its executors; the source list is the workspace's bound
and online executors. Lookups are served from a cache that is refreshed at most once per ``ttl``
(a failed refresh counts too, so a wrong name or an outage cannot make every call fetch), with
concurrent refreshes coalesced into one fetch. If a refresh fails, names known before still
resolve. ``llm_view`` always fetches and never shows exe ids to the model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async

from executors import services

Binding = dict[str, Any]
Fetch = Callable[[], Awaitable[list[Binding]]]


class ResolveError(LookupError):
    """``str()`` is the message for the model."""


class NameResolver:
    def __init__(self, fetch: Fetch, ttl: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self._clock = clock
        self._names: dict[str, str] = {}
        self._refreshed_at: float | None = None
        self._inflight: asyncio.Future[list[Binding]] | None = None

    async def resolve(self, name: str) -> str:
        """The exe_id of the environment called ``name``; ``ResolveError`` if there is none."""
        if not name:
            raise ResolveError("env name required")
        if not self._fresh():
            try:
                await self._refresh()
            except Exception as error:
                if name not in self._names:
                    raise ResolveError(f"environment list unavailable: {error}") from error
        exe_id = self._names.get(name)
        if exe_id is None:
            raise ResolveError(f"no environment named {name!r} (run list_environments to see what's available)")
        return exe_id

    async def llm_view(self) -> list[Binding]:
        """``[{name, description?, is_default?, last_seen?}]``, fetched now; raises the fetch's
        error."""
        bindings = await self._refresh()
        view = []
        for binding in bindings:
            if not binding.get("name"):
                continue
            entry: Binding = {"name": binding["name"]}
            if binding.get("description"):
                entry["description"] = binding["description"]
            if binding.get("is_default"):
                entry["is_default"] = True
            if binding.get("last_seen_at"):
                entry["last_seen"] = binding["last_seen_at"]
            view.append(entry)
        return view

    def _fresh(self) -> bool:
        return self._refreshed_at is not None and self._clock() - self._refreshed_at < self.ttl

    async def _refresh(self) -> list[Binding]:
        """One fetch shared by everyone who asks while it runs."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_and_store())
            self._inflight.add_done_callback(self._fetched)
        # Shielded: a caller that gives up does not cancel the fetch the others wait for.
        return await asyncio.shield(self._inflight)

    def _fetched(self, inflight: asyncio.Future[list[Binding]]) -> None:
        self._inflight = None
        if not inflight.cancelled():
            inflight.exception()  # retrieved here in case every waiter gave up

    async def _fetch_and_store(self) -> list[Binding]:
        try:
            bindings = await self._fetch()
        finally:
            self._refreshed_at = self._clock()
        self._names = {b["name"]: b["exe_id"] for b in bindings if b.get("name") and b.get("exe_id")}
        return bindings


def bindings_fetcher(workspace_id: str) -> Fetch:
    """The in-process source: the workspace's bound executors that are online now."""

    async def fetch() -> list[Binding]:
        return await database_sync_to_async(services.list_bindings)(workspace_id, online_only=True)

    return fetch
