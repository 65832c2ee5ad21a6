"""Async client for the gateway's bridge (a virtual exec-server session): its ``/bridge/{exe_id}``
WebSocket, or the same endpoint in process (``bridge.inproc``) for tools that run in the gateway.

Used by env-mcp and the SDK tools. Wire (docs/protocol.md, codex-wire §A): one JSON object per
text frame, no ``jsonrpc`` field, integer request ids. One reader task per connection routes
responses to the waiting ``call`` and hands notifications to subscribers. When the connection
ends, every pending and later ``call`` fails with ``BridgeClosed``; subscribers hear ``on_close``.

``Pool`` keeps one initialized client per executor and dials lazily.
"""

# ``call`` takes a per-call deadline rather than leaving every caller to wrap it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bridge.protocol import EXECUTOR_UNAVAILABLE, INVALID_REQUEST, MAX_MESSAGE_BYTES, SESSION_ATTACHED

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
# Keepalive: a dead gateway is noticed within a minute, and idle middleboxes see traffic.
PING_INTERVAL = 20.0
PING_TIMEOUT = 30.0
# Retrying a retryable error (the executor reconnects in ~1 s, then backs off up to ~7 s).
RETRY_FIRST_DELAY = 0.2
RETRY_MAX_DELAY = 2.0
# How long a tool waits for an executor that is moving between gateway processes (it reconnects
# about a second after its process dies or drains) before its dial is reported as refused.
FAILOVER_GRACE = 15.0


class BridgeError(Exception):
    """Base class of everything this module raises."""


class BridgeRPCError(BridgeError):
    """A JSON-RPC error answer."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data

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


def _refusal_message(refused: InvalidStatus) -> str:
    response = refused.response
    text = response.body.decode(errors="replace").strip() if response.body else ""
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
    return f"{text or response.reason_phrase} (HTTP {response.status_code})"


class Subscription:
    """A registration for notifications; ``cancel()`` (or leaving the ``with`` block) ends it."""

    def __init__(
        self,
        client: BridgeClient,
        process_id: str | None,
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
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._by_process: dict[str, list[Subscription]] = {}
        self._everything: list[Subscription] = []
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
                return await self._call_once(method, params, max(0.0, deadline - time.monotonic()))
            except BridgeRPCError as error:
                if not (idempotent and error.retryable) or time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    async def _call_once(self, method: str, params: JSON | None, timeout: float) -> Any:
        if self._closed is not None:
            raise self._closed
        request_id = next(self._ids)
        message: JSON = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, future)
        try:
            async with asyncio.timeout(timeout):
                await self._send(message)
                return await future
        except TimeoutError:
            raise BridgeTimeout(method, timeout) from None
        finally:
            self._pending.pop(request_id, None)

    async def notify(self, method: str, params: JSON | None = None) -> None:
        message: JSON = {"method": method}
        if params is not None:
            message["params"] = params
        await self._send(message)

    async def _send(self, message: JSON) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._ws.send(json.dumps(message, separators=(",", ":")))
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
        process_id: str | None = None,
        on_close: CloseCallback | None = None,
    ) -> Subscription:
        """Call ``on_notification(method, params)`` for every notification (or only those whose
        ``params.processId`` is ``process_id``), and ``on_close(error)`` once when the connection
        ends. Callbacks run on the reader task: they must be quick and must not block.
        Subscribe before starting a process so none of its events is missed."""
        if self._closed is not None:
            raise self._closed
        subscription = Subscription(self, process_id, on_notification, on_close)
        if process_id is None:
            self._everything.append(subscription)
        else:
            self._by_process.setdefault(process_id, []).append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription.process_id is None:
            with contextlib.suppress(ValueError):
                self._everything.remove(subscription)
            return
        listeners = self._by_process.get(subscription.process_id, [])
        with contextlib.suppress(ValueError):
            listeners.remove(subscription)
        if not listeners:
            self._by_process.pop(subscription.process_id, None)

    # --- the reader ----------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                self._dispatch(raw)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("bridge reader failed", extra={"exe_id": self.exe_id})
            await self._ws.close(1011, "client error")
        finally:
            self._closed = self._close_error()
            for _, future in self._pending.values():
                if not future.done():
                    future.set_exception(self._closed)
            subscriptions = [*self._everything, *(s for ss in self._by_process.values() for s in ss)]
            self._everything.clear()
            self._by_process.clear()
            for subscription in subscriptions:
                if subscription.on_close is not None:
                    self._run_callback(subscription.on_close, self._closed)

    def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("bridge sent a frame that is not JSON", extra={"exe_id": self.exe_id})
            return
        if not isinstance(message, dict):
            return
        if "result" in message or "error" in message:
            request_id = message.get("id")
            entry = self._pending.get(request_id) if isinstance(request_id, int) else None
            if entry is None or entry[1].done():
                return  # the caller gave up (timeout); a late answer has no one to go to
            request_method, future = entry
            error = message.get("error")
            if error is None:
                future.set_result(message.get("result"))
            else:
                error = error if isinstance(error, dict) else {}
                code = error.get("code")
                code = code if isinstance(code, int) else 0
                future.set_exception(
                    BridgeRPCError(request_method, code, str(error.get("message", "")), error.get("data"))
                )
            return
        method = message.get("method")
        if not isinstance(method, str):
            return
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        process_id = params.get("processId")
        listeners = list(self._everything)
        if isinstance(process_id, str):
            listeners += self._by_process.get(process_id, [])
        for subscription in listeners:
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

    @property
    def close_error(self) -> BridgeClosed | None:
        return self._closed

    async def wait_closed(self) -> BridgeClosed:
        await asyncio.shield(self._reader)
        assert self._closed is not None
        return self._closed

    async def close(self) -> None:
        """Close the connection and wait for the reader to finish; idempotent."""
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._reader)


def websocket_connector(ws_base_url: str) -> Connector:
    """Dials ``<ws_base_url>/bridge/<exe_id>``. Never offers permessage-deflate: exec-server drops
    connections that negotiate it, and the gateway relays frames verbatim."""
    base = ws_base_url.rstrip("/")

    async def connect_bridge(exe_id: str, token: str, open_timeout: float) -> ClientConnection:
        try:
            return await connect(
                f"{base}/bridge/{exe_id}",
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                open_timeout=open_timeout,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
            )
        except InvalidStatus as refused:
            raise BridgeDialError(_refusal_message(refused), refused.response.status_code) from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise BridgeDialError(f"cannot connect to the gateway: {error or type(error).__name__}") from None

    return connect_bridge


class Pool:
    """One initialized ``BridgeClient`` per executor, dialled on first use.

    ``gateway`` is the gateway's WebSocket origin (``ws://host:port``: clients connect to
    ``<base>/bridge/<exe_id>``) or a ``Connector`` (``bridge.inproc.connect``: the bridge of this
    process without a socket). Each dial takes a token from ``token_provider`` (awaited per dial,
    so the caller can renew tokens). A closed client is replaced on the next ``get``; the new
    connection resumes the old virtual session when the gateway still has it, so its processes
    live on.
    ``unavailable_grace``: for how long a dial refused with 503 (the executor is between gateway
    processes after a failover or drain, or the gateway is draining) is retried.
    """

    def __init__(
        self,
        gateway: str | Connector,
        token_provider: TokenProvider,
        *,
        client_name: str = "codexgw",
        open_timeout: float = 10.0,
        unavailable_grace: float = 0.0,
    ) -> None:
        self._connect = websocket_connector(gateway) if isinstance(gateway, str) else gateway
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
