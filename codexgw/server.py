"""The production server: uvicorn on uvloop with httptools, and a drain on SIGTERM/SIGINT.

Everything the gateway needs from the server is uvicorn's own (docs/performance.md, "Server"):

* WebSocket denial responses: uvicorn implements the ASGI ``websocket.http.response``
  extension, so a refused upgrade carries the application's status, headers and body (the real
  ``codex exec-server`` exits on a 4xx and retries on a 5xx).
* Streaming HTTP for the byte relay: the application starts once the request headers are in,
  ``receive`` hands over the body as it arrives (the socket is paused while 64 KiB wait unread)
  and ``send`` waits while the connection's send buffer is full. Aborting a connection is the
  one thing ASGI lacks: ``codexgw/http_abort.py``.
* WebSocket: uvicorn's ``websockets-sansio`` implementation, chosen by measurement
  (docs/performance.md, "Server"), reading paused on a backlog rather than after every message
  (``codexgw/ws_protocol.py``).
* Frame limit: ``ws_max_size`` closes an over-limit message with 1009, from the frame header.
* Keepalive: a ping every ``CXG_WS_PING_INTERVAL``; no pong within ``CXG_WS_PING_TIMEOUT``
  closes the connection (1011), so a peer that vanished without FIN or RST is noticed.

``GatewayServer`` replaces uvicorn's stop-at-once signal handling (``handle_exit``): the first
SIGTERM/SIGINT runs ``codexgw.drain.drain`` within ``drain_timeout`` and then lets uvicorn shut
down; a watchdog thread ends the process if the drain and the stop overrun the bound, and a
second signal ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from codexgw import drain
from codexgw.http_abort import AbortableHttpProtocol
from codexgw.websocket import MAX_FRAME_BYTES
from codexgw.ws_protocol import BacklogPausingProtocol

logger = logging.getLogger(__name__)

# After a drain, how long stopping the server may take before the process is cut off.
STOP_GRACE = 3.0
# Of that, seconds uvicorn waits for the requests still open before it cancels them.
OPEN_REQUESTS_GRACE = 1


def gateway_config(app: Any, host: str, port: int, *, ping_interval: float, ping_timeout: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with connections the relay can abort (codexgw/http_abort.py).
        http=AbortableHttpProtocol,
        ws=BacklogPausingProtocol,
        # exec-server accepts 16 MiB frames (and 64 MiB messages, but no peer fragments one):
        # a larger frame is closed with 1009 as soon as its header arrives.
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_timeout,
        # exec-server and the TUI do not compress; deflate would only cost CPU.
        ws_per_message_deflate=False,
        # Channels' router has no lifespan handler.
        lifespan="off",
        # Django's LOGGING configures the uvicorn loggers; one line per request is not wanted.
        log_config=None,
        access_log=False,
        server_header=False,
        # The client address is the peer's, as it was under daphne (http_abort.py keys on it).
        proxy_headers=False,
        timeout_graceful_shutdown=OPEN_REQUESTS_GRACE,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's ``Server`` that drains on the first stop signal (see the module docstring).
    ``on_ready`` gets the bound (host, port) pairs once the server listens."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain_timeout: float,
        on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.drain_timeout = drain_timeout
        self.on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready([sock.getsockname()[:2] for server in self.servers for sock in server.sockets])

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal.signal handler (uvicorn's capture_signals): it runs on the main thread, which
        # is the loop's, between two bytecodes, so the drain is scheduled rather than started here.
        if self._draining:
            logger.warning("%s during the drain: exiting now", signal.Signals(sig).name)
            os._exit(128 + sig)
        if self._loop is None:
            self.should_exit = True  # not serving yet: nothing to drain
            return
        self._draining = True
        # Exit even if the loop itself is stuck: a thread, not a loop timer.
        watchdog = threading.Timer(self.drain_timeout + STOP_GRACE, self._cut_off)
        watchdog.daemon = True
        watchdog.start()
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        assert self._loop is not None
        logger.info("%s: draining for up to %ss", signal.Signals(sig).name, self.drain_timeout)
        deadline = self._loop.time() + self.drain_timeout
        self._drain_task = self._loop.create_task(self._drain_then_stop(deadline), name="drain")

    async def _drain_then_stop(self, deadline: float) -> None:
        try:
            await drain.drain(deadline)
        except Exception:
            logger.exception("drain failed")
        finally:
            logger.info("stopping the server")
            self.should_exit = True

    @staticmethod
    def _cut_off() -> None:
        logger.error("the drain and stop overran CODEXGW_DRAIN_TIMEOUT: exiting now")
        os._exit(1)
