"""``Pool``: one initialized ``bridge.client.BridgeClient`` per executor, dialled on first use."""

from __future__ import annotations

import asyncio
import time

from bridge.client import (
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    BridgeClient,
    BridgeDialError,
    BridgeError,
    BridgeRPCError,
    Connector,
    TokenProvider,
)
from bridge.protocol import INVALID_REQUEST, SESSION_ATTACHED

# How long a tool waits for an executor that is moving between gateway processes (it reconnects
# about a second after its process dies or drains) before its dial is reported as refused.
FAILOVER_GRACE = 15.0


class Pool:
    """One initialized ``BridgeClient`` per executor, dialled on first use.

    ``connect`` dials the bridge (``bridge.inproc.connect``: the bridge of this process without a
    socket; the tests dial its WebSocket). Each dial takes a token from ``token_provider`` (awaited per dial,
    so the caller can renew tokens). A closed client is replaced on the next ``get``; the new
    connection resumes the old virtual session when the gateway still has it, so its processes
    live on.
    ``unavailable_grace``: for how long a dial refused with 503 (the executor is between gateway
    processes after a failover or drain, or the gateway is draining) is retried.
    """

    def __init__(
        self,
        connect: Connector,
        token_provider: TokenProvider,
        *,
        client_name: str = "codexgw",
        open_timeout: float = 10.0,
        unavailable_grace: float = 0.0,
    ) -> None:
        self._connect = connect
        self._unavailable_grace = unavailable_grace
        self._token_provider = token_provider
        self._client_name = client_name
        self._open_timeout = open_timeout
        self._clients: dict[str, BridgeClient] = {}
        self._sessions: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    async def get(self, exe_id: str) -> BridgeClient:
        """The open client for ``exe_id``; concurrent callers share a single dial.
        Raises ``BridgeDialError`` (refused or unreachable) or another ``BridgeError``."""
        if not exe_id:
            raise BridgeError("exe_id is required")
        client = self._clients.get(exe_id)
        if client is not None and not client.closed:
            return client
        lock = self._locks.setdefault(exe_id, asyncio.Lock())
        async with lock:
            if self._closed:
                raise BridgeError("bridge pool is closed")
            client = self._clients.get(exe_id)
            if client is not None and not client.closed:
                return client
            client = await self._dial(exe_id)
            if self._closed:  # closed while dialling
                await client.close()
                raise BridgeError("bridge pool is closed")
            self._clients[exe_id] = client
            return client

    async def _dial(self, exe_id: str) -> BridgeClient:
        deadline = time.monotonic() + self._unavailable_grace
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                return await self._dial_once(exe_id)
            except BridgeDialError as error:
                if error.status != 503 or time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    async def _dial_once(self, exe_id: str) -> BridgeClient:
        token = await self._token_provider()
        client = BridgeClient(await self._connect(exe_id, token, self._open_timeout), exe_id)
        try:
            async with asyncio.timeout(self._open_timeout):
                await self._handshake(client, self._sessions.get(exe_id))
        except BaseException as error:
            await client.close()
            if isinstance(error, TimeoutError):
                raise BridgeDialError(f"exec-server initialize for {exe_id} timed out") from None
            raise
        if client.session_id:
            self._sessions[exe_id] = client.session_id
        return client

    async def _handshake(self, client: BridgeClient, resume: str | None) -> None:
        if resume is not None:
            try:
                await client.initialize(self._client_name, resume)
                return
            except BridgeRPCError as error:
                # The old session expired or moved: a fresh one on the same connection.
                if error.code not in (INVALID_REQUEST, SESSION_ATTACHED):
                    raise
        await client.initialize(self._client_name)

    async def close(self) -> None:
        """Close every client; later ``get`` calls fail."""
        self._closed = True
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
