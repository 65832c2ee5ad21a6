"""The in-process bridge (``bridge.inproc``) to an executor session this process holds: the
client's frames go straight to the session, its close codes are the WebSocket's, and a client
told the executor moved (4002) redials and resumes its virtual session. (The channel-layer path
to a session in another process: tests/bridge/test_client.py, against a real gateway.)"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from bridge import inproc, session_events
from bridge import session as sessions
from bridge.client import BridgeClosed, BridgeDialError
from bridge.client_pool import Pool
from bridge.protocol import CLOSE_EXECUTOR_LOST, CLOSE_SERVICE_RESTART, CLOSE_TURN_REVOKED
from executors import captoken, services
from executors.models import WorkspaceExecutor
from executors.presence import Holder, presence_store
from executors.revocation import turn_group
from tests.bridge.test_session import ENV_INFO, FakeExecutor
from tests.e2e.harness import async_wait_for

pytestmark = pytest.mark.django_db(transaction=True)

WORKSPACE = "ws-inproc"


@dataclass
class Held:
    exe_id: str
    session: sessions.ExecutorSession
    executor: FakeExecutor
    turns: list[str]

    async def token(self) -> str:
        turn = f"trn_inproc_{len(self.turns)}"
        self.turns.append(turn)
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn, workspace_id=WORKSPACE, ttl=600)

    async def forwarded(self, count: int) -> dict[str, Any]:
        """The ``count``-th frame the executor got (once it has)."""
        assert await async_wait_for(lambda: len(self.executor.sent) >= count, 5)
        return self.executor.sent[count - 1]

    async def reply(self, request: dict[str, Any], result: dict[str, Any]) -> None:
        answer = {"id": request["id"], "result": result}
        await self.session.put(session_events.ExecFrame(self.executor, json.dumps(answer)))


def _bind(exe_id: str) -> None:
    WorkspaceExecutor.objects.create(workspace_id=WORKSPACE, executor_id=exe_id, name="box")


@pytest.fixture
async def held(fresh_channel_layer: None) -> AsyncIterator[Held]:
    """An executor whose session this process holds (presence names its inbox), handshake done."""
    exe_id = (await database_sync_to_async(services.register_executor)("user-i", "box")).executor.exe_id
    await database_sync_to_async(_bind)(exe_id)
    session = await sessions.session_for(exe_id)
    executor = FakeExecutor()
    await session.put(session_events.ExecOpen(executor))
    assert await async_wait_for(lambda: executor.sent, 5)
    answer = {"id": executor.sent[0]["id"], "result": {"sessionId": "exec-1", "environmentInfo": ENV_INFO}}
    await session.put(session_events.ExecFrame(executor, json.dumps(answer)))
    assert await async_wait_for(lambda: len(executor.sent) == 2, 5)  # initialized
    await database_sync_to_async(presence_store().claim)(exe_id, Holder(session.inbox, "conn-1", time.time()))
    yield Held(exe_id, session, executor, [])
    await session.put(session_events.Drain(asyncio.get_running_loop().create_future()))


async def test_calls_and_events_reach_a_session_of_this_process(held: Held):
    pool = Pool(inproc.connect, held.token)
    client = await pool.get(held.exe_id)
    assert client.environment_info == ENV_INFO
    events: list[tuple[str, dict[str, Any]]] = []
    client.subscribe(lambda method, params: events.append((method, params)), process_id="p1")
    start = {"processId": "p1", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {}, "tty": False}
    started = asyncio.ensure_future(client.call("process/start", start))
    forwarded = await held.forwarded(3)  # after the executor's own initialize and initialized
    exec_pid = forwarded["params"]["processId"]
    await held.reply(forwarded, {"processId": exec_pid, "sandboxType": "none"})
    assert exec_pid != "p1"  # namespaced in the executor's one session
    assert (await started)["processId"] == "p1"
    output = {"processId": exec_pid, "seq": 1, "stream": "stdout", "chunk": base64.b64encode(b"hi\n").decode()}
    pushed = json.dumps({"method": "process/output", "params": output})
    await held.session.put(session_events.ExecFrame(held.executor, pushed))
    assert await async_wait_for(lambda: events, 5)
    assert events == [("process/output", {**output, "processId": "p1"})]
    await pool.close()


async def test_a_move_closes_with_4002_and_the_pool_redials_and_resumes(held: Held):
    pool = Pool(inproc.connect, held.token)
    first = await pool.get(held.exe_id)
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(sessions.executor_group(held.exe_id), {"type": "bridge.moved", "inbox": "elsewhere"})
    closed = await asyncio.wait_for(first.wait_closed(), 5)
    assert closed.code == CLOSE_EXECUTOR_LOST
    second = await pool.get(held.exe_id)
    assert second is not first
    assert second.session_id == first.session_id  # resumed: the old connection left the session

    await layer.group_send(turn_group(held.turns[-1]), {"type": "bridge.revoke"})
    assert (await asyncio.wait_for(second.wait_closed(), 5)).code == CLOSE_TURN_REVOKED
    third = await pool.get(held.exe_id)  # a new token, a new turn
    with pytest.raises(BridgeClosed):
        await second.call("environment/status")

    # A drain closes with 1012, after the frames the session sent before it.
    pending = asyncio.ensure_future(third.call("environment/status"))
    await held.reply(await held.forwarded(3), {"status": "ready"})
    assert await pending == {"status": "ready"}
    drained = asyncio.get_running_loop().create_future()
    await held.session.put(session_events.Drain(drained))
    assert (await asyncio.wait_for(third.wait_closed(), 5)).code == CLOSE_SERVICE_RESTART
    await pool.close()


async def test_refusals_are_the_upgrades_statuses(held: Held):
    async def stranger() -> str:
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_x", workspace_id="ws-else", ttl=600)

    with pytest.raises(BridgeDialError) as refused:
        await Pool(inproc.connect, stranger).get(held.exe_id)
    assert (refused.value.status, str(refused.value)) == (403, "exe_id not in workspace (HTTP 403)")

    async def forged() -> str:
        return "not-a-token"

    with pytest.raises(BridgeDialError) as unauthorized:
        await Pool(inproc.connect, forged).get(held.exe_id)
    assert unauthorized.value.status == 401

    await database_sync_to_async(presence_store().release)(held.exe_id, "conn-1")
    with pytest.raises(BridgeDialError) as offline:
        await Pool(inproc.connect, held.token).get(held.exe_id)
    assert (offline.value.status, str(offline.value)) == (503, "executor not connected (HTTP 503)")
