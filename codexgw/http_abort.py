"""Dropping an HTTP connection from the application (``abort_connection``).

ASGI has no message for it: an application that raises after its response started gets its
connection closed, but uvicorn closes it gracefully, after the data still buffered for the
client has been written. A download whose client stopped reading would then never end. The
byte relay needs the connection gone at once and its buffered data discarded (a reset, as
daphne's abort did), so the client sees the transfer fail.

``AbortableHttpProtocol`` is uvicorn's httptools protocol (given to uvicorn as its ``http``
class) that registers each connection's transport by peer address, from asyncio's
``connection_made`` to ``connection_lost``; the ASGI scope's ``client`` is that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import weakref
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Address = tuple[str, int]

# Weak: a connection upgraded to a WebSocket leaves this protocol without a connection_lost.
_connections: weakref.WeakValueDictionary[Address, AbortableHttpProtocol] = weakref.WeakValueDictionary()


def _peer(transport: asyncio.BaseTransport) -> Address | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    return None


class AbortableHttpProtocol(HttpToolsProtocol):
    _peer_address: Address | None = None
    _abortable: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._abortable = transport
        self._peer_address = _peer(transport)
        if self._peer_address is not None:
            _connections[self._peer_address] = self

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer_address is not None and _connections.get(self._peer_address) is self:
            del _connections[self._peer_address]
        super().connection_lost(exc)

    def abort(self) -> None:
        transport = self._abortable
        if transport is None or transport.is_closing():
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: closing sends a reset instead of a FIN queued behind unsent data (which
            # a client that stopped reading would never get).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def abort_connection(scope: Mapping[str, Any]) -> None:
    """Reset the connection of the HTTP request ``scope``, discarding what is buffered for it
    (nothing to do if it is gone already)."""
    client = scope.get("client")
    protocol = _connections.get((str(client[0]), int(client[1]))) if client else None
    if protocol is not None:
        protocol.abort()
