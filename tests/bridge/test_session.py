"""The session driver (``bridge/session.py``) around the multiplexer: a peer whose socket closed
under it must not end the session every other client shares."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer

from bridge import session as sessions
from bridge import vsession_store
from bridge.protocol import CLOSE_EXECUTOR_LOST, CLOSE_EXECUTOR_REPLACED
from executors import services
from executors.models import Executor
from tests.e2e.harness import async_wait_for

ENV_INFO = {"shell": {"name": "bash", "path": "/bin/bash"}, "platformOs": "linux"}


class FakeExecutor:
    connection_id = "conn-1"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def send_to_executor(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close_executor(self, code: int) -> None:
        self.closed = code


class Bridge:
    def __init__(self, *, gone: bool = False) -> None:
        self.gone = gone
        self.received: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    async def deliver(self, text: str) -> None:
        if self.gone:
            raise RuntimeError("Attempt to send on a closed protocol")  # what autobahn raises
        self.received.append(json.loads(text))

    async def close_from_gateway(self, code: int, reason: str) -> None:
        if self.gone:
            raise RuntimeError("Attempt to send on a closed protocol")
        self.closed = (code, reason)


def initialize(request_id: int) -> str:
    return json.dumps({"id": request_id, "method": "initialize", "params": {"clientName": "test"}})


@pytest.fixture
async def ready_session() -> Any:
    session = sessions.ExecutorSession("exe-session-test", InMemoryChannelLayer(), None)
    await session.start()
    executor = FakeExecutor()
    await session.put(sessions.ExecOpen(executor))
    assert await async_wait_for(lambda: executor.sent, 5)
    handshake = executor.sent[0]
    answer = {"id": handshake["id"], "result": {"sessionId": "exec-1", "environmentInfo": ENV_INFO}}
    await session.put(sessions.ExecFrame(executor, json.dumps(answer)))
    assert await async_wait_for(lambda: len(executor.sent) == 2, 5)  # initialized
    yield session, executor
    await session.put(sessions.Drain(1012, "test over", asyncio.get_running_loop().create_future()))


@pytest.mark.django_db
async def test_a_bridge_whose_socket_closed_under_the_session_does_not_end_it(ready_session):
    session, executor = ready_session
    gone, alive = Bridge(gone=True), Bridge()
    await session.put(sessions.BridgeOpen("gone", None, local=gone))
    await session.put(sessions.BridgeFrame("gone", initialize(1)))
    await session.put(sessions.BridgeOpen("alive", None, local=alive))
    await session.put(sessions.BridgeFrame("alive", initialize(7)))
    assert await async_wait_for(lambda: alive.received, 5)
    assert alive.received[0]["id"] == 7
    assert alive.received[0]["result"]["environmentInfo"] == ENV_INFO
    assert not session.finished
    assert executor.closed is None


@pytest.mark.django_db
async def test_a_session_whose_table_another_process_claimed_lets_go(ready_session):
    session, executor = ready_session
    await vsession_store.claim(session.exe_id, "inbox-of-another-process")
    bridge = Bridge()
    await session.put(sessions.BridgeOpen("late", None, local=bridge))
    await session.put(sessions.BridgeFrame("late", initialize(3)))  # a new session: stored first, refused
    assert await async_wait_for(lambda: session.finished, 5)
    assert bridge.received == []  # no session id that no process could take over
    assert bridge.closed == (CLOSE_EXECUTOR_LOST, "the executor's sessions moved to another gateway process")
    assert executor.closed == CLOSE_EXECUTOR_REPLACED
    assert len(executor.sent) == 2  # initialize and initialized only


@pytest.mark.django_db(transaction=True)
async def test_the_handshake_records_the_version_and_os_the_executor_reports():
    exe_id = (await database_sync_to_async(services.register_executor)("user-s")).executor.exe_id
    session = sessions.ExecutorSession(exe_id, InMemoryChannelLayer(), None)
    await session.start()
    executor = FakeExecutor()
    try:
        await session.put(sessions.ExecOpen(executor))
        assert await async_wait_for(lambda: executor.sent, 5)
        info = {**ENV_INFO, "executorVersion": "0.171.0"}
        answer = {"id": executor.sent[0]["id"], "result": {"sessionId": "exec-1", "environmentInfo": info}}
        await session.put(sessions.ExecFrame(executor, json.dumps(answer)))

        row = database_sync_to_async(lambda: Executor.objects.values("codex_version", "client_os").get(exe_id=exe_id))
        for _ in range(100):
            if await row() == {"codex_version": "0.171.0", "client_os": "linux"}:
                break
            await asyncio.sleep(0.05)
        assert await row() == {"codex_version": "0.171.0", "client_os": "linux"}
    finally:
        await session.put(sessions.Drain(1012, "test over", asyncio.get_running_loop().create_future()))
