"""The session driver (``bridge/session.py``) around the multiplexer: a peer whose socket closed
under it must not end the session every other client shares."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any, cast

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer

from bridge import session as sessions
from bridge import session_events, vsession_store
from bridge.layer_frames import LayerLink
from bridge.outbox import BridgeOutbox
from bridge.protocol import CLOSE_EXECUTOR_LOST, CLOSE_EXECUTOR_REPLACED, CLOSE_TRY_AGAIN
from codexgw import metrics
from codexgw import redis as gwredis
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
    sending = None  # delivered frames reach the client at once

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
    await session.put(session_events.ExecOpen(executor))
    assert await async_wait_for(lambda: executor.sent, 5)
    handshake = executor.sent[0]
    answer = {"id": handshake["id"], "result": {"sessionId": "exec-1", "environmentInfo": ENV_INFO}}
    await session.put(session_events.ExecFrame(executor, json.dumps(answer)))
    assert await async_wait_for(lambda: len(executor.sent) == 2, 5)  # initialized
    yield session, executor
    await session.put(session_events.Drain(asyncio.get_running_loop().create_future()))


@pytest.mark.django_db
async def test_a_bridge_whose_socket_closed_under_the_session_does_not_end_it(ready_session):
    session, executor = ready_session
    gone, alive = Bridge(gone=True), Bridge()
    await session.put(session_events.BridgeOpen("gone", gone))
    await session.put(session_events.BridgeFrame("gone", initialize(1)))
    await session.put(session_events.BridgeOpen("alive", alive))
    await session.put(session_events.BridgeFrame("alive", initialize(7)))
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
    await session.put(session_events.BridgeOpen("late", bridge))
    await session.put(session_events.BridgeFrame("late", initialize(3)))  # a new session: stored first, refused
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
        await session.put(session_events.ExecOpen(executor))
        assert await async_wait_for(lambda: executor.sent, 5)
        info = {**ENV_INFO, "executorVersion": "0.171.0"}
        answer = {"id": executor.sent[0]["id"], "result": {"sessionId": "exec-1", "environmentInfo": info}}
        await session.put(session_events.ExecFrame(executor, json.dumps(answer)))

        row = database_sync_to_async(lambda: Executor.objects.values("codex_version", "client_os").get(exe_id=exe_id))
        for _ in range(100):
            if await row() == {"codex_version": "0.171.0", "client_os": "linux"}:
                break
            await asyncio.sleep(0.05)
        assert await row() == {"codex_version": "0.171.0", "client_os": "linux"}
    finally:
        await session.put(session_events.Drain(asyncio.get_running_loop().create_future()))


def _stored_progress(exe_id: str) -> dict[str, int]:
    """What a successor would take over: each process's stored last delivered seq."""
    client = gwredis.sync_client()
    assert client is not None
    table = cast(dict[str, str], client.hgetall(gwredis.key("vsessions", exe_id)))  # decoded responses
    progress: dict[str, int] = {}
    for name, raw in table.items():
        if name.startswith("vs:"):
            for pid, state in json.loads(raw)["processes"].items():
                progress[pid] = state["last_seq"]
    return progress


def _stored_session_id(exe_id: str) -> str:
    client = gwredis.sync_client()
    assert client is not None
    names = cast(list[str], client.hkeys(gwredis.key("vsessions", exe_id)))
    (name,) = [name for name in names if name.startswith("vs:")]
    return name.removeprefix("vs:")


def _seqs(message: dict[str, Any]) -> list[int]:
    texts = message["texts"] if "texts" in message else [message["text"]]
    return [frame["params"]["seq"] for frame in map(json.loads, texts) if frame.get("method") == "process/output"]


@dataclass
class FarBridge:
    """A bridge in "another process" (its channel on a layer whose channels hold one message)
    that started process p1 on the executor (``exec_pid`` on the executor's side)."""

    session: sessions.ExecutorSession
    executor: FakeExecutor
    layer: InMemoryChannelLayer
    exec_pid: str

    def push(self, seq: int) -> session_events.ExecFrame:
        params = {"processId": self.exec_pid, "seq": seq, "stream": "stdout", "chunk": "aGkK"}
        return session_events.ExecFrame(self.executor, json.dumps({"method": "process/output", "params": params}))

    async def receive(self) -> dict[str, Any]:
        return await self.layer.receive("far-channel")


@pytest.fixture
async def far() -> Any:
    layer = InMemoryChannelLayer(capacity=1)
    session = sessions.ExecutorSession("exe-progress-test", layer, None)
    await session.start()
    executor = FakeExecutor()
    try:
        await session.put(session_events.ExecOpen(executor))
        assert await async_wait_for(lambda: executor.sent, 5)
        answer = {"id": executor.sent[0]["id"], "result": {"sessionId": "exec-1", "environmentInfo": ENV_INFO}}
        await session.put(session_events.ExecFrame(executor, json.dumps(answer)))
        assert await async_wait_for(lambda: len(executor.sent) == 2, 5)

        await session.put(session_events.BridgeOpen("far", sessions.FarBridge(session, "far", "far-channel")))
        await session.put(session_events.BridgeFrame("far", initialize(1)))
        assert "sessionId" in json.loads((await layer.receive("far-channel"))["text"])["result"]
        await session.put(session_events.BridgeFrame("far", json.dumps({"method": "initialized"})))
        start = {"processId": "p1", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {}, "tty": False}
        await session.put(
            session_events.BridgeFrame("far", json.dumps({"id": 2, "method": "process/start", "params": start}))
        )
        assert await async_wait_for(lambda: len(executor.sent) == 3, 5)
        forwarded = executor.sent[2]
        exec_pid = forwarded["params"]["processId"]
        reply = {"id": forwarded["id"], "result": {"processId": exec_pid, "sandboxType": "none"}}
        await session.put(session_events.ExecFrame(executor, json.dumps(reply)))
        assert json.loads((await layer.receive("far-channel"))["text"])["id"] == 2
        yield FarBridge(session, executor, layer, exec_pid)
    finally:
        await session.put(session_events.Drain(asyncio.get_running_loop().create_future()))


@pytest.mark.django_db
async def test_stored_progress_never_runs_ahead_of_frames_still_queued_for_another_process(far):
    """The SIGKILL failover loss (docs/reliability.md): events queued on the layer link to a bridge
    in another process, not yet sent, must not be stored as delivered, or a successor never
    reads them again. Here the bridge's channel stays full, so the link holds its frames."""
    received: list[int] = []
    for seq in range(1, 6):
        await far.session.put(far.push(seq))
        received += _seqs(await far.receive())
    assert received == [1, 2, 3, 4, 5]
    assert await async_wait_for(lambda: _stored_progress(far.session.exe_id).get("p1") == 5, 5)

    # The bridge stops reading: one message fits in its channel, the rest wait on the link. (The
    # pause lets the first go alone: frames that queue up together share one message.)
    await far.session.put(far.push(6))
    await asyncio.sleep(sessions.FLUSH_DELAY)
    for seq in range(7, 21):
        await far.session.put(far.push(seq))
    await asyncio.sleep(sessions.FLUSH_DELAY * 5)
    stored = _stored_progress(far.session.exe_id)["p1"]
    # The one message in the channel has left the process (it would survive it); the rest not.
    received += _seqs(await far.receive())
    assert received[-1] < 20
    assert stored <= received[-1]

    # Once the frames have left, the progress they stand for is stored.
    while len(received) < 20:
        received += _seqs(await far.receive())
    assert received == list(range(1, 21))
    assert await async_wait_for(lambda: _stored_progress(far.session.exe_id)["p1"] == 20, 5)


@pytest.mark.django_db
async def test_frames_a_departed_bridge_never_got_are_read_again_when_its_session_resumes(far):
    """A bridge in another process leaves while its link still holds events for it: they are
    owed again, so the resumed session's recovery read starts before them."""
    received: list[int] = []
    for seq in range(1, 4):
        await far.session.put(far.push(seq))
        received += _seqs(await far.receive())
    # One message fits in the channel, the next is in flight, the rest wait on the link (the
    # pauses make the first two go alone: frames that queue up together share one message).
    for seq in (4, 5):
        await far.session.put(far.push(seq))
        await asyncio.sleep(sessions.FLUSH_DELAY)
    for seq in range(6, 12):
        await far.session.put(far.push(seq))
    await asyncio.sleep(0.2)
    await far.session.put(session_events.BridgeClosed("far"))
    # What reached the channel before the bridge left (a send in flight completes); the rest never did.
    left = list(received)
    with contextlib.suppress(TimeoutError):
        while True:
            left += _seqs(await asyncio.wait_for(far.receive(), 0.5))
    assert left == list(range(1, len(left) + 1))
    assert len(left) < 11

    near = Bridge()
    await far.session.put(session_events.BridgeOpen("near", near))
    vsid = _stored_session_id(far.session.exe_id)
    resume = {"clientName": "test", "resumeSessionId": vsid}
    await far.session.put(
        session_events.BridgeFrame("near", json.dumps({"id": 1, "method": "initialize", "params": resume}))
    )
    await far.session.put(session_events.BridgeFrame("near", json.dumps({"method": "initialized"})))
    assert await async_wait_for(lambda: far.executor.sent[-1].get("method") == "process/read", 5)
    read = far.executor.sent[-1]
    assert read["params"]["processId"] == far.exec_pid
    assert read["params"]["afterSeq"] == left[-1]  # everything after it is read again


@pytest.fixture
def short_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    """Links made from now on give up on a full channel after 0.3 s, not 30 s."""
    defaults = LayerLink.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "patience", 0.3)


@pytest.mark.django_db
async def test_a_bridge_in_another_process_that_stops_reading_is_let_go_and_owed_its_frames(short_patience, far):
    """Its channel stays full past the link's patience: the drop is counted once, the bridge is
    let go (and told 1013 when its channel has room), and the frames it never got are read again
    when its session resumes elsewhere."""
    before = metrics.DROPS.labels("bridge_channel_full")._value.get()
    for seq in range(1, 4):  # one message each (frames that queue up together share one)
        await far.session.put(far.push(seq))
        await asyncio.sleep(sessions.FLUSH_DELAY)
    assert await async_wait_for(lambda: "far" not in far.session._bridges, 5)
    assert metrics.DROPS.labels("bridge_channel_full")._value.get() == before + 1
    received: list[int] = []
    closes: list[int] = []
    with contextlib.suppress(TimeoutError):
        while True:
            message = await asyncio.wait_for(far.receive(), 1.0)
            if message["type"] == "bridge.close":
                closes.append(message["code"])
            else:
                received += _seqs(message)
    assert received == list(range(1, len(received) + 1))
    assert len(received) < 3
    assert closes in ([], [CLOSE_TRY_AGAIN])

    near = Bridge()
    await far.session.put(session_events.BridgeOpen("near", near))
    resume = {"clientName": "test", "resumeSessionId": _stored_session_id(far.session.exe_id)}
    await far.session.put(
        session_events.BridgeFrame("near", json.dumps({"id": 1, "method": "initialize", "params": resume}))
    )
    await far.session.put(session_events.BridgeFrame("near", json.dumps({"method": "initialized"})))
    assert await async_wait_for(lambda: far.executor.sent[-1].get("method") == "process/read", 5)
    assert far.executor.sent[-1]["params"]["afterSeq"] == received[-1]


class SlowLocalBridge(Bridge):
    """A bridge in this process whose client reads only while ``reading`` is set: its outbox
    (``bridge/outbox.py``) holds the frames meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.outbox = BridgeOutbox(self._write)

    async def _write(self, text: str) -> None:
        await self.reading.wait()
        self.received.append(json.loads(text))

    async def deliver(self, text: str) -> None:
        if not await self.outbox.put(text):
            raise ConnectionError("closing")

    @property
    def sending(self) -> BridgeOutbox:  # type: ignore[override]
        return self.outbox


@pytest.mark.django_db
async def test_stored_progress_never_runs_ahead_of_a_local_bridges_outbox(ready_session):
    """Frames a local bridge's outbox still holds would die with a SIGKILLed process too."""
    session, executor = ready_session
    near = SlowLocalBridge()
    near.reading.set()
    await session.put(session_events.BridgeOpen("near", near))
    await session.put(session_events.BridgeFrame("near", initialize(1)))
    await session.put(session_events.BridgeFrame("near", json.dumps({"method": "initialized"})))
    start = {"processId": "p1", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {}, "tty": False}
    await session.put(
        session_events.BridgeFrame("near", json.dumps({"id": 2, "method": "process/start", "params": start}))
    )
    assert await async_wait_for(lambda: len(executor.sent) == 3, 5)
    exec_pid = executor.sent[2]["params"]["processId"]
    reply = {"id": executor.sent[2]["id"], "result": {"processId": exec_pid, "sandboxType": "none"}}
    await session.put(session_events.ExecFrame(executor, json.dumps(reply)))

    def push(seq: int) -> session_events.ExecFrame:
        params = {"processId": exec_pid, "seq": seq, "stream": "stdout", "chunk": "aGkK"}
        return session_events.ExecFrame(executor, json.dumps({"method": "process/output", "params": params}))

    await session.put(push(1))
    assert await async_wait_for(lambda: _stored_progress(session.exe_id).get("p1") == 1, 5)
    near.reading.clear()  # the client stops reading
    for seq in range(2, 6):
        await session.put(push(seq))
    await asyncio.sleep(sessions.FLUSH_DELAY * 5)
    assert _stored_progress(session.exe_id)["p1"] == 1  # 2 is being written, 3-5 wait
    near.reading.set()
    assert await async_wait_for(lambda: _stored_progress(session.exe_id)["p1"] == 5, 5)
    assert [m["params"]["seq"] for m in near.received if m.get("method") == "process/output"] == [1, 2, 3, 4, 5]


@pytest.mark.django_db
async def test_a_request_nested_too_deep_to_write_is_refused_and_the_session_goes_on(ready_session):
    """A client's request nested 600 levels deep decodes, but cannot be written again for the
    executor (past orjson's depth, then past Python's recursion limit): it once raised out of the
    session and ended it for every client of the executor. exec-server refuses such frames too."""
    session, executor = ready_session
    bridge, other = Bridge(), Bridge()
    for conn_id, peer in (("deep", bridge), ("other", other)):
        await session.put(session_events.BridgeOpen(conn_id, peer))
        await session.put(session_events.BridgeFrame(conn_id, initialize(1)))
        await session.put(session_events.BridgeFrame(conn_id, json.dumps({"method": "initialized"})))
    deep = '{"id":2,"method":"fs/getMetadata","params":{"path":"/","x":' + "[" * 600 + "]" * 600 + "}}"
    await session.put(session_events.BridgeFrame("deep", deep))
    assert await async_wait_for(lambda: len(bridge.received) == 2, 5)
    assert bridge.received[1]["id"] == 2
    assert bridge.received[1]["error"]["code"] == -32600
    assert "nested too deep" in bridge.received[1]["error"]["message"]
    await session.put(session_events.BridgeFrame("other", json.dumps({"id": 3, "method": "fs/getMetadata"})))
    assert await async_wait_for(lambda: executor.sent[-1].get("method") == "fs/getMetadata", 5)
    assert not session.finished
    assert executor.closed is None


@pytest.mark.django_db
async def test_a_response_nested_too_deep_to_write_becomes_an_error_and_the_session_goes_on(ready_session):
    """An executor gone wrong answers with a result nested 700 levels deep: it decodes, but cannot
    be written again for the client. The client gets an error for its request, not silence, and
    the session every client shares goes on."""
    session, executor = ready_session
    bridge = Bridge()
    await session.put(session_events.BridgeOpen("c", bridge))
    await session.put(session_events.BridgeFrame("c", initialize(1)))
    await session.put(session_events.BridgeFrame("c", json.dumps({"method": "initialized"})))
    await session.put(session_events.BridgeFrame("c", json.dumps({"id": 2, "method": "fs/getMetadata"})))
    assert await async_wait_for(lambda: executor.sent[-1].get("method") == "fs/getMetadata", 5)
    deep = f'{{"id":{executor.sent[-1]["id"]},"result":{{"x":{"[" * 700 + "]" * 700}}}}}'
    await session.put(session_events.ExecFrame(executor, deep))
    assert await async_wait_for(lambda: len(bridge.received) == 2, 5)
    assert bridge.received[1] == {
        "id": 2,
        "error": {"code": -32600, "message": "response nested too deep"},
    }
    assert not session.finished
    assert executor.closed is None
