"""Async client for the gateway's bridge (a virtual exec-server session): its ``/bridge/{exe_id}``
WebSocket, or the same endpoint in process (``bridge.inproc``) for tools that run in the gateway.

Used by env-mcp and the SDK tools. Wire (docs/protocol.md, codex-wire §A): one JSON object per
text frame, no ``jsonrpc`` field, integer request ids. One reader task per connection routes
responses to the waiting ``call`` and hands notifications to subscribers. When the connection
ends, every pending and later ``call`` fails with ``BridgeClosed``; subscribers hear ``on_close``.

``bridge.client_pool.Pool`` keeps one initialized client per executor, dialled lazily.
"""

# ``call`` takes a per-call deadline rather than leaving every caller to wrap it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from bridge.protocol import EXECUTOR_UNAVAILABLE
from codexgw.jsonrpc import Peer, RPCError

log = logging.getLogger(__name__)

JSON = dict[str, Any]
NotificationCallback = Callable[[str, JSON], None]
CloseCallback = Callable[["BridgeClosed"], None]
TokenProvider = Callable[[], Awaitable[str]]


class Transport(Protocol):
    """What a client talks over (a websockets ``ClientConnection`` is one): text frames both ways;
    iterating ends (or raises ``ConnectionClosed``) when the connection closes, after which
    ``send`` raises ``ConnectionClosed`` or ``ConnectionError`` and ``close_code`` says why."""

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


# (exe_id, token, open_timeout) -> an open transport to the bridge; raises ``BridgeDialError``.
Connector = Callable[[str, str, float], Awaitable[Transport]]

DEFAULT_CALL_TIMEOUT = 30.0
# Retrying a retryable error (the executor reconnects in ~1 s, then backs off up to ~7 s).
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 2.0


class BridgeError(Exception):
    """Base class of everything this module raises."""


class BridgeRPCError(BridgeError, RPCError):
    """A JSON-RPC error answer."""

    @property
    def retryable(self) -> bool:
        """The gateway's "executor connection lost": the same request may succeed shortly."""
        return self.code == EXECUTOR_UNAVAILABLE and isinstance(self.data, dict) and self.data.get("retryable") is True


class BridgeClosed(BridgeError):
    """The connection is closed (``code`` 1006 when it dropped without a close frame)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        detail = f"code {code}" + (f", {reason}" if reason else "")
        super().__init__(f"bridge connection closed ({detail})")
        self.code = code
        self.reason = reason


class BridgeTimeout(BridgeError, TimeoutError):
    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"{method}: no answer within {timeout:g}s")
        self.method = method


class BridgeDialError(BridgeError):
    """The upgrade was refused (``status`` set, message from the gateway's body) or failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Subscription:
    """A registration for one process's notifications; ``cancel()`` (or leaving the ``with``
    block) ends it."""

    def __init__(
        self,
        client: BridgeClient,
        process_id: str,
        on_notification: NotificationCallback,
        on_close: CloseCallback | None,
    ) -> None:
        self._client = client
        self.process_id = process_id
        self.on_notification = on_notification
        self.on_close = on_close

    def cancel(self) -> None:
        self._client._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class BridgeClient:
    """One bridge connection, opened by a ``Connector``; ``Pool`` dials and initializes them."""

    def __init__(self, ws: Transport, exe_id: str = "") -> None:
        self.exe_id = exe_id
        self.session_id: str | None = None
        self.environment_info: JSON = {}
        self._ws = ws
        self._peer = Peer(
            self._send, on_notification=self._notified, rpc_error=BridgeRPCError, timeout_error=BridgeTimeout
        )
        self._by_process: dict[str, list[Subscription]] = {}
        self._closed: BridgeClosed | None = None
        self._reader = asyncio.create_task(self._read(), name=f"bridge reader {exe_id}")

    # --- requests ---------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        params: JSON | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        *,
        idempotent: bool = False,
    ) -> Any:
        """Send a request and return its ``result``. Raises ``BridgeRPCError`` for an error answer,
        ``BridgeClosed`` if the connection ends first, ``BridgeTimeout`` after ``timeout``.

        ``idempotent``: the request may be repeated safely, so a retryable error (the executor's
        connection dropped) is retried with backoff within the same ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                return await self._peer.request(method, params, max(0.0, deadline - time.monotonic()))
            except BridgeRPCError as error:
                if not (idempotent and error.retryable) or time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    async def notify(self, method: str, params: JSON | None = None) -> None:
        await self._peer.notify(method, params)

    async def _send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except (ConnectionClosed, ConnectionError):
            raise self._close_error() from None

    async def initialize(self, client_name: str, resume_session_id: str | None = None) -> JSON:
        """exec-server handshake: ``initialize`` then ``initialized``; keeps the session id and
        ``environmentInfo``. On an error answer the connection may try ``initialize`` again."""
        params: JSON = {"clientName": client_name}
        if resume_session_id is not None:
            params["resumeSessionId"] = resume_session_id
        result: JSON = await self.call("initialize", params)
        await self.notify("initialized", {})
        session_id = result.get("sessionId")
        self.session_id = session_id if isinstance(session_id, str) else None
        self.environment_info = result.get("environmentInfo") or {}
        return result

    # --- notifications ----------------------------------------------------------------------

    def subscribe(
        self,
        on_notification: NotificationCallback,
        *,
        process_id: str,
        on_close: CloseCallback | None = None,
    ) -> Subscription:
        """Call ``on_notification(method, params)`` for every notification whose
        ``params.processId`` is ``process_id``, and ``on_close(error)`` once when the connection
        ends. Callbacks run on the reader task: they must be quick and must not block.
        Subscribe before starting a process so none of its events is missed."""
        if self._closed is not None:
            raise self._closed
        subscription = Subscription(self, process_id, on_notification, on_close)
        self._by_process.setdefault(process_id, []).append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        listeners = self._by_process.get(subscription.process_id, [])
        with contextlib.suppress(ValueError):
            listeners.remove(subscription)
        if not listeners:
            self._by_process.pop(subscription.process_id, None)

    # --- the reader ----------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                try:
                    message = json.loads(raw)
                except (ValueError, RecursionError):
                    log.warning("bridge sent a frame that is not JSON", extra={"exe_id": self.exe_id})
                    continue
                await self._peer.receive(message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("bridge reader failed", extra={"exe_id": self.exe_id})
            await self._ws.close(1011, "client error")
        finally:
            self._closed = self._close_error()
            self._peer.close(self._closed)
            subscriptions = [s for ss in self._by_process.values() for s in ss]
            self._by_process.clear()
            for subscription in subscriptions:
                if subscription.on_close is not None:
                    self._run_callback(subscription.on_close, self._closed)

    def _notified(self, method: str, params: JSON) -> None:
        process_id = params.get("processId")
        listeners = self._by_process.get(process_id, []) if isinstance(process_id, str) else []
        for subscription in list(listeners):
            self._run_callback(subscription.on_notification, method, params)

    def _run_callback(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("bridge notification callback failed", extra={"exe_id": self.exe_id})

    # --- closing -------------------------------------------------------------------------------

    def _close_error(self) -> BridgeClosed:
        return BridgeClosed(self._ws.close_code, self._ws.close_reason or "")

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def wait_closed(self) -> BridgeClosed:
        await asyncio.shield(self._reader)
        assert self._closed is not None
        return self._closed

    async def close(self) -> None:
        """Close the connection and wait for the reader to finish; idempotent."""
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._reader)
