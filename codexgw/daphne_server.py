"""daphne with the ASGI "WebSocket Denial Response" extension.

daphne 4.2.3 answers a WebSocket that the application closes before accepting with a fixed
``HTTP 403``. The gateway needs to choose the status of a refused upgrade, because the real
``codex exec-server`` treats them differently: it exits on a 4xx and retries forever on a 5xx
(codex-wire §B.4). This module implements the ASGI extension (``websocket.http.response``): the
scope lists ``"websocket.http.response": {}`` under ``extensions``, and instead of accepting an
application may send

    {"type": "websocket.http.response.start", "status": int, "headers": [(bytes, bytes), ...]}
    {"type": "websocket.http.response.body", "body": bytes, "more_body": bool}   # one or more

which becomes the HTTP response to the upgrade request, with the application's status, headers and
body (plus ``Content-Length`` and ``Connection: close``; the connection is closed after it).

How it is written: daphne fails a handshake by erroring the Deferred its ``onConnect`` returned
with autobahn's ``ConnectionDeny(code, reason)``; autobahn then calls ``failHandshake(reason,
code)``, which writes only a status line (the reason as its phrase) and no headers or body.
``GatewayWebSocketProtocol`` keeps that path (so autobahn's state machine and daphne's
bookkeeping stay as they are) and overrides ``failHandshake`` to write the complete response the
application built instead, when there is one. A plain ``websocket.close`` before accept still
gives daphne's 403.

``GatewayServer`` also owns the stop signals when given a ``drain_timeout`` (``manage.py serve``):
daphne runs ``reactor.run(installSignalHandlers=True)``, whose handlers stop the reactor at once.
Instead, SIGTERM/SIGINT start ``codexgw.drain.drain`` on the event loop and stop the reactor when
it returns; a watchdog thread ends the process if the drain and stop overrun the bound, and a
second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet import reactor as _reactor

from codexgw import drain
from codexgw.http_flow import FlowServerMixin
from codexgw.websocket import SENDABLE_CLOSE_CODES
from codexgw.ws_flow import WS_FLOW_EXTENSION, WsFlow

logger = logging.getLogger(__name__)
# The asyncio reactor daphne installed on import (zope interfaces do not type-check as classes).
reactor: Any = _reactor

DENIAL_EXTENSION = "websocket.http.response"

RESPONSE_START = "websocket.http.response.start"
RESPONSE_BODY = "websocket.http.response.body"

# After a drain, how long stopping the server (cancelling what is left) may take before the
# process is cut off.
STOP_GRACE = 3.0

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing headers are the server's: the response always carries its own Content-Length and closes.
_SERVER_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade"})


def _clean_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for item in raw or ():
        name, value = item
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise ValueError(f"denial response header {item!r} must be a pair of bytes")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid denial response header name {name!r}")
        if any(c in value for c in b"\r\n\0"):
            raise ValueError(f"invalid denial response header value for {name!r}")
        if name.lower() not in _SERVER_HEADERS:
            headers.append((name, value))
    return headers


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass
class DenialResponse:
    """An HTTP response to a WebSocket upgrade request, as the application sends it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)

    @property
    def reason(self) -> str:
        return _reason_phrase(self.status)

    def encode(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {self.reason}".encode("ascii")]
        lines.extend(name + b": " + value for name, value in self.headers)
        lines.append(b"Content-Length: %d" % len(self.body))
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(self.body)


# Receive-side flow control of every WebSocket (GatewayWebSocketProtocol.onMessage).
RECEIVE_HIGH = 64
RECEIVE_LOW = 16
RECEIVE_POLL = 0.005
_background: set[asyncio.Future[None]] = set()


class GatewayWebSocketProtocol(WebSocketProtocol):  # type: ignore[misc]
    """daphne's WebSocket protocol plus the denial response and flow extensions."""

    flow: WsFlow | None = None

    _reading_paused = False

    def onOpen(self) -> None:
        super().onOpen()
        if self.flow is not None:
            self.flow.transport = self.transport

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        # daphne queues every received message for the application without bound: a peer that
        # sends faster than the application takes (an executor streaming output faster than its
        # session can route it) would grow the process instead of being paced. Past
        # RECEIVE_HIGH unread messages the socket is not read until the application is down to
        # RECEIVE_LOW (TCP then paces the peer).
        super().onMessage(payload, isBinary)
        queue = getattr(self, "application_queue", None)
        if queue is not None and not self._reading_paused and queue.qsize() >= RECEIVE_HIGH:
            self._reading_paused = True
            self.transport.pauseProducing()
            task = asyncio.ensure_future(self._resume_reading_when_taken(queue))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _resume_reading_when_taken(self, queue: asyncio.Queue[Any]) -> None:
        # Polled: neither daphne's queue nor Twisted's buffer signals when it shrinks.
        while queue.qsize() > RECEIVE_LOW and getattr(self.transport, "connected", False):  # noqa: ASYNC110
            await asyncio.sleep(RECEIVE_POLL)
        self._reading_paused = False
        if getattr(self.transport, "connected", False):
            self.transport.resumeProducing()

    # The response being assembled (between start and the last body message).
    _denial: DenialResponse | None = None
    # The finished response, waiting for autobahn to call failHandshake.
    _denial_ready: DenialResponse | None = None
    _denial_sent = False

    def handle_reply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == RESPONSE_START:
            self._start_denial(message)
        elif kind == RESPONSE_BODY:
            self._continue_denial(message)
        elif self._denial is not None or self._denial_sent:
            raise ValueError(f"{kind!r} is not allowed after {RESPONSE_START}")
        elif kind == "websocket.close" and self.state != self.STATE_CONNECTING:
            self._close(message)
        else:
            super().handle_reply(message)

    def _close(self, message: dict[str, Any]) -> None:
        # daphne hands the code to autobahn's sendClose, which raises for anything but 1000 and
        # 3000-4999 (1011, 1013 included), and drops the ASGI close reason.
        code = message.get("code") or 1000
        if code not in SENDABLE_CLOSE_CODES:
            raise ValueError(f"invalid WebSocket close code {code!r}")
        reason = message.get("reason") or ""
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123) if reason else None)

    def _start_denial(self, message: dict[str, Any]) -> None:
        if self._denial is not None or self._denial_sent:
            raise ValueError(f"{RESPONSE_START} sent twice")
        if self.state != self.STATE_CONNECTING or not hasattr(self, "handshake_deferred"):
            raise ValueError(f"{RESPONSE_START} is only allowed before the WebSocket is accepted")
        status = message.get("status")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"invalid denial response status {status!r}")
        self._denial = DenialResponse(status=status, headers=_clean_headers(message.get("headers")))

    def _continue_denial(self, message: dict[str, Any]) -> None:
        denial = self._denial
        if denial is None:
            raise ValueError(f"{RESPONSE_BODY} without {RESPONSE_START}")
        body = message.get("body", b"")
        if not isinstance(body, bytes | bytearray):
            raise ValueError(f"{RESPONSE_BODY} body must be bytes")
        denial.body += body
        if not message.get("more_body", False):
            self._send_denial(denial)

    def _send_denial(self, denial: DenialResponse) -> None:
        self._denial = None
        self._denial_sent = True
        self._denial_ready = denial
        deferred = self.handshake_deferred
        del self.handshake_deferred
        # autobahn answers the errback with failHandshake(reason, code), below, synchronously.
        deferred.errback(ConnectionDeny(code=denial.status, reason=denial.reason))  # type: ignore[no-untyped-call]
        self.server.protocol_disconnected(self)
        logger.debug("WebSocket %s denied by application with HTTP %s", self.client_addr, denial.status)
        self.server.log_action(
            "websocket",
            "rejected",
            {
                "path": self.request.path,
                "client": "{}:{}".format(*self.client_addr) if self.client_addr else None,
                "status": denial.status,
            },
        )

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        denial, self._denial_ready = self._denial_ready, None
        if denial is None:
            super().failHandshake(reason, code, responseHeaders)
            return
        self.wasNotCleanReason = reason
        self.sendData(denial.encode())
        self.dropConnection(abort=False)

    def serverReject(self) -> None:
        # daphne's connect timeout may call this on a handshake that a denial already answered.
        if hasattr(self, "handshake_deferred"):
            super().serverReject()


class GatewayWebSocketFactory(WebSocketFactory):  # type: ignore[misc]
    protocol = GatewayWebSocketProtocol

    def setProtocolOptions(self, **options: Any) -> None:
        # autobahn fails a connection (e.g. an over-limit message) by dropping TCP unless told
        # otherwise; send the close frame instead so the peer learns why (1009).
        options.setdefault("failByDrop", False)
        super().setProtocolOptions(**options)


class GatewayServer(FlowServerMixin, Server):  # type: ignore[misc]
    """daphne's ``Server`` serving WebSockets with ``GatewayWebSocketProtocol`` (and, through
    ``FlowServerMixin``, streaming HTTP for the byte relay: ``codexgw/http_flow.py``).

    ``Server.run()`` builds its ``WebSocketFactory`` inline (``self.ws_factory =
    WebSocketFactory(self, server=self.server_name)``) and then configures it. Rather than copy
    ``run()`` or patch ``daphne.server.WebSocketFactory`` for the whole process, ``ws_factory`` is a
    property here: the assignment in ``run()`` gets a ``GatewayWebSocketFactory`` built with the
    same arguments, and everything else in ``run()`` (protocol options, listeners, reactor) stays
    daphne's own.
    """

    _gateway_ws_factory: GatewayWebSocketFactory

    def __init__(self, *args: Any, drain_timeout: float | None = None, **kwargs: Any) -> None:
        """``drain_timeout``: on SIGTERM/SIGINT drain the process (``codexgw.drain``) within this
        many seconds, then stop. Without it, daphne's own handlers stop the reactor at once."""
        if drain_timeout is not None:
            kwargs["signal_handlers"] = False
        super().__init__(*args, **kwargs)
        self.drain_timeout = drain_timeout
        self._draining: asyncio.Task[None] | None = None

    def run(self) -> None:
        if self.drain_timeout is not None:
            # Twisted's handlers would stop the reactor on the first signal. The asyncio
            # reactor runs the asyncio loop, so the handlers go on that loop once it runs.
            reactor.callWhenRunning(self._install_drain_handlers)
        super().run()

    def _install_drain_handlers(self) -> None:
        # Twisted runs this before it starts the loop (daphne has made the loop current).
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._draining is not None:
            logger.warning("%s during the drain: exiting now", name)
            os._exit(128 + signum)
        assert self.drain_timeout is not None
        logger.info("%s: draining for up to %ss", name, self.drain_timeout)
        # Exit even if the loop itself is stuck: a thread, not a loop timer.
        watchdog = threading.Timer(self.drain_timeout + STOP_GRACE, self._cut_off)
        watchdog.daemon = True
        watchdog.start()
        loop = asyncio.get_running_loop()
        self._draining = loop.create_task(self._drain_then_stop(loop.time() + self.drain_timeout), name="drain")

    async def _drain_then_stop(self, deadline: float) -> None:
        try:
            await drain.drain(deadline)
        except Exception:
            logger.exception("drain failed")
        finally:
            logger.info("stopping the server")
            reactor.stop()

    @staticmethod
    def _cut_off() -> None:
        logger.error("the drain and stop overran CODEXGW_DRAIN_TIMEOUT: exiting now")
        os._exit(1)

    @property
    def ws_factory(self) -> GatewayWebSocketFactory:
        return self._gateway_ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: Any) -> None:
        if not isinstance(factory, GatewayWebSocketFactory):
            factory = GatewayWebSocketFactory(self, server=self.server_name)
        self._gateway_ws_factory = factory

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        # daphne's WebSocketProtocol.onConnect builds the scope inline and hands it straight here.
        if isinstance(protocol, GatewayWebSocketProtocol):
            scope.setdefault("extensions", {})[DENIAL_EXTENSION] = {}
            protocol.flow = WsFlow()
            scope["extensions"][WS_FLOW_EXTENSION] = protocol.flow
        return super().create_application(protocol, scope)
