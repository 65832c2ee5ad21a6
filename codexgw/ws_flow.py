"""Send-side flow control for WebSockets under daphne: the ASGI extension ``codexgw.ws.flow``.

daphne's ``send`` never waits: a peer that stops reading makes the process buffer everything sent
to it (Twisted's write buffer grows without bound; measured: +78 MiB RSS for a 30 MB burst to a
client that read nothing for 8 s). ``codexgw.daphne_server`` puts a ``WsFlow`` in every WebSocket
scope; ``await scope["extensions"][WS_FLOW_EXTENSION].drain()`` returns once Twisted holds at most
``HIGH_WATER`` bytes for the peer, so a sender goes no faster than the peer reads
(``bridge/outbox.py``). The check reads the transport's write buffer (Twisted internals, pinned
in requirements.txt) every ``POLL`` seconds while it is above the mark, and costs nothing below it.
"""

from __future__ import annotations

import asyncio
from typing import Any

WS_FLOW_EXTENSION = "codexgw.ws.flow"
HIGH_WATER = 256 * 1024
POLL = 0.01


class WsFlow:
    """One WebSocket's send buffer, as the application sees it."""

    def __init__(self) -> None:
        self.transport: Any = None  # set once the connection is open
        self.waits = 0

    def buffered(self) -> int:
        """Bytes Twisted holds for the peer, not yet taken by the kernel."""
        t = self.transport
        try:
            return int(len(t.dataBuffer) - t.offset + t._tempDataLen)
        except (AttributeError, TypeError):
            return 0

    async def drain(self) -> None:
        """Until at most ``HIGH_WATER`` bytes wait for the peer (or the connection is gone)."""
        if self.buffered() > HIGH_WATER:
            self.waits += 1
            # Polled: neither daphne's queue nor Twisted's buffer signals when it shrinks.
            while self.buffered() > HIGH_WATER and getattr(self.transport, "connected", False):  # noqa: ASYNC110
                await asyncio.sleep(POLL)
