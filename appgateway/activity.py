"""The single activity clock of a workspace: what keeps its app-server from the idle reaper.

The TUI proxy (frames in both directions), the broker (turns) and env-mcp (calls) all ``touch``
it, from any thread. A touch made in a process that does not own the workspace is merged into
the owner's lease at the next lease refresh (``last_activity`` only ever moves forward), so a
TUI attached through another gateway process keeps the workspace alive.
"""

from __future__ import annotations

import time

from django.conf import settings

from appgateway.leases import HeldLeases


class ActivityClock:
    """This process's latest touch per workspace (plain dict and set operations: thread-safe)."""

    def __init__(self) -> None:
        self._touched: dict[str, float] = {}
        self._unshared: set[str] = set()

    def touch(self, workspace_id: str) -> None:
        self._touched[workspace_id] = time.time()
        self._unshared.add(workspace_id)

    def touched_at(self, workspace_id: str) -> float:
        return self._touched.get(workspace_id, 0.0)

    def forget(self, workspace_id: str) -> None:
        self._touched.pop(workspace_id, None)

    async def share(self, held: HeldLeases) -> None:
        """Merge the touches of workspaces this process does not own into their owners' leases."""
        for workspace_id in list(self._unshared):
            self._unshared.discard(workspace_id)
            if workspace_id not in held and workspace_id in self._touched:
                await held.store.bump_activity(workspace_id, self._touched[workspace_id])
        stale = time.time() - settings.CXG_IDLE_SHUTDOWN
        for workspace_id, at in list(self._touched.items()):
            if at < stale and workspace_id not in held:
                self._touched.pop(workspace_id, None)  # touched here once, owned elsewhere: nothing left to merge
