"""What goes into an executor session's queue (``bridge.session``): one event per executor
connection change or frame, bridge open/frame/close (from this process or another), and the
session's own signals (evict, stuck link, moved, drain); and what the session talks back to
(``ExecutorLink``, ``BridgeLink``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from bridge.sent_progress import Sending


class ExecutorLink(Protocol):
    connection_id: str

    async def send_to_executor(self, text: str) -> None: ...

    async def close_executor(self, code: int) -> None: ...


class BridgeLink(Protocol):
    """A bridge in this process (``bridge.endpoint``) or another (``bridge.session.FarBridge``)."""

    async def deliver(self, text: str) -> None: ...

    @property
    def sending(self) -> Sending | None:
        """What carries its frames to the client, if anything holds them (``sent_progress``)."""

    async def close_from_gateway(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class ExecOpen:
    link: ExecutorLink


@dataclass(frozen=True)
class ExecFrame:
    link: ExecutorLink
    text: str


@dataclass(frozen=True)
class ExecClosed:
    link: ExecutorLink


@dataclass(frozen=True)
class BridgeOpen:
    conn_id: str
    bridge: BridgeLink


@dataclass(frozen=True)
class BridgeFrame:
    conn_id: str
    text: str


@dataclass(frozen=True)
class BridgeClosed:
    conn_id: str


@dataclass(frozen=True)
class Evict:
    connection_id: str


@dataclass(frozen=True)
class BridgeStuck:
    """The layer link to a bridge in another process gave up on its full channel."""

    conn_id: str
    bridge: BridgeLink


@dataclass(frozen=True)
class Moved:
    """Another process claimed the executor's virtual-session table."""

    owner: str


@dataclass(frozen=True)
class Drain:
    done: asyncio.Future[None]


@dataclass(frozen=True)
class Wake:
    """Nothing to handle: the session's task looks at its timers and state again (after a turn
    taken in a connection's task changed them)."""


Event = (
    ExecOpen
    | ExecFrame
    | ExecClosed
    | BridgeOpen
    | BridgeFrame
    | BridgeClosed
    | Evict
    | BridgeStuck
    | Moved
    | Drain
    | Wake
)
