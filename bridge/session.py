"""The per-process home of one executor's multiplexer.

An ``ExecutorSession`` outlives individual executor WebSockets for the exec-server retention
window, so a reconnecting executor (the same process) finds its virtual sessions intact. The
virtual-session table is also kept in the shared store (``bridge.vsession_store``): when the
executor reconnects to another process (its holder died or drained), that process claims the
table, takes the sessions over and tells every bridge still pointing at the old process to
reconnect (close 4002) and resume. Every
input — executor frames, bridge frames from this process (in-process path) or from other
processes (the channel layer, addressed to the session's ``inbox`` channel, which presence
names) and timers — goes through one bounded queue and one task, so the multiplexer is only
ever touched by that task. A full queue makes producers wait: backpressure, not loss. The
events it takes are in ``bridge.session_events``. One shortcut: a connection's own reader
(``put(..., here=True)``) that finds the task idle, waiting on an empty queue, takes the turn
itself and handles its frame in place, in order, under the same turn lock: a task switch less
per frame each way (docs/performance.md, "A frame handled in its reader's task").

Past the 400 lines we aim for: the task's steps (flushing the table, carrying out the
multiplexer's actions, links to other processes, drain) share its state and are one role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings

from bridge import exec_session_store, frame_fit, frame_json, vsession_store
from bridge.layer_frames import LayerLink, Reassembler, ReceiverStuck, links_drained
from bridge.multiplexer import (
    Action,
    CloseBridge,
    CloseExecutor,
    Dropped,
    Multiplexer,
    SaveSession,
    ToBridge,
    ToExecutor,
)
from bridge.protocol import (
    CLOSE_EXECUTOR_LOST,
    CLOSE_EXECUTOR_REPLACED,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN,
    JSON,
)
from bridge.sent_progress import SentProgress
from bridge.session_events import (
    BridgeClosed,
    BridgeFrame,
    BridgeLink,
    BridgeOpen,
    BridgeStuck,
    Drain,
    Event,
    Evict,
    ExecClosed,
    ExecFrame,
    ExecOpen,
    ExecutorLink,
    Moved,
    Wake,
)
from codexgw import metrics
from executors import services

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
# Queued events handled before the session lets the process's other tasks run.
EVENTS_IN_A_ROW = 32
# Sequence progress reaches the shared table at most this much later (structural changes go
# out before they take effect); a failed write is retried after FLUSH_RETRY.
FLUSH_DELAY = 0.1
FLUSH_RETRY = 1.0
# On a drain, how long the closing bridges' queued frames may take to leave before the table is
# stored (what is still queued then is stored as not delivered: repeated after the resume).
DRAIN_SEND_WAIT = 5.0


def executor_group(exe_id: str) -> str:
    """The channel-layer group of every bridge to ``exe_id``, on any process: told when the
    executor's sessions move to another process."""
    return f"bridges.{exe_id}"


_sessions: dict[str, ExecutorSession] = {}
_by_inbox: dict[str, ExecutorSession] = {}
_creating: dict[str, asyncio.Lock] = {}


async def session_for(exe_id: str) -> ExecutorSession:
    """This process's session for the executor, created (and its saved exec-server session
    loaded) on first use."""
    lock = _creating.setdefault(exe_id, asyncio.Lock())
    async with lock:
        session = _sessions.get(exe_id)
        if session is None or session.finished:
            saved = await exec_session_store.load(exe_id)
            layer = get_channel_layer()
            assert layer is not None
            session = ExecutorSession(exe_id, layer, saved)
            await session.start()
            _sessions[exe_id] = session
            _by_inbox[session.inbox] = session
        return session


async def drain_all() -> None:
    """This process is shutting down: every executor session stores its virtual-session table,
    answers every pending bridge request (retryable error), closes its bridges and its executor
    with 1012 (they reconnect to another process, which takes the sessions over) and ends.
    Returns once the closes have been sent to bridges in other processes too; the caller bounds
    the wait."""
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    for session in list(_sessions.values()):
        if not session.finished:
            done: asyncio.Future[None] = loop.create_future()
            await session.put(Drain(done))
            waits.append(done)
    await asyncio.gather(*waits)
    await links_drained()


def live_sessions() -> list[ExecutorSession]:
    """This process's executor sessions that have not ended (a copy: metrics read it from a
    worker thread while the event loop changes the registry)."""
    return [live for live in list(_sessions.values()) if not live.finished]


def local_session(inbox: str) -> ExecutorSession | None:
    """The session behind ``inbox`` when it lives in this process (the in-process fast path)."""
    session = _by_inbox.get(inbox)
    return session if session is not None and not session.finished else None


def drop(reason: str, **context: Any) -> None:
    metrics.DROPS.labels(reason).inc()
    logger.warning("dropped: %s", reason, extra={"reason": reason, **context})


class ExecutorSession:
    def __init__(self, exe_id: str, layer: BaseChannelLayer, saved: exec_session_store.SavedSession | None) -> None:
        self.exe_id = exe_id
        self.layer = layer
        self.mux = Multiplexer(
            exe_id,
            session_id=saved.session_id if saved else None,
            environment_info=saved.environment_info if saved else None,
            resume_window=settings.CXG_BRIDGE_RESUME_WINDOW,
        )
        self.inbox = ""
        self.executor: ExecutorLink | None = None
        self.finished = False
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._bridges: dict[str, BridgeLink] = {}
        self._parts = Reassembler()
        self._tasks: list[asyncio.Task[None]] = []
        self._flush_at: float | None = None
        self._table_lost = False
        self._moved_from: str | None = None
        self._progress = SentProgress()
        self._in_a_row = 0
        # Held while an event is handled, by the session's task or by a reader taking its turn.
        self._turn = asyncio.Lock()
        # While the task waits on an empty queue: when it will wake (mux clock; inf: not before
        # an event). None while it is not waiting.
        self._parked_until: float | None = None
        self._turn_failed: Exception | None = None

    async def start(self) -> None:
        self.inbox = await self.layer.new_channel()
        await self._claim_table()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"mux {self.exe_id}"),
            asyncio.create_task(self._read_layer(), name=f"mux inbox {self.exe_id}"),
        ]

    async def _claim_table(self) -> None:
        """Own the executor's virtual-session table, taking over the sessions stored in it."""
        claimed = await vsession_store.claim(self.exe_id, self.inbox)
        self.mux.restore(claimed.sessions, claimed.next_handle)
        self._progress.claimed(claimed.sessions)
        if claimed.previous_owner is not None and claimed.previous_owner != self.inbox:
            self._moved_from = claimed.previous_owner
            logger.info(
                "took over the executor's virtual sessions",
                extra={"exe_id": self.exe_id, "sessions": len(claimed.sessions)},
            )

    async def announce_takeover(self) -> None:
        """Tell the table's previous owner, and every bridge still pointing at it, that the
        sessions live here now. Called once the executor's presence names this session, so a
        bridge that joins the group later finds the new holder when it checks presence."""
        previous, self._moved_from = self._moved_from, None
        if previous is None:
            return
        with contextlib.suppress(ChannelFull):
            await self.layer.send(previous, {"type": "mux.moved", "owner": self.inbox})
        await self.layer.group_send(executor_group(self.exe_id), {"type": "bridge.moved", "inbox": self.inbox})

    async def put(self, event: Event, *, here: bool = False) -> None:
        """Queue ``event`` for the session's task. With ``here`` (a connection's reader, a task
        that is not cancelled mid-frame) the caller handles it itself when the session's task is
        idle: nothing queued, nothing being handled, so the order is the same."""
        if self.finished:
            if isinstance(event, BridgeOpen):
                await event.bridge.close_from_gateway(CLOSE_EXECUTOR_LOST, "executor session ended")
            elif isinstance(event, Drain) and not event.done.done():
                event.done.set_result(None)
            return
        if here and self._parked_until is not None and self._queue.empty() and not self._turn.locked():
            await self._take_turn(event, self._parked_until)
            return
        await self._queue.put(event)

    async def _take_turn(self, event: Event, parked_until: float) -> None:
        try:
            async with self._turn:
                try:
                    await self._step(await self._handle(event))
                except asyncio.CancelledError:
                    # The reader's connection is ending mid-frame: what this turn had left to send is lost.
                    drop("session_turn_cancelled", exe_id=self.exe_id)
                    raise
                except Exception as error:
                    self._turn_failed = error  # the session's task fails as if it had handled it
        finally:
            wake = self._wake_at()
            if self._turn_failed is not None or self.mux.finished or (wake is not None and wake < parked_until):
                with contextlib.suppress(asyncio.QueueFull):  # a full queue wakes the task anyway
                    self._queue.put_nowait(Wake())

    # --- the one task that owns the multiplexer ---------------------------------------------

    def _wake_at(self) -> float | None:
        """When the task must act without an event: the multiplexer's next deadline or the flush."""
        deadline, flush_at = self.mux.next_deadline(), self._flush_at
        if deadline is None or flush_at is None:
            return flush_at if deadline is None else deadline
        return min(deadline, flush_at)

    async def _run(self) -> None:
        event: Event | None = None  # taken from the queue, not yet handled
        try:
            while not self.finished:
                event = await self._next_event()
                async with self._turn:  # after a reader's turn in progress
                    if self._turn_failed is not None:
                        raise self._turn_failed
                    if self.mux.finished:
                        break  # a reader's turn ended the session: the event is passed on below
                    if event is not None:
                        taken, event = event, None
                        await self._step(await self._handle(taken))
                    deadline = self.mux.next_deadline()
                    if deadline is not None and self.mux.clock() >= deadline:
                        await self._step(self.mux.tick())
                    if self._flush_at is not None and self.mux.clock() >= self._flush_at:
                        await self._flush()
                    self.finished = self.mux.finished
        except Exception:
            logger.exception("executor session failed", extra={"exe_id": self.exe_id})
            await self._perform(self.mux.evicted("gateway error"))
        finally:
            self._finish()
            # Events that raced the end (a drain request among them) are not left waiting.
            if event is not None:
                await self.put(event)
            while not self._queue.empty():
                await self.put(self._queue.get_nowait())

    async def _next_event(self) -> Event | None:
        """The next event, or None once the mux clock reaches ``_wake_at()``. A queued event is
        taken without waiting (under Python 3.11 ``asyncio.wait_for`` runs every wait in a task of
        its own); the deadlines are looked at only when there is none."""
        if not self._queue.empty():
            self._in_a_row += 1
            if self._in_a_row % EVENTS_IN_A_ROW == 0:
                await asyncio.sleep(0)  # a long queue does not hold up the process's other work
            return self._queue.get_nowait()
        self._in_a_row = 0
        wake = self._wake_at()
        patience = None if wake is None else wake - self.mux.clock()
        if patience is not None and patience <= 0:
            await asyncio.sleep(0)
            return None
        self._parked_until = math.inf if wake is None else wake
        try:
            # Cancelling Queue.get() leaves its item queued, so a timeout that races it loses nothing.
            async with asyncio.timeout(patience):
                return await self._queue.get()
        except TimeoutError:
            return None
        finally:
            self._parked_until = None

    async def _step(self, actions: list[Action]) -> None:
        if self.mux.has_urgent_changes:
            await self._flush()
            if self._table_lost:
                return  # another process owns the sessions: these actions are no longer ours
        await self._perform(actions)
        if self.mux.has_changes and self._flush_at is None:
            self._flush_at = self.mux.clock() + FLUSH_DELAY

    async def _flush(self) -> None:
        """Write the table's changes to the shared store (only while this session owns it)."""
        self._flush_at = None
        if self._table_lost or not self.mux.has_changes:
            return
        changes = self.mux.take_changes()
        senders = {conn_id: bridge.sending for conn_id, bridge in self._bridges.items() if bridge.sending is not None}
        changes, unsent = self._progress.hold_back(changes, self.mux.delivery_conn, senders)
        if changes.upserts or changes.deletes or changes.urgent:
            try:
                still_owner = await vsession_store.write(self.exe_id, self.inbox, changes)
            except asyncio.CancelledError:
                # A reader's turn, cancelled: the changes are written by the next flush.
                self.mux.requeue(changes)
                self._flush_at = self.mux.clock() + FLUSH_DELAY
                raise
            except Exception:
                logger.warning("virtual-session table write failed", extra={"exe_id": self.exe_id}, exc_info=True)
                self.mux.requeue(changes)
                self._flush_at = self.mux.clock() + FLUSH_RETRY
                return
            if not still_owner:
                logger.warning("another process claimed the executor's virtual sessions", extra={"exe_id": self.exe_id})
                await self._perform(self._let_go())
                return
            self._progress.written(changes)
        if unsent:
            # Written again once their frames have left, with the progress they then stand for.
            self.mux.write_again(unsent)
            self._flush_at = self.mux.clock() + FLUSH_DELAY

    def _let_go(self) -> list[Action]:
        """Another process owns the executor's sessions now: end this session's part in them."""
        self._table_lost = True
        return self.mux.evicted("the executor's sessions moved to another gateway process")

    async def _handle(self, event: Event) -> list[Action]:
        if isinstance(event, ExecFrame):
            if event.link is not self.executor:
                return [Dropped("frame_from_replaced_executor")]
            return self.mux.executor_message(frame_json.decode_executor_frame(event.text))
        if isinstance(event, BridgeFrame):
            return self.mux.bridge_message(event.conn_id, frame_json.decode(event.text))
        if isinstance(event, ExecOpen):
            actions: list[Action] = []
            if self.executor is not None and self.executor is not event.link:
                actions.extend(self.mux.executor_disconnected())
                await self.executor.close_executor(CLOSE_EXECUTOR_REPLACED)
            self.executor = event.link
            return actions + self.mux.executor_connected()
        if isinstance(event, ExecClosed):
            if event.link is not self.executor:
                return []
            self.executor = None
            return self.mux.executor_disconnected()
        if isinstance(event, BridgeOpen):
            self._bridges[event.conn_id] = event.bridge
            return self.mux.bridge_attached(event.conn_id)
        if isinstance(event, BridgeClosed):
            bridge = self._bridges.pop(event.conn_id, None)
            unsent = bridge.link.abandon() if isinstance(bridge, FarBridge) else []
            self._owe_again(event.conn_id, unsent)
            lost = self._parts.forget(event.conn_id)
            actions = [Dropped("partial_frame_of_departed_bridge")] * lost
            actions += [Dropped("bridge_gone_before_send")] * len(unsent)
            return actions + self.mux.bridge_detached(event.conn_id)
        if isinstance(event, BridgeStuck):
            if self._bridges.get(event.conn_id) is not event.bridge:
                return []  # already closed (or already given up on from _to_bridge)
            return await self._give_up_on(event.conn_id)
        if isinstance(event, Wake):
            return []
        if isinstance(event, Moved):
            if event.owner == self.inbox:
                return []
            logger.info("the executor's virtual sessions moved to another process", extra={"exe_id": self.exe_id})
            return self._let_go()
        if isinstance(event, Drain):
            await self._perform(self.mux.drain(CLOSE_SERVICE_RESTART, "gateway restarting: reconnect"))
            # Their frames first, so the stored progress is exact and nothing repeats after resume.
            closing = [link.drained() for link in self._progress.closing_links()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*closing), DRAIN_SEND_WAIT)
            await self._flush()
            if not event.done.done():
                event.done.set_result(None)
            return []
        if self.executor is not None and self.executor.connection_id == event.connection_id:
            return self.mux.evicted("a newer connection for this executor took over in another gateway process")
        return []

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToBridge):
                text = self._fitting(action.message)
                if text is not None:
                    await self._to_bridge(action.conn_id, text)
            elif isinstance(action, ToExecutor):
                text, refusal = frame_fit.for_executor(action.message)
                if refusal is not None:
                    await self._perform(self.mux.executor_message(refusal))
                elif self.executor is None:
                    drop("executor_gone_before_send", exe_id=self.exe_id)
                else:
                    try:
                        await self.executor.send_to_executor(text)
                    except Exception:
                        # Closed under us: ExecClosed follows and fails what waits for an answer.
                        drop("executor_gone_before_send", exe_id=self.exe_id)
            elif isinstance(action, CloseBridge):
                await self._close_bridge(action.conn_id, action.code, action.reason)
            elif isinstance(action, CloseExecutor):
                if self.executor is not None:
                    await self.executor.close_executor(action.code)
            elif isinstance(action, SaveSession):
                await exec_session_store.save(
                    self.exe_id, exec_session_store.SavedSession(action.session_id, action.environment_info)
                )
                await self._record_environment(action.environment_info)
            else:
                drop(action.reason, exe_id=self.exe_id, detail=action.detail)

    def _fitting(self, message: JSON) -> str | None:
        text, dropped = frame_fit.for_client(message)
        if dropped is not None:
            drop(dropped[0], exe_id=self.exe_id, detail=dropped[1])
        return text

    async def _record_environment(self, environment_info: JSON) -> None:
        """Version and OS for the executor's row: codex reports them only in its handshake."""
        try:
            await database_sync_to_async(services.record_environment)(self.exe_id, environment_info)
        except Exception:
            # Bookkeeping only: the session works on without it.
            logger.warning("could not record the executor's version", extra={"exe_id": self.exe_id}, exc_info=True)

    async def _to_bridge(self, conn_id: str, text: str) -> None:
        bridge = self._bridges.get(conn_id)
        if bridge is None:
            drop("bridge_gone_before_send", exe_id=self.exe_id)
            self._owe_again(conn_id, [text])
            return
        try:
            await bridge.deliver(text)
        except ReceiverStuck:
            self._owe_again(conn_id, [text])
            if self._bridges.get(conn_id) is bridge:
                await self._perform(await self._give_up_on(conn_id))
        except Exception:
            # Its socket closed under us (its departure is on the way): one bridge leaving
            # must never end the session every other client shares.
            drop("bridge_gone_before_send", exe_id=self.exe_id, connection_id=conn_id)
            self._owe_again(conn_id, [text])

    async def _give_up_on(self, conn_id: str) -> list[Action]:
        """A remote bridge's channel stayed full: close it with 1013 and detach it; what its
        link discarded is owed to its session again."""
        drop("bridge_channel_full", exe_id=self.exe_id, connection_id=conn_id)
        bridge = self._bridges.get(conn_id)
        if isinstance(bridge, FarBridge):
            self._owe_again(conn_id, bridge.link.discarded)
        await self._close_bridge(conn_id, CLOSE_TRY_AGAIN, "bridge could not keep up")
        return self.mux.bridge_detached(conn_id)

    def _owe_again(self, conn_id: str, texts: list[str]) -> None:
        """Frames for ``conn_id`` that never left this process: the events among them are read
        again when its session resumes, so a bridge that leaves or falls behind loses nothing."""
        if texts and (owed := self.mux.not_delivered(conn_id, map(frame_json.decode, texts))):
            logger.info("events owed again", extra={"exe_id": self.exe_id, "connection_id": conn_id, "events": owed})

    async def _close_bridge(self, conn_id: str, code: int, reason: str) -> None:
        bridge = self._bridges.pop(conn_id, None)
        if bridge is None:
            return
        with contextlib.suppress(Exception):  # already closed: nothing left to tell it
            await bridge.close_from_gateway(code, reason)
        if bridge.sending is not None:
            self._progress.closing(conn_id, bridge.sending)

    # --- bridges in other processes ---------------------------------------------------------

    async def _read_layer(self) -> None:
        while not self.finished:
            message = await self.layer.receive(self.inbox)
            kind = message.get("type")
            conn_id = str(message.get("conn", ""))
            if kind == "mux.bridge_frame":
                for text in self._parts.add_all(conn_id, message):
                    await self.put(BridgeFrame(conn_id, text))
            elif kind == "mux.bridge_open":
                await self.put(BridgeOpen(conn_id, FarBridge(self, conn_id, str(message["reply_to"]))))
            elif kind == "mux.bridge_closed":
                await self.put(BridgeClosed(conn_id))
            elif kind == "mux.evict":
                await self.put(Evict(str(message["connection_id"])))
            elif kind == "mux.moved":
                await self.put(Moved(str(message["owner"])))
            else:
                drop("unknown_layer_message", exe_id=self.exe_id, detail=str(kind))

    def _finish(self) -> None:
        self.finished = True
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if _sessions.get(self.exe_id) is self:
            del _sessions[self.exe_id]
        _by_inbox.pop(self.inbox, None)


class FarBridge:
    """A bridge in another process (``BridgeLink``): its frames, then its close, go out in order
    on a ``LayerLink`` to its channel (``sending``)."""

    def __init__(self, session: ExecutorSession, conn_id: str, channel: str) -> None:
        async def on_stuck() -> None:
            await session.put(BridgeStuck(conn_id, self))

        self.link = self.sending = LayerLink(session.layer, channel, "bridge.frame", on_stuck=on_stuck)

    async def deliver(self, text: str) -> None:
        # Queued on the link (waits only while its outbox is full; ReceiverStuck once it gave
        # up); the link's pump batches what queues up while a layer send is in flight.
        await self.link.send(text)

    async def close_from_gateway(self, code: int, reason: str) -> None:
        # After the link's queued frames, in order; does not wait for them.
        self.link.finish({"type": "bridge.close", "code": code, "reason": reason})
