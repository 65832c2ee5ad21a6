"""Frames on their way to one bridge client, written no faster than the client reads, in bounded
memory, without ever holding up the executor session every other client shares.

A pump writes one frame at a time; the server's ``send`` waits while the connection's write
buffer is full (uvicorn: about 64 KiB), so the pump goes no faster than the client reads, while
``put`` never waits: the pump starts in the caller's task and becomes a task of its own only
when it has to wait. Queued text is bounded by ``limit``
characters: past it, an arriving ``process/output`` frame is not queued but counted in a
``gateway/outputLost {processId, fromSeq, toSeq}`` notice at its place in the queue (consecutive
seqs of a process extend the same notice), so the client learns exactly which seqs it will not
get, in seq order, and the output of other clients is never held up. Everything else (responses,
``process/exited``, ``process/closed``, other notifications) is always queued: it is small and a
client must not lose it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bridge.multiplexer import OUTPUT_LOST
from codexgw import metrics
from codexgw.tasks import start_eagerly

logger = logging.getLogger(__name__)

# Queued text (characters) above which process output waits for room, then is dropped and reported.
OUTBOX_LIMIT = 8 * 1024 * 1024
# How long output waits for room in a full outbox (holding up the sender, and so the executor)
# before the client counts as stalled: then its output is dropped at once until it has read
# half of what is queued.
STALL_PATIENCE = 1.0
_OUTPUT_PREFIX = '{"method":"process/output"'
_EVENT_PREFIX = '{"method":"process/'
_PROCESS_ID = re.compile(r'"processId":("(?:[^"\\]|\\.)*")')
_SEQ = re.compile(r'"seq":(\d+)')


_LOST_PREFIX = f'{{"method":"{OUTPUT_LOST}"'

# Outboxes sending their last frames before a close (waited for by a drain).
_closing: set[BridgeOutbox] = set()


async def closes_sent() -> None:
    """Until every outbox told to close after its output has done so (the drain bounds it)."""
    while _closing:
        await asyncio.gather(*(outbox.drained() for outbox in list(_closing)), return_exceptions=True)
        _closing.difference_update([outbox for outbox in list(_closing) if outbox._task is None])


@dataclass
class _Lost:
    process_id: str
    from_seq: int
    to_seq: int

    def text(self) -> str:
        params = {"processId": self.process_id, "fromSeq": self.from_seq, "toSeq": self.to_seq}
        return json.dumps({"method": OUTPUT_LOST, "params": params}, separators=(",", ":"))


def _event_seq(text: str) -> tuple[str, int] | None:
    """(processId, seq) of a process event (output, exit, close) without decoding the whole
    frame: the multiplexer writes both before the chunk, and base64 never holds a quote."""
    if not text.startswith(_EVENT_PREFIX):
        return None
    process_id, seq = _PROCESS_ID.search(text), _SEQ.search(text)
    if process_id is None or seq is None:
        return None
    quoted = process_id.group(1)
    if "\\" not in quoted:
        return quoted[1:-1], int(seq.group(1))  # no escape: the text is the id (2.6 → 1.6 µs a frame)
    try:
        decoded = json.loads(quoted)
    except ValueError:
        return None
    return (decoded, int(seq.group(1))) if isinstance(decoded, str) else None


class BridgeOutbox:
    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        *,
        limit: int = OUTBOX_LIMIT,
        patience: float = STALL_PATIENCE,
        context: dict[str, Any] | None = None,
    ) -> None:
        self._send = send
        self.limit = limit
        self.patience = patience
        self.stalled = False
        self._room = asyncio.Event()
        self.context = dict(context or {})
        self._queue: deque[str | _Lost] = deque()
        # Per queued item, the first frame (in put() order) it stands for. Items are queued in
        # put() order and a lost notice only ever grows by later frames, so these never decrease
        # along the queue: every frame before the head's has been written (``sent``).
        self._marks: deque[int] = deque()
        self.queued = 0  # frames accepted by put()
        self.sent = 0  # of those, how many have been handed to the connection
        self.queued_chars = 0
        self._open: dict[str, _Lost] = {}  # per process, the notice still queued that may grow
        self._pumping = False
        self._task: asyncio.Task[None] | None = None  # the pump, while it waits to write
        self.closed = False
        self._closer: Callable[[], Awaitable[None]] | None = None  # until the pump runs it
        self._finishing = False  # finish() was called: nothing more is accepted
        self._seen: dict[str, int] = {}  # per process, the highest seq given to the client
        self._told: dict[str, list[tuple[int, int]]] = {}  # per process, gaps told by this outbox

    @property
    def settled(self) -> bool:
        """Every frame accepted so far has been handed to the connection."""
        return self.sent >= self.queued

    @property
    def given_up(self) -> bool:
        """The connection is gone: what was still queued was discarded."""
        return self.closed

    async def put(self, text: str) -> bool:
        """Queue ``text`` for the client; False if the connection is closing or gone (the frame
        never reaches it). Process output that does not fit waits up to ``patience`` for room
        (pacing the sender), unless the client is stalled; then it is counted lost instead."""
        if self.closed or self._finishing:
            return False
        if not self._check_continuity(text):
            return True
        if self.queued_chars + len(text) > self.limit and self._queue:
            found = _event_seq(text) if text.startswith(_OUTPUT_PREFIX) else None
            if found is not None:
                if not self.stalled and not await self._room_for(len(text)):
                    self.stalled = True
                    logger.warning("bridge client stalled: dropping its output", extra=self.context)
                if self.stalled:
                    self.queued += 1
                    self._count_lost(*found)
                    self._kick()
                    return True
        if self.closed:
            return False
        self.queued += 1
        self._append(text)
        self.queued_chars += len(text)
        self._kick()
        return True

    def _append(self, item: str | _Lost, first: int | None = None) -> None:
        self._queue.append(item)
        self._marks.append(self.queued if first is None else first)

    def _check_continuity(self, text: str) -> bool:
        """A frame that skips seqs of its process on this connection means frames were lost on
        the way (a restarted Redis took the channel-layer messages it held): the client is told
        the exact range before the frame. False for a gateway/outputLost this already told."""
        if text.startswith(_LOST_PREFIX):
            try:
                params = json.loads(text)["params"]
                process_id, low, high = params["processId"], int(params["fromSeq"]), int(params["toSeq"])
            except (ValueError, KeyError, TypeError):
                return True
            if any(a <= low and high <= b for a, b in self._told.get(process_id, ())):
                return False  # told already (the multiplexer may report a gap after later output)
            self._seen[process_id] = max(self._seen.get(process_id, 0), high)
            return True
        found = _event_seq(text)
        if found is None:
            return True
        process_id, seq = found
        last = self._seen.get(process_id)
        if last is not None and seq > last + 1:
            notice = _Lost(process_id, last + 1, seq - 1)
            self._append(notice, self.queued + 1)  # stands for no frame: the one after it comes next
            self._told.setdefault(process_id, []).append((last + 1, seq - 1))
            metrics.DROPS.labels("output_lost_in_transit").inc()
            logger.warning(
                "dropped: output_lost_in_transit",
                extra={**self.context, "process_id": process_id, "from_seq": last + 1, "to_seq": seq - 1},
            )
        if last is None or seq > last or seq == 1:
            self._seen[process_id] = seq  # seq 1 again: the id was reused for a new process
        return True

    async def _room_for(self, size: int) -> bool:
        """Wait up to ``patience`` until ``size`` more characters fit; False if they did not."""
        try:
            async with asyncio.timeout(self.patience):
                while self.queued_chars + size > self.limit and self._queue and not self.closed:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            return False
        return True

    def _count_lost(self, process_id: str, seq: int) -> None:
        """A process/output frame becomes (part of) a lost notice at its place in the queue."""
        notice = self._open.get(process_id)
        if notice is not None and notice.to_seq == seq - 1:
            notice.to_seq = seq
        else:
            notice = _Lost(process_id, seq, seq)
            self._open[process_id] = notice
            self._append(notice)
        metrics.DROPS.labels("output_lost_slow_reader").inc()

    def finish(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Close the connection (``closer``) after everything queued has been sent; what is put
        after this is ignored. A close must not overtake output the session counts as delivered."""
        if self.closed or self._finishing:
            return
        self._finishing = True
        self._closer = closer
        _closing.add(self)
        self._kick()

    async def drained(self) -> None:
        """Until everything queued has been sent (tests)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def close(self) -> None:
        """The connection is gone: discard what is queued."""
        self.closed = True
        _closing.discard(self)
        self._queue.clear()
        self._marks.clear()
        self._open.clear()
        self.queued_chars = 0
        self._room.set()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _kick(self) -> None:
        # Started in the caller's task: a frame that finds room in the connection's buffer is
        # written at once, and only a pump that has to wait becomes a task (``_task``).
        if not self._pumping and (self._queue or self._closer is not None):
            self._pumping = True
            task = start_eagerly(self._pump(), name="bridge outbox")
            if task is not None:
                self._task = task

    async def _pump(self) -> None:
        try:
            while self._queue and not self.closed:
                item = self._queue.popleft()
                self._marks.popleft()
                if isinstance(item, _Lost):
                    if self._open.get(item.process_id) is item:
                        del self._open[item.process_id]
                    logger.warning(
                        "dropped: output_lost_slow_reader",
                        extra={
                            **self.context,
                            "process_id": item.process_id,
                            "from_seq": item.from_seq,
                            "to_seq": item.to_seq,
                        },
                    )
                    text = item.text()
                else:
                    self.queued_chars -= len(item)
                    text = item
                    self._room.set()
                    if self.stalled and self.queued_chars <= self.limit // 2:
                        self.stalled = False  # reading again: output waits for room again
                await self._send(text)
                self.sent = self._marks[0] - 1 if self._marks else self.queued
            closer, self._closer = self._closer, None
            if closer is not None and not self.closed:
                _closing.discard(self)
                await closer()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The connection went away mid-send (uvicorn's ClientDisconnected) or a bug: either way
            # the client gets nothing more.
            logger.warning("bridge outbox: send failed", extra=self.context, exc_info=True)
            self.close()
        finally:
            self._task = None
            self._pumping = False
        if self._queue and not self.closed:
            self._kick()
