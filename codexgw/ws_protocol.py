"""uvicorn's sans-I/O WebSocket protocol, pausing reads on a backlog rather than per message.

uvicorn's ``websockets-sansio`` protocol pauses the socket's reading after every message it
queues for the application and resumes it when the application has taken the last one: two
changes to the loop's poller per message, ~4 per request through the gateway (a request in
from the client, its answer in from the executor). ``BacklogPausingProtocol`` (given to uvicorn
as its ``ws`` class) pauses only once ``PAUSE_MESSAGES`` messages or ``PAUSE_BYTES`` bytes wait
unread, and resumes, as uvicorn does, when the application has taken them all. What one read
of the socket brings is queued either way; the bound is on what more is read while the
application lags behind.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# Messages, and bytes of them, waiting for the application before the socket stops being read.
PAUSE_MESSAGES = 16
PAUSE_BYTES = 1024 * 1024


class BacklogPausingProtocol(WebSocketsSansIOProtocol):
    _waiting_bytes = 0

    def send_receive_event_to_app(self) -> None:
        frames = self.frames
        size = len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
        queued = self.queue.qsize()
        paused = self.read_paused
        # uvicorn pauses whenever it is not paused yet: tell it it is, and decide below.
        self.read_paused = True
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        waiting = self.queue.qsize()
        if waiting == queued:
            # Not queued: after the application's close uvicorn discards what comes and keeps
            # reading until the peer's close reply, which must not wait behind the backlog.
            return
        self._waiting_bytes += size
        backlog = waiting >= PAUSE_MESSAGES or self._waiting_bytes >= PAUSE_BYTES
        if backlog and not self.read_paused and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        # A text message is taken off in characters (at most its bytes): the count errs towards
        # pausing early, and starts again from zero whenever the queue is empty.
        message = await super().receive()
        if self.queue.empty():
            self._waiting_bytes = 0
        else:
            data = message.get("text") or message.get("bytes") or b""
            self._waiting_bytes -= len(data) if isinstance(data, str | bytes) else 0
        return message
