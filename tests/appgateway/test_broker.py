"""The turn broker (``appgateway.broker``): against the real ``codex app-server`` (turns, items,
threads continued on a fresh connection, the activity clock), and against a scripted app-server
on a real loopback WebSocket for what codex cannot be made to do on cue (a completion before the
``turn/start`` answer, interleaved turns, unknown server requests, approvals, a turn that never
ends)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve

from appgateway import broker, relay, rpc_filter
from tests.appgateway.fake_model import Reply
from tests.e2e.harness import async_wait_for

WORKSPACE = "ws-broker"
TEXT = [{"type": "text", "text": "say hi"}]


def texts(items: list[dict[str, Any]], kind: str) -> list[str]:
    if kind == "userMessage":
        return [part["text"] for item in items if item["type"] == kind for part in item["content"]]
    return [item["text"] for item in items if item["type"] == kind]


# --- the real app-server ---------------------------------------------------------------------


@pytest.fixture
async def pool(sup) -> AsyncIterator[broker.Pool]:
    pool = broker.Pool()
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_turn_on_a_new_thread_returns_every_item_of_the_turn(pool, fake_model, sup):
    fake_model.script(Reply("first answer"))
    before = sup.last_activity(WORKSPACE)
    answer = await pool.run_turn(WORKSPACE, None, {"input": TEXT}, 60)
    assert "transport" not in answer, answer
    turn = answer["turn"]
    assert turn["status"] == "completed"
    # codex's own turn/completed lists only the final message; ours has the user's too, in order.
    assert [item["type"] for item in turn["items"]] == ["userMessage", "agentMessage"]
    assert texts(turn["items"], "agentMessage") == ["first answer"]
    assert isinstance(answer["threadId"], str)
    assert answer["threadId"]
    assert sup.last_activity(WORKSPACE) > before  # the broker's frames reset the idle clock


async def test_the_connection_is_reused_and_a_thread_continues_on_a_fresh_one(pool, fake_model, sup):
    fake_model.script(Reply("one"), Reply("two"), Reply("three"))
    first = await pool.run_turn(WORKSPACE, None, {"input": [{"type": "text", "text": "remember ALPHA"}]}, 60)
    conn = await pool.get(WORKSPACE)
    thread_id = first["threadId"]
    second = await pool.run_turn(WORKSPACE, thread_id, {"input": [{"type": "text", "text": "and BETA"}]}, 60)
    assert await pool.get(WORKSPACE) is conn
    assert texts(second["turn"]["items"], "agentMessage") == ["two"]
    # A fresh pool: a new connection, where the thread must be resumed before its turn.
    other = broker.Pool()
    try:
        third = await other.run_turn(WORKSPACE, thread_id, {"input": [{"type": "text", "text": "and GAMMA"}]}, 60)
        assert await other.get(WORKSPACE) is not conn
    finally:
        await other.close()
    assert third["threadId"] == thread_id
    assert texts(third["turn"]["items"], "agentMessage") == ["three"]
    assert fake_model.responses_requests()[-1].user_texts()[-3:] == ["remember ALPHA", "and BETA", "and GAMMA"]


async def test_codex_errors_come_back_as_codex_rpc_errors(pool, sup):
    answer = await pool.run_turn(WORKSPACE, "00000000-0000-7000-8000-000000000000", {"input": TEXT}, 60)
    assert answer["transport"]["code"] == "codexRPCError", answer
    assert "thread/resume" in answer["transport"]["message"]
    assert "turn" not in answer


async def test_an_unusable_workspace_is_a_subprocess_crash(pool, appgw):
    appgw.CXG_CODEX_BIN = "/nonexistent/codex"
    answer = await pool.run_turn(WORKSPACE, None, {"input": TEXT}, 60)
    assert answer == {
        "threadId": "",
        "transport": {"code": "subprocessCrash", "message": answer["transport"]["message"]},
    }


# --- a scripted app-server -------------------------------------------------------------------

Script = Callable[["Scripted", dict[str, Any]], Awaitable[None]]


class Scripted:
    """A WebSocket server speaking app-server JSON-RPC: answers initialize; ``on_request`` handles
    the rest. Every frame the broker sends is kept in ``received``."""

    def __init__(self, on_request: Script) -> None:
        self.on_request = on_request
        self.received: list[dict[str, Any]] = []
        self.ws: ServerConnection | None = None
        self.connections = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(message))

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.connections += 1
        async for raw in ws:
            message = json.loads(raw)
            self.received.append(message)
            if message.get("method") == "initialize":
                await self.send({"id": message["id"], "result": {"userAgent": "scripted"}})
            elif "method" in message and "id" in message:
                await self.on_request(self, message)

    def replies_to(self, request_id: int) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("id") == request_id and "method" not in m]


@pytest.fixture
async def scripted(settings, monkeypatch) -> AsyncIterator[Callable[[Script], Awaitable[Scripted]]]:
    """Start a scripted app-server and make the broker dial it instead of the supervisor's."""
    servers = []

    async def start(on_request: Script) -> Scripted:
        app = Scripted(on_request)
        server = await serve(app.handler, "127.0.0.1", 0, compression=None)
        servers.append(server)
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"

        async def open_leg(cls: type[relay.AppServerLeg], workspace_id: str) -> relay.AppServerLeg:
            return cls(workspace_id, await ws_connect(url, compression=None))

        monkeypatch.setattr(relay.AppServerLeg, "open", classmethod(open_leg))
        return app

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def completed(turn_id: str) -> dict[str, Any]:
    return {
        "method": "turn/completed",
        "params": {"threadId": "th", "turn": {"id": turn_id, "items": [], "status": "completed"}},
    }


def item(turn_id: str, text: str) -> dict[str, Any]:
    return {
        "method": "item/completed",
        "params": {"threadId": "th", "turnId": turn_id, "item": {"type": "agentMessage", "text": text}},
    }


async def test_a_completion_before_the_turn_start_answer_is_buffered_and_items_stay_per_turn(scripted):
    async def on_request(app: Scripted, message: dict[str, Any]) -> None:
        if message["method"] == "thread/start":
            await app.send({"id": message["id"], "result": {"thread": {"id": "th"}}})
        elif message["method"] == "turn/start":
            # Another client's turn on the same thread interleaves with ours, and ours completes
            # before its turn/start is answered.
            for frame in (item("other", "not ours"), item("t1", "a"), item("other", "x"), item("t1", "b")):
                await app.send(frame)
            await app.send(completed("other"))
            await app.send(completed("t1"))
            await app.send({"id": message["id"], "result": {"turn": {"id": "t1", "status": "inProgress"}}})

    app = await scripted(on_request)
    pool = broker.Pool()
    try:
        answer = await pool.run_turn(WORKSPACE, None, {"input": TEXT}, 5)
    finally:
        await pool.close()
    assert answer == {
        "threadId": "th",
        "turn": {
            "id": "t1",
            "status": "completed",
            "items": [{"type": "agentMessage", "text": "a"}, {"type": "agentMessage", "text": "b"}],
        },
    }
    methods = [m.get("method") for m in app.received]
    assert methods == ["initialize", "initialized", "thread/start", "turn/start"]  # no resume after our start
    # experimentalApi: codex accepts thread/start.environments only then.
    assert app.received[0]["params"] == {"clientInfo": broker.CLIENT_INFO, "capabilities": {"experimentalApi": True}}
    # No executor is bound: the thread gets no environment (never codex's local one).
    assert app.received[2]["params"] == {"environments": []}
    assert app.received[3]["params"] == {"input": TEXT, "threadId": "th"}


async def ask_mid_turn(app: Scripted, message: dict[str, Any], requests: list[dict[str, Any]]) -> None:
    """Answer thread/resume; on turn/start send ``requests`` and complete the turn once each is answered."""
    if message["method"] == "thread/resume":
        await app.send({"id": message["id"], "result": {}})
        return
    if message["method"] != "turn/start":
        return
    await app.send({"id": message["id"], "result": {"turn": {"id": "t1"}}})
    for request in requests:
        await app.send(request)
    ids = [request["id"] for request in requests]

    async def complete_when_answered() -> None:
        if await async_wait_for(lambda: all(app.replies_to(i) for i in ids), 5):
            await app.send(completed("t1"))

    # Not awaited here: the server must go on reading to see the answers.
    app.tasks.append(asyncio.create_task(complete_when_answered()))


UNKNOWN = {"id": 901, "method": "item/tool/call", "params": {"threadId": "th", "turnId": "t1", "tool": "x"}}
APPROVAL = {"id": 902, "method": "item/commandExecution/requestApproval", "params": {"threadId": "th", "turnId": "t1"}}
ELICITATION = {"id": "e1", "method": "mcpServer/elicitation/request", "params": {"threadId": "th"}}


@pytest.mark.parametrize("mode", ["accept", "forward"])
async def test_server_requests_are_always_answered(scripted, settings, mode):
    settings.CXG_APPROVAL_MODE = mode
    app = await scripted(lambda app, message: ask_mid_turn(app, message, [UNKNOWN, APPROVAL, ELICITATION]))
    pool = broker.Pool()
    try:
        answer = await pool.run_turn(WORKSPACE, "th", {"input": TEXT}, 5)
    finally:
        await pool.close()
    assert answer["turn"]["id"] == "t1", answer
    assert app.replies_to(901) == [
        {
            "id": 901,
            "error": {"code": -32601, "message": "method not implemented by agentserver broker: item/tool/call"},
        }
    ]
    if mode == "accept":  # answered by the leg, as for a TUI
        assert app.replies_to(902) == [{"id": 902, "result": {"decision": "accept"}}]
        assert app.replies_to("e1") == [{"id": "e1", "result": {"action": "accept", "content": None, "_meta": None}}]
    else:  # nobody to forward to: declined
        assert app.replies_to(902) == [{"id": 902, "result": {"decision": "decline"}}]
        assert app.replies_to("e1") == [{"id": "e1", "result": {"action": "decline", "content": None, "_meta": None}}]
    assert [m.get("method") for m in app.received if "method" in m][2] == "thread/resume"


def test_every_approval_the_leg_accepts_has_a_decline():
    assert set(broker.DECLINES) == set(rpc_filter.APPROVAL_ANSWERS)


async def test_a_timeout_interrupts_poisons_the_connection_and_the_next_turn_dials_afresh(scripted):
    turns = 0

    async def on_request(app: Scripted, message: dict[str, Any]) -> None:
        nonlocal turns
        if message["method"] == "thread/resume":
            await app.send({"id": message["id"], "result": {}})
        elif message["method"] == "turn/start":
            turns += 1
            await app.send({"id": message["id"], "result": {"turn": {"id": f"t{turns}"}}})
            if turns > 1:  # the first never ends
                await app.send(completed(f"t{turns}"))
        elif message["method"] == "turn/interrupt":
            await app.send({"id": message["id"], "result": {}})

    app = await scripted(on_request)
    pool = broker.Pool()
    try:
        timed_out = await pool.run_turn(WORKSPACE, "th", {"input": TEXT}, 0.5)
        assert timed_out["threadId"] == "th"
        assert timed_out["transport"]["code"] == "brokerTimeout"
        assert "turn" not in timed_out
        interrupts = [m for m in app.received if m.get("method") == "turn/interrupt"]
        assert [m["params"] for m in interrupts] == [{"threadId": "th", "turnId": "t1"}]
        assert app.ws is not None
        assert await async_wait_for(lambda: app.ws is not None and app.ws.close_code is not None, 5)
        answer = await pool.run_turn(WORKSPACE, "th", {"input": TEXT}, 5)
    finally:
        await pool.close()
    assert answer["turn"]["id"] == "t2", answer
    assert app.connections == 2
    # The new connection attaches the thread again.
    assert [m.get("method") for m in app.received if "method" in m].count("thread/resume") == 2


async def test_a_lost_connection_fails_its_turn_and_idle_connections_are_closed(scripted, settings):
    async def on_request(app: Scripted, message: dict[str, Any]) -> None:
        if message["method"] == "thread/resume":
            await app.send({"id": message["id"], "result": {}})
        elif message["method"] == "turn/start" and message["params"]["input"] == "drop":
            assert app.ws is not None
            await app.ws.close()
        elif message["method"] == "turn/start":
            await app.send({"id": message["id"], "result": {"turn": {"id": "t"}}})
            await app.send(completed("t"))

    app = await scripted(on_request)
    settings.CXG_BROKER_POOL_IDLE_TTL = 0.3
    pool = broker.Pool()
    try:
        dropped = await pool.run_turn(WORKSPACE, "th", {"input": "drop"}, 5)
        assert dropped["transport"]["code"] == "wsDisconnect", dropped
        answer = await pool.run_turn(WORKSPACE, "th", {"input": TEXT}, 5)
        assert answer["turn"]["id"] == "t"
        conn = await pool.get(WORKSPACE)
        assert await async_wait_for(lambda: not conn.alive, 5)
        assert conn.closed_reason == "idle"
    finally:
        await pool.close()
    assert app.connections == 2


async def test_concurrent_turns_share_one_connection_dialled_once(scripted):
    started: list[str] = []

    async def on_request(app: Scripted, message: dict[str, Any]) -> None:
        if message["method"] == "thread/resume":
            await app.send({"id": message["id"], "result": {}})
        elif message["method"] == "turn/start":
            turn_id = message["params"]["threadId"] + "-turn"
            started.append(turn_id)
            await app.send({"id": message["id"], "result": {"turn": {"id": turn_id}}})
            if len(started) == 3:  # complete them in reverse order, each with its own item
                for done in reversed(started):
                    await app.send(item(done, done))
                    await app.send(completed(done))

    app = await scripted(on_request)
    pool = broker.Pool()
    try:
        answers = await asyncio.gather(*(pool.run_turn(WORKSPACE, f"th{i}", {"input": TEXT}, 5) for i in range(3)))
    finally:
        await pool.close()
    assert [a["turn"]["items"] for a in answers] == [
        [{"type": "agentMessage", "text": f"th{i}-turn"}] for i in range(3)
    ]
    assert app.connections == 1


@pytest.mark.parametrize("presented", ["", "anything"])
def test_an_unset_internal_secret_accepts_nobody(api, settings, presented):
    settings.CXG_AGENTSERVER_INTERNAL_SECRET = ""
    body = {"workspaceId": WORKSPACE, "params": {"input": TEXT}}
    response = api.post("/api/turns", body, format="json", HTTP_X_INTERNAL_SECRET=presented)
    assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
