"""What the shared virtual-session table may say was delivered: only what has left this process.

The multiplexer counts an event as delivered once it is handed to a bridge. For a bridge in
another process that means queued on its ``LayerLink``; if this process died before the link
sent it, a successor that trusted the stored progress would never read it again, a silent gap
(found by the soak: SIGKILL failover under CPU contention, docs/reliability.md). So a session
whose link still holds frames is stored with the progress of an earlier snapshot, taken when
everything the link then held was queued, once the link has sent that far (until then, the
progress already stored); its structure (processes, handles) is always current, and it is
written again once its frames have left. A bridge in this process is held to the same rule by
its outbox (``bridge/outbox.py``): a frame counts once the outbox has handed it to the
connection."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from bridge.multiplexer import TableChanges, progress_as_of
from bridge.protocol import JSON


class Sending(Protocol):
    """What frames queued for one bridge have done: a ``LayerLink`` to another process, or a
    local bridge's outbox. ``queued``/``sent`` count frames."""

    queued: int
    sent: int

    @property
    def settled(self) -> bool: ...

    @property
    def given_up(self) -> bool: ...

    async def drained(self) -> None: ...


@dataclass(frozen=True)
class _Candidate:
    """A snapshot whose delivery progress may be stored once ``link`` has sent ``mark`` texts."""

    link: Sending
    mark: int
    snapshot: JSON


class SentProgress:
    def __init__(self) -> None:
        self._stored: dict[str, JSON] = {}  # what the table holds of each session
        self._candidates: dict[str, _Candidate] = {}
        self._closing: dict[str, Sending] = {}  # closed by the gateway, frames still on their way

    def claimed(self, sessions: dict[str, JSON]) -> None:
        """The table as this process claimed it."""
        self._stored = dict(sessions)

    def closing(self, conn_id: str, link: Sending) -> None:
        """``link`` was finished (its bridge closed by the gateway); it still sends what it holds."""
        if not link.settled:
            self._closing[conn_id] = link

    def closing_links(self) -> list[Sending]:
        return list(self._closing.values())

    def hold_back(
        self,
        changes: TableChanges,
        delivery_conn: Callable[[str], str | None],
        senders: Mapping[str, Sending],
    ) -> tuple[TableChanges, list[str]]:
        """``changes`` with no progress beyond what has left the process, and the sessions to
        write again later. ``delivery_conn`` names the connection a session's events last went
        to (``Multiplexer.delivery_conn``); ``senders`` what carries each open bridge's frames."""
        for closed_id, closed in list(self._closing.items()):
            if closed.settled or closed.given_up:
                del self._closing[closed_id]
        upserts: dict[str, JSON] = {}
        unsent: list[str] = []
        for vsid, snapshot in changes.upserts.items():
            conn_id = delivery_conn(vsid)
            link = None if conn_id is None else senders.get(conn_id) or self._closing.get(conn_id)
            if link is None or link.settled:
                self._candidates.pop(vsid, None)
                upserts[vsid] = snapshot
                continue
            earlier = self._stored.get(vsid)
            candidate = self._candidates.get(vsid)
            if candidate is not None and candidate.link is link and link.sent >= candidate.mark:
                earlier, candidate = candidate.snapshot, None
            if candidate is None or candidate.link is not link:
                self._candidates[vsid] = _Candidate(link, link.queued, snapshot)
            held_back = progress_as_of(snapshot, earlier)
            if held_back != self._stored.get(vsid):
                upserts[vsid] = held_back
            unsent.append(vsid)
        return TableChanges(upserts, changes.deletes, changes.next_handle, changes.urgent), unsent

    def written(self, changes: TableChanges) -> None:
        self._stored.update(changes.upserts)
        for vsid in changes.deletes:
            self._stored.pop(vsid, None)
            self._candidates.pop(vsid, None)
