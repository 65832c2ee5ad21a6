"""A connection's reader that finds the executor session idle handles its frame in place
(``ExecutorSession.put(..., here=True)``): the same order, the same timers, the same failure, as
when the session's task handles it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer

from bridge import session as sessions
from bridge import session_events
from codexgw import metrics
from tests.bridge.test_session import Bridge, FakeExecutor, _stored_progress, initialize, ready_session
from tests.e2e.harness import async_wait_for

__all__ = ["ready_session"]  # the fixture, shared with test_session.py


class HeldBridge(Bridge):
    """A client whose deliveries wait while ``open`` is clear (a full socket buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.open.set()

    async def deliver(self, text: str) -> None:
        await self.open.wait()
        await super().deliver(text)


class HeldExecutor(FakeExecutor):
    """An executor connection whose writes wait while ``open`` is clear (a full socket buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.open.set()

    async def send_to_executor(self, text: str) -> None:
        await self.open.wait()
        await super().send_to_executor(text)


async def _attached(session: sessions.ExecutorSession, conn_id: str, bridge: Bridge | None = None) -> Bridge:
    bridge = bridge or Bridge()
    await session.put(session_events.BridgeOpen(conn_id, bridge))
    await session.put(session_events.BridgeFrame(conn_id, initialize(1)))
    await session.put(session_events.BridgeFrame(conn_id, json.dumps({"method": "initialized"})))
    assert await async_wait_for(lambda: bridge.received, 5)
    await asyncio.sleep(0.05)  # the session's task is back to waiting
    return bridge


def _request(request_id: int, method: str = "fs/getMetadata") -> str:
    return json.dumps({"id": request_id, "method": method, "params": {"path": "/"}})


@pytest.mark.django_db
async def test_a_readers_frame_is_handled_before_put_returns_when_the_session_is_idle(ready_session):
    session, executor = ready_session
    await _attached(session, "c")
    await session.put(session_events.BridgeFrame("c", _request(2)), here=True)
    assert executor.sent[-1]["method"] == "fs/getMetadata"  # sent already: no task switch
    await session.put(session_events.BridgeFrame("c", _request(3, "fs/readDirectory")))
    assert executor.sent[-1]["method"] == "fs/getMetadata"  # queued for the session's task
    assert await async_wait_for(lambda: executor.sent[-1]["method"] == "fs/readDirectory", 5)


@pytest.mark.django_db
async def test_frames_arriving_during_a_readers_turn_wait_for_it(ready_session):
    session, executor = ready_session
    first, second = HeldBridge(), Bridge()
    await _attached(session, "first", first)
    await _attached(session, "second", second)
    await session.put(session_events.BridgeFrame("first", _request(2)), here=True)
    forwarded = executor.sent[-1]
    first.open.clear()  # the first client's socket is full: the answer's delivery waits
    answer = session_events.ExecFrame(executor, json.dumps({"id": forwarded["id"], "result": {}}))
    held = asyncio.create_task(session.put(answer, here=True))
    await asyncio.sleep(0.05)
    assert not held.done()
    await session.put(session_events.BridgeFrame("second", _request(3, "fs/readDirectory")), here=True)
    await asyncio.sleep(0.05)
    assert executor.sent[-1] is forwarded  # queued behind the turn in progress, not handled beside it
    first.open.set()
    await held
    assert await async_wait_for(lambda: executor.sent[-1]["method"] == "fs/readDirectory", 5)
    assert first.received[-1] == {"id": 2, "result": {}}


@pytest.mark.django_db
async def test_a_readers_turn_that_leaves_progress_to_store_wakes_the_session(ready_session):
    """Output handled in a reader's task moves the stored progress on although the session's task
    was waiting with no timer (it would otherwise store it only at the next event)."""
    session, executor = ready_session
    await _attached(session, "c")
    start = {"processId": "p1", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {}, "tty": False}
    await session.put(
        session_events.BridgeFrame("c", json.dumps({"id": 2, "method": "process/start", "params": start}))
    )
    assert await async_wait_for(lambda: executor.sent[-1]["method"] == "process/start", 5)
    exec_pid = executor.sent[-1]["params"]["processId"]
    reply = {"id": executor.sent[-1]["id"], "result": {"processId": exec_pid, "sandboxType": "none"}}
    await session.put(session_events.ExecFrame(executor, json.dumps(reply)), here=True)
    await asyncio.sleep(sessions.FLUSH_DELAY * 3)
    params = {"processId": exec_pid, "seq": 1, "stream": "stdout", "chunk": "aGkK"}
    output = session_events.ExecFrame(executor, json.dumps({"method": "process/output", "params": params}))
    await session.put(output, here=True)
    assert await async_wait_for(lambda: _stored_progress(session.exe_id).get("p1") == 1, 5)


@pytest.mark.django_db
async def test_a_readers_turn_that_fails_ends_the_session_as_the_task_would(ready_session, monkeypatch):
    session, executor = ready_session
    bridge = await _attached(session, "c")

    def broken(message: Any) -> Any:
        raise RuntimeError("a bug in the multiplexer")

    monkeypatch.setattr(session.mux, "executor_message", broken)
    await session.put(session_events.ExecFrame(executor, json.dumps({"method": "x"})), here=True)
    assert await async_wait_for(lambda: session.finished, 5)
    assert bridge.closed is not None  # told, as on any session failure


@pytest.mark.django_db
async def test_a_reader_cancelled_mid_turn_is_counted_and_the_session_goes_on():
    session = sessions.ExecutorSession("exe-session-cancel", InMemoryChannelLayer(), None)
    await session.start()
    executor = HeldExecutor()
    try:
        await session.put(session_events.ExecOpen(executor))
        assert await async_wait_for(lambda: executor.sent, 5)
        answer = {"id": executor.sent[0]["id"], "result": {"sessionId": "exec-1", "environmentInfo": {}}}
        await session.put(session_events.ExecFrame(executor, json.dumps(answer)))
        assert await async_wait_for(lambda: len(executor.sent) == 2, 5)
        bridge = await _attached(session, "c")
        cancelled = metrics.DROPS.labels("session_turn_cancelled")._value.get()
        executor.open.clear()
        held = asyncio.create_task(session.put(session_events.BridgeFrame("c", _request(2)), here=True))
        await asyncio.sleep(0.05)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        assert metrics.DROPS.labels("session_turn_cancelled")._value.get() == cancelled + 1
        executor.open.set()
        await session.put(session_events.BridgeFrame("c", _request(3, "fs/readDirectory")), here=True)
        assert await async_wait_for(lambda: executor.sent[-1]["method"] == "fs/readDirectory", 5)
        assert not session.finished
        assert bridge.closed is None
    finally:
        executor.open.set()
        await session.put(session_events.Drain(asyncio.get_running_loop().create_future()))


@pytest.mark.django_db
async def test_a_frame_does_not_overtake_an_open_queued_just_before_it(ready_session):
    session, _ = ready_session
    await asyncio.sleep(0.05)
    bridge = Bridge()
    await session.put(session_events.BridgeOpen("x", bridge))  # the task is woken, has not run yet
    await session.put(session_events.BridgeFrame("x", initialize(1)), here=True)
    assert await async_wait_for(lambda: bridge.received, 5)  # answered: the open came first


@pytest.mark.django_db
async def test_events_the_task_took_while_a_turn_failed_are_not_left_waiting(ready_session, monkeypatch):
    """The session's task takes a drain request and an open while a reader's turn is failing:
    the session ends as on any failure, and both still get their answer."""
    session, _ = ready_session
    await _attached(session, "c")
    failing = asyncio.Event()
    handle = session._handle

    async def breaking(event: Any) -> Any:
        if isinstance(event, session_events.BridgeFrame) and "boom" in event.text:
            await failing.wait()
            raise RuntimeError("a bug in the multiplexer")
        return await handle(event)

    monkeypatch.setattr(session, "_handle", breaking)
    turn = asyncio.create_task(session.put(session_events.BridgeFrame("c", _request(9, "boom")), here=True))
    await asyncio.sleep(0.05)
    drained = asyncio.get_running_loop().create_future()
    await session.put(session_events.Drain(drained))
    late = Bridge()
    await session.put(session_events.BridgeOpen("late", late))
    await asyncio.sleep(0.05)  # the task has taken the drain request and waits for the turn
    failing.set()
    await turn
    assert await async_wait_for(lambda: session.finished, 5)
    await asyncio.wait_for(drained, 5)
    assert await async_wait_for(lambda: late.closed is not None, 5)
