"""The JSON-RPC peer of every connection on which the gateway itself is a client: the bridge
client (``bridge.client``, exec-server's wire) and the turn broker (``appgateway.broker``,
app-server's wire). Both wires are JSON-RPC 2.0 without the ``jsonrpc`` field and with integer
request ids (codex-wire §A).

The peer owns what the two had each written: request ids, the answers still awaited, routing of
what arrives (answer, request, notification), and failing every waiter when the connection ends.
Its owner keeps the transport and the decoding: it gives ``send`` (one text frame out), hands
each decoded message to ``receive``, and calls ``close`` when the connection has ended. The
error types are the owner's (its callers catch those), given as factories.
"""

# ``request`` takes a per-call deadline rather than leaving every caller to wrap it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
METHOD_NOT_FOUND = -32601


class RPCError(Exception):
    """An error answer: to a request of ours (raised by ``request``), or raised by an
    ``on_request`` handler to answer the other side's request with it."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class Peer:
    """One connection's JSON-RPC bookkeeping.

    ``send(text)`` writes a frame (it raises the owner's closed error when it cannot).
    ``on_notification(method, params)`` runs on the caller of ``receive``: quick, no blocking.
    ``on_request(method, params)`` returns the result of a request from the other side or raises
    ``RPCError``; without it every such request is answered "method not found".
    ``rpc_error(method, code, message, data)`` and ``timeout_error(method, seconds)`` make what
    ``request`` raises; after ``close(error)``, ``request`` and ``notify`` raise ``error``."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        *,
        on_notification: Callable[[str, JSON], None],
        on_request: Callable[[str, JSON], Awaitable[Any]] | None = None,
        rpc_error: Callable[[str, int, str, Any], Exception] = RPCError,
        timeout_error: Callable[[str, float], Exception] = lambda method, seconds: TimeoutError(method),
    ) -> None:
        self._send = send
        self._on_notification = on_notification
        self._on_request = on_request
        self._rpc_error = rpc_error
        self._timeout_error = timeout_error
        self._ids = itertools.count(1)
        self._awaited: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self.closed: Exception | None = None

    @property
    def awaiting(self) -> int:
        """Requests of ours not answered yet."""
        return len(self._awaited)

    async def request(self, method: str, params: JSON | None = None, timeout: float | None = None) -> Any:
        """The ``result`` of the answer; the ``rpc_error`` of an error answer, ``timeout_error``
        after ``timeout`` seconds (None: no limit), the close error if the connection ends first.
        A late answer to a request given up on is dropped."""
        if self.closed is not None:
            raise self.closed
        request_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._awaited[request_id] = (method, answer)
        try:
            async with asyncio.timeout(timeout):
                await self._write({"id": request_id, "method": method}, params)
                return await answer
        except TimeoutError:
            raise self._timeout_error(method, timeout or 0.0) from None
        finally:
            self._awaited.pop(request_id, None)

    async def notify(self, method: str, params: JSON | None = None) -> None:
        if self.closed is not None:
            raise self.closed
        await self._write({"method": method}, params)

    async def _write(self, message: JSON, params: JSON | None) -> None:
        if params is not None:
            message["params"] = params
        await self._send(json.dumps(message, separators=(",", ":")))

    async def receive(self, message: Any) -> None:
        """Route one decoded message: an answer to its waiter, a request to ``on_request`` (and
        its answer back), a notification to ``on_notification``. Anything else is ignored."""
        if not isinstance(message, dict):
            return
        method = message.get("method")
        if not isinstance(method, str):
            if "result" in message or "error" in message:
                self._answered(message)
            return
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        if "id" in message:
            await self._answer(message["id"], method, params)
        else:
            self._on_notification(method, params)

    def _answered(self, message: JSON) -> None:
        request_id = message.get("id")
        entry = self._awaited.get(request_id) if isinstance(request_id, int) else None
        if entry is None or entry[1].done():
            return
        method, answer = entry
        error = message.get("error")
        if error is None:
            answer.set_result(message.get("result"))
            return
        error = error if isinstance(error, dict) else {"message": str(error)}
        code = error.get("code")
        answer.set_exception(
            self._rpc_error(
                method, code if isinstance(code, int) else 0, str(error.get("message", "")), error.get("data")
            )
        )

    async def _answer(self, request_id: Any, method: str, params: JSON) -> None:
        reply: JSON = {"id": request_id}
        try:
            if self._on_request is None:
                raise RPCError(method, METHOD_NOT_FOUND, f"method not found: {method}")
            reply["result"] = await self._on_request(method, params)
        except RPCError as error:
            reply["error"] = {"code": error.code, "message": error.message}
        if self.closed is not None:
            return
        try:
            await self._send(json.dumps(reply, separators=(",", ":")))
        except Exception as error:  # the connection is ending; its reader will close us
            logger.info("could not answer %s: %s", method, error)

    def close(self, error: Exception) -> None:
        """The connection ended: every waiting and later ``request`` raises ``error``."""
        if self.closed is None:
            self.closed = error
        for _, answer in self._awaited.values():
            if not answer.done():
                answer.set_exception(self.closed)
