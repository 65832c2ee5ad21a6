"""Streaming HTTP under daphne: the ASGI extension ``codexgw.http.flow``.

daphne 4.2.3 does not stream HTTP. Twisted receives the whole request body (into a temporary
file above 100 kB) before daphne starts the application; daphne then puts all of it into the
application's unbounded input queue at once; ``send()`` never waits for the client, so a slow
reader makes the process hold the whole response (daphne#170); and an application that raises
after starting a response leaves the client waiting for the rest (daphne tries to answer 500 on
a started response, which fails inside its application checker). [measured: a 256 MiB PUT and
a 256 MiB response to a slow reader each grew a bare daphne process by about 265 MiB.]

A byte relay needs the opposite, so for paths under ``FLOW_PATH_PREFIXES`` the server hands
the application an ``HttpFlow`` in ``scope["extensions"]["codexgw.http.flow"]``:

* ``await flow.receive()``: ASGI ``receive``, but the body arrives as the network delivers it,
  from as soon as the headers are in (the application starts then), and the socket is not read
  while more than ``HIGH_WATER`` bytes wait for the application. Use it instead of the
  ``receive`` the application is called with (that one only ever carries an empty body).
* ``await flow.drain()``: returns once the connection's send buffer has room again (Twisted's
  push-producer pause/resume), so a response is produced no faster than the client reads it.
* ``flow.abort()``: drops the connection now. A response without ``Content-Length`` is chunked,
  so a client mid-body sees the transfer fail instead of a short body that looks complete.

HTTP/1.1 only: Twisted's HTTP/2 (TLS with the ``h2`` package) is not installed. daphne's own
request handling, scope and replies are unchanged; this leans on Twisted internals (pinned in
requirements.txt): the request methods the channel calls (``gotLength``,
``handleContentChunk``, ``requestReceived``: "not intended for users"), the channel's request
line (``_command``, ``_path``, ``_version``) to start the application before the body ends, and
``channel.persistent`` to close a connection whose request body was refused unread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from daphne.http_protocol import HTTPFactory, WebRequest

logger = logging.getLogger(__name__)

FLOW_EXTENSION = "codexgw.http.flow"
# Paths whose requests get a flow: the byte relay's.
FLOW_PATH_PREFIXES = ("/relay/",)
# Unread request-body bytes above which the socket is paused, and below which it resumes.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024

_DISCONNECT = {"type": "http.disconnect"}


class HttpFlow:
    """One request's flow control (see the module docstring). Twisted calls the underscored
    methods and the push-producer ones; the application awaits ``receive`` and ``drain``."""

    def __init__(self, request: FlowRequest) -> None:
        self._request = request
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._body_complete = False
        self._end_delivered = False
        self._closed = False
        self._reading_paused = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def body_complete(self) -> bool:
        """The whole request body has arrived (the application may not have read all of it)."""
        return self._body_complete

    @property
    def disconnected(self) -> bool:
        """The connection is gone, or the response is complete (ASGI's ``http.disconnect``)."""
        return self._closed

    async def receive(self) -> dict[str, Any]:
        while True:
            if self._chunks:
                return self._take()
            if self._closed:
                return _DISCONNECT
            if self._body_complete and not self._end_delivered:
                self._end_delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            self._readable.clear()
            await self._readable.wait()

    async def drain(self) -> None:
        """Wait until the send buffer has room (or the connection is gone)."""
        await self._writable.wait()

    def abort(self) -> None:
        """Drop the connection without finishing the response."""
        self._request.abort_connection()

    def _take(self) -> dict[str, Any]:
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= LOW_WATER and not self._closed:
            self._reading_paused = False
            self._request.transport.resumeProducing()
        return {"type": "http.request", "body": data, "more_body": True}

    def _feed(self, data: bytes) -> None:
        if self._closed or not data:
            return  # the response is complete: the rest of a refused upload is not wanted
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()
        if self._buffered > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._request.transport.pauseProducing()

    def _feed_end(self) -> None:
        self._body_complete = True
        self._readable.set()

    def _close(self) -> None:
        if self._buffered and not self._closed:
            # The response ended (or the client left) before the application read the body.
            logger.info("discarded %d unread request-body bytes", self._buffered)
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        self._readable.set()
        self._writable.set()

    # IPushProducer, registered on the request while a response is being written: the transport
    # pauses it when its send buffer is full and resumes it once the buffer has drained.
    def pauseProducing(self) -> None:
        if not self._closed:
            self._writable.clear()

    def resumeProducing(self) -> None:
        self._writable.set()

    def stopProducing(self) -> None:
        self._close()


class FlowRequest(WebRequest):  # type: ignore[misc]
    """daphne's request; under ``FLOW_PATH_PREFIXES`` the body goes to an ``HttpFlow`` and the
    application starts as soon as the headers are in."""

    flow: HttpFlow | None = None
    _started = False
    _early = False

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        # Decoded as daphne decodes the scope's path, so the application sees the same prefix.
        path = unquote(channel._path.split(b"?", 1)[0].decode("ascii", "replace"))
        if not path.startswith(FLOW_PATH_PREFIXES):
            super().gotLength(length)
            return
        self.flow = HttpFlow(self)
        self.content = BytesIO()  # stays empty: nothing is spooled
        if length != 0:
            # Twisted starts a request after its last body byte; start this one now.
            self._early = True
            self.requestReceived(channel._command, channel._path, channel._version)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.flow is None:
            super().requestReceived(command, path, version)
        elif self._started:
            self.flow._feed_end()  # the channel's call after the last body byte
        else:
            self._started = True
            if not self._early:
                self.flow._feed_end()
            super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        if self.flow is None:
            super().handleContentChunk(data)
        else:
            self.flow._feed(data)

    def handle_reply(self, message: dict[str, Any]) -> None:
        flow = self.flow
        if flow is not None and not self.finished and self.channel is not None:
            kind = message.get("type")
            if kind == "http.response.start":
                if not flow.body_complete:
                    # Answered before the whole body came in (a refusal): the rest of the body
                    # cannot be read as the next request, so the connection closes after this.
                    self.channel.persistent = False
                    self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
                self.registerProducer(flow, True)
            elif kind == "http.response.body" and not message.get("more_body", False) and self.producer:
                self.unregisterProducer()
        super().handle_reply(message)

    def finish(self) -> None:
        if self.flow is not None:
            self.flow._close()
        super().finish()

    def connectionLost(self, reason: Any) -> None:
        if self.flow is not None:
            self.flow._close()
        super().connectionLost(reason)

    def abort_connection(self) -> None:
        if not self.finished and self.channel is not None:
            self.transport.abortConnection()


class FlowHTTPFactory(HTTPFactory):  # type: ignore[misc]
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = FlowRequest
        return protocol


class FlowServerMixin:
    """Mixed into daphne's ``Server``: HTTP connections use ``FlowRequest`` and their flows are
    announced in the scope. ``Server.run()`` assigns ``self.http_factory = HTTPFactory(self)``;
    the property turns that into a ``FlowHTTPFactory`` (as ``GatewayServer.ws_factory`` does)."""

    _flow_http_factory: FlowHTTPFactory

    @property
    def http_factory(self) -> FlowHTTPFactory:
        return self._flow_http_factory

    @http_factory.setter
    def http_factory(self, factory: Any) -> None:
        if not isinstance(factory, FlowHTTPFactory):
            factory = FlowHTTPFactory(self)
        self._flow_http_factory = factory

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if isinstance(protocol, FlowRequest) and protocol.flow is not None:
            scope.setdefault("extensions", {})[FLOW_EXTENSION] = protocol.flow
        return super().create_application(protocol, scope)  # type: ignore[misc]
