"""The TUI proxy consumer and its relay, in-process, against the real ``codex app-server`` (the
supervisor spawns it; the model is the fake Responses server), the real Redis channel layer and
the fake agentserver. The end-to-end tests on real gateway processes are in
``tests/e2e/test_tui_proxy.py``; these cover what needs a hand on the process: settings, silent
peers, the relay's framing, the admin."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import AsyncClient

from appgateway import relay
from appgateway.consumers import TuiProxyConsumer
from appgateway.leases import LeaseInfo
from appgateway.rpc_filter import Frame
from bridge import layer_conn, process_rpc
from bridge.protocol import LAYER_CHUNK_CHARS
from codexgw import redis as gwredis
from tests.appgateway.fake_model import FunctionCall, Reply
from tests.e2e.harness import async_wait_for
from tests.fake_agentserver import FakeAgentserver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = "ast_inprocess"
WORKSPACE = "ws-proxy"


@pytest.fixture
def agentserver(appgw) -> Iterator[FakeAgentserver]:
    with FakeAgentserver(django_settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        fake.add_token(TOKEN, user_id="user-1", workspace_id=WORKSPACE)
        appgw.CXG_AGENTSERVER_INTERNAL_URL = fake.base_url
        yield fake


def channel_layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    assert layer is not None
    return layer


class Tui:
    """A JSON-RPC client on a WebsocketCommunicator: every frame it reads stays in ``frames``."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.frames: list[Any] = []
        self._ids = iter(range(1, 1_000_000))

    async def send(self, message: dict[str, Any]) -> None:
        await self.communicator.send_to(text_data=json.dumps(message))

    async def next(self, matches: Any) -> Any:
        """The first frame (kept or new, within 60 s) that ``matches``."""
        for frame in self.frames:
            if matches(frame):
                self.frames.remove(frame)
                return frame
        deadline = time.monotonic() + 60
        while True:
            raw = await self.communicator.receive_from(timeout=max(0.1, deadline - time.monotonic()))
            frame = json.loads(raw)
            if matches(frame):
                return frame
            self.frames.append(frame)

    async def call(self, method: str, params: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        await self.send({"id": request_id, "method": method, "params": params})
        response = await self.next(lambda f: f.get("id") == request_id and "method" not in f)
        assert "error" not in response, response
        return response["result"]  # type: ignore[no-any-return]


async def open_tui(token: str = TOKEN) -> Tui:
    communicator = WebsocketCommunicator(
        TuiProxyConsumer.as_asgi(), "/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    connected, _ = await communicator.connect(timeout=60)
    assert connected
    tui = Tui(communicator)
    await tui.call(
        "initialize",
        {"clientInfo": {"name": "codex-tui", "version": "0.169.0"}, "capabilities": {"experimentalApi": True}},
    )
    await tui.send({"method": "initialized"})
    return tui


PLAN_QUESTIONS = [{"id": "q1", "header": "Pick", "question": "Which?", "options": [{"label": "a", "description": "A"}]}]


async def plan_turn(tui: Tui, model_name: str, cwd: str) -> str:
    thread_id = (await tui.call("thread/start", {"cwd": cwd}))["thread"]["id"]
    plan = {"mode": "plan", "settings": {"model": model_name, "reasoning_effort": None, "developer_instructions": None}}
    await tui.call(
        "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "ask"}], "collaborationMode": plan}
    )
    return str(thread_id)


async def test_forward_mode_lets_the_tui_answer_approvals(sup, appgw, agentserver, fake_model, tmp_path):
    appgw.CXG_APPROVAL_MODE = "forward"
    fake_model.script(FunctionCall("request_user_input", {"questions": PLAN_QUESTIONS}), Reply("thanks"))
    tui = await open_tui()
    try:
        await plan_turn(tui, fake_model.model, str(tmp_path))
        request = await tui.next(lambda f: f.get("method") == "item/tool/requestUserInput")
        answer = {"answers": {"q1": {"answers": ["a"]}}}
        await tui.send({"id": request["id"], "result": answer})
        await tui.next(lambda f: f.get("method") == "turn/completed")
    finally:
        await tui.communicator.disconnect()
    assert json.loads(fake_model.responses_requests()[1].body["input"][-1]["output"]) == answer


async def test_accept_mode_answers_for_the_tui(sup, appgw, agentserver, fake_model, tmp_path):
    fake_model.script(FunctionCall("request_user_input", {"questions": PLAN_QUESTIONS}), Reply("thanks"))
    tui = await open_tui()
    try:
        await plan_turn(tui, fake_model.model, str(tmp_path))
        await tui.next(lambda f: f.get("method") == "turn/completed")
    finally:
        await tui.communicator.disconnect()
    assert "item/tool/requestUserInput" not in [frame.get("method") for frame in tui.frames]
    assert json.loads(fake_model.responses_requests()[1].body["input"][-1]["output"]) == {"answers": {}}


async def test_a_refused_request_is_logged_with_its_method(sup, agentserver, caplog):
    caplog.set_level(logging.INFO, logger="appgateway.consumers")
    tui = await open_tui()
    try:
        await tui.send({"id": 41, "method": "fs/readFile", "params": {"path": "/etc/passwd"}})
        refused = await tui.next(lambda f: f.get("id") == 41)
    finally:
        await tui.communicator.disconnect()
    assert refused["error"]["code"] == -32601
    (record,) = [r for r in caplog.records if r.name == "appgateway.consumers" and "refused" in r.getMessage()]
    assert record.getMessage() == "TUI request refused (local IO): fs/readFile"
    assert (record.method, record.refusal, record.workspace_id) == ("fs/readFile", "local IO", WORKSPACE)


async def test_denials_happen_before_the_upgrade(sup, agentserver):
    communicator = WebsocketCommunicator(
        TuiProxyConsumer.as_asgi(), "/", headers=[(b"authorization", b"Bearer ast_bad")]
    )
    communicator.scope["extensions"] = {"websocket.http.response": {}}
    await communicator.send_input({"type": "websocket.connect"})
    start = await communicator.receive_output(timeout=10)
    body = await communicator.receive_output(timeout=10)
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 401)
    assert json.loads(body["body"]) == {"error": "unauthorized"}
    assert await sup.lease_owner(WORKSPACE) is None


# --- relay: silent peers --------------------------------------------------------------------


def plant_foreign_lease(channel: str) -> None:
    """A lease held by a gateway process that is not this one (and is not really there)."""
    client = gwredis.sync_client()
    assert client is not None
    now = time.time()
    lease = LeaseInfo("elsewhere:1:dead", channel, pid=1, ws_url="ws://127.0.0.1:9", started_at=now, last_activity=now)
    client.set(gwredis.key("appserver", WORKSPACE), lease.to_json(), px=60_000)


async def test_a_tui_relayed_to_an_owner_that_never_answers_is_closed(sup, agentserver, monkeypatch):
    monkeypatch.setattr(layer_conn, "FIRST_CONTACT_LIMIT", 0.5)
    layer = channel_layer()
    plant_foreign_lease(await layer.new_channel())  # nobody reads this channel
    communicator = WebsocketCommunicator(
        TuiProxyConsumer.as_asgi(), "/", headers=[(b"authorization", f"Bearer {TOKEN}".encode())]
    )
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    closed = await communicator.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 1011, "reason": "subprocess unavailable"}
    await communicator.wait()


async def test_the_owner_closes_a_relayed_leg_whose_tui_went_silent(sup, agentserver, monkeypatch):
    monkeypatch.setattr(layer_conn, "SILENCE_LIMIT", 1.0)
    layer = channel_layer()
    reply_to = await layer.new_channel()
    await layer.send(
        await process_rpc.process_channel(),
        {"type": relay.RELAY_OPEN, "conn": "c1", "reply_to": reply_to, "workspace_id": WORKSPACE},
    )
    seen = []
    while layer_conn.OPENED not in seen:
        seen.append((await asyncio.wait_for(layer.receive(reply_to), 60))["type"])
    assert seen[0] == layer_conn.ALIVE  # acknowledged before the app-server was spawned
    assert "c1" in relay._relays
    # The TUI's side sends nothing more (its process died): the owner gives up on it.
    assert await async_wait_for(lambda: "c1" not in relay._relays, 10)


# --- relay: framing over the channel layer --------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed: tuple[int, str] | None = None

    async def deliver(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def close_tui(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def opened_relay(layer: BaseChannelLayer, conn: str, sink: Sink) -> tuple[relay.RelayClient, str]:
    """A relay's TUI side, with frames sent before the owner answered, and the owner's inbox."""
    owner_channel, inbox = [await layer.new_channel() for _ in range(2)]
    client = relay.RelayClient(conn, WORKSPACE, owner_channel, sink)
    await client.open()
    await client.send("early")
    assert client.owner is not None
    owner = client.owner
    await layer.send(owner.inbox, {"type": layer_conn.OPENED, "inbox": inbox})
    assert await async_wait_for(lambda: owner.link is not None, 10)
    return client, inbox


async def frames_until_close(layer: BaseChannelLayer, inbox: str) -> tuple[list[Frame], int]:
    """The frames that arrive on ``inbox`` until a close, and in how many messages."""
    received: list[Frame] = []
    decoder, messages = layer_conn.Connection(layer, inbox, on_stuck=lambda: asyncio.sleep(0)), 0
    while True:
        event = await asyncio.wait_for(layer.receive(inbox), 10)
        if event["type"] == layer_conn.CLOSE:
            return received, messages
        if event["type"] == layer_conn.FRAME:
            messages += 1
            received += decoder.frames(event)


async def test_relayed_frames_keep_their_type_bytes_and_order(appgw):
    layer = channel_layer()
    sink = Sink()
    # Sent before the owner answered: held, then flushed in order.
    client, inbox = await opened_relay(layer, "c2", sink)
    big_binary = bytes(range(256)) * (LAYER_CHUNK_CHARS // 256 + 5)  # every byte value, two chunks
    frames: list[Frame] = ['{"id":1,"method":"a"}', big_binary, "ü" * (LAYER_CHUNK_CHARS + 3), b""]
    for frame in frames:
        await client.send(frame)
    await client.stop()
    assert (await frames_until_close(layer, inbox))[0] == ["early", *frames]
    # And back: what the owner sends comes out of the TUI's side the same.
    client, inbox = await opened_relay(layer, "c3", sink)
    assert client.owner is not None
    owner = layer_conn.Connection(layer, inbox, on_stuck=client.stop)
    await owner.connect(client.owner.inbox)
    for frame in frames:
        await owner.send(frame)
    await owner.close((1000, "done"))
    assert await async_wait_for(lambda: sink.closed == (1000, "done"), 10)
    assert sink.frames == frames
    assert [type(frame) for frame in sink.frames] == [str, bytes, str, bytes]
    await client.stop()


async def test_relayed_frames_are_batched_and_the_close_comes_after_them(appgw):
    layer = channel_layer()
    client, inbox = await opened_relay(layer, "c4", Sink())
    frames = [f'{{"method":"delta","params":{{"n":{n}}}}}' for n in range(200)]
    for frame in frames:
        await client.send(frame)  # queued; the link's pump sends what queues up together
    await client.stop()
    received, messages = await frames_until_close(layer, inbox)
    assert received == ["early", *frames]
    assert messages < len(frames) / 4


# --- admin -----------------------------------------------------------------------------------


async def staff_client(*permissions: str) -> AsyncClient:
    def make() -> User:
        user = User.objects.create_user(f"op{time.monotonic_ns()}", password="x", is_staff=True)
        for codename in permissions:
            user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="appgateway"))
        return user

    client = AsyncClient()
    await client.aforce_login(await database_sync_to_async(make)())
    return client


ADMIN_LIST = "/admin/appgateway/appserversession/"


@pytest.fixture
async def close_view_connections() -> Any:
    """The test client runs views on the thread-sensitive executor and, in tests, leaves their
    database connection open; close it there so the test database can be dropped."""
    yield
    await sync_to_async(connections.close_all)()


async def test_admin_lists_live_sessions_and_restarts_only_with_the_permission(sup, close_view_connections):
    handle = await sup.ensure_app_server(WORKSPACE)

    viewer = await staff_client("view_appserversession")
    page = await viewer.get(ADMIN_LIST)
    assert page.status_code == 200
    html = page.content.decode()
    assert WORKSPACE in html
    assert str(handle.pid) in html
    assert sup.process_id in html
    assert "Restart" not in html
    refused = await viewer.post(f"{ADMIN_LIST}{WORKSPACE}/restart/")
    assert refused.status_code == 403
    assert (await sup.lease_owner(WORKSPACE)).pid == handle.pid

    assert (await (await staff_client()).get(ADMIN_LIST)).status_code == 403

    operator = await staff_client("view_appserversession", "restart_appserver")
    assert "Restart" in (await operator.get(ADMIN_LIST)).content.decode()
    assert (await operator.get(f"{ADMIN_LIST}{WORKSPACE}/restart/")).status_code == 405
    restarted = await operator.post(f"{ADMIN_LIST}{WORKSPACE}/restart/")
    assert restarted.status_code == 302
    new_pid = (await sup.lease_owner(WORKSPACE)).pid
    assert new_pid not in (0, handle.pid)

    # Nothing is started for a workspace that is not running.
    await operator.post(f"{ADMIN_LIST}ws-not-running/restart/")
    assert await sup.lease_owner("ws-not-running") is None
