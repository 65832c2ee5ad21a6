"""codexgw.jsonrpc.Peer: two peers wired back to back (each one's ``send`` is the other's
``receive``), so every message crosses the real encoding and routing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from codexgw.jsonrpc import METHOD_NOT_FOUND, Peer, RPCError


class Closed(Exception):
    pass


class Wire:
    """Two peers; ``sent`` keeps every frame, ``hold`` stops delivery to ``b`` (a slow side)."""

    def __init__(self, on_request_b: Any = None) -> None:
        self.sent: list[str] = []
        self.notified: list[tuple[str, dict[str, Any]]] = []
        self.hold = False
        self.a = Peer(self._to_b, on_notification=lambda m, p: self.notified.append((m, p)))
        self.b = Peer(self._to_a, on_notification=lambda m, p: self.notified.append((m, p)), on_request=on_request_b)

    async def _to_b(self, text: str) -> None:
        self.sent.append(text)
        if not self.hold:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.b.receive(json.loads(text))))

    async def _to_a(self, text: str) -> None:
        self.sent.append(text)
        await self.a.receive(json.loads(text))


async def test_a_request_is_answered_by_the_other_sides_handler() -> None:
    async def handler(method: str, params: dict[str, Any]) -> Any:
        if method == "add":
            return params["x"] + params["y"]
        raise RPCError(method, -32000, "nope", {"why": "test"})

    wire = Wire(handler)
    assert await wire.a.request("add", {"x": 2, "y": 3}, 5) == 5
    with pytest.raises(RPCError) as refused:
        await wire.a.request("other", None, 5)
    assert (refused.value.method, refused.value.code, refused.value.message) == ("other", -32000, "nope")
    # No "jsonrpc" field, integer ids from 1, params left out when None (exec-server's wire).
    assert json.loads(wire.sent[0]) == {"id": 1, "method": "add", "params": {"x": 2, "y": 3}}
    assert json.loads(wire.sent[2]) == {"id": 2, "method": "other"}
    assert wire.a.awaiting == 0


async def test_without_a_handler_a_request_gets_method_not_found_and_notifications_are_routed() -> None:
    wire = Wire()
    with pytest.raises(RPCError) as refused:
        await wire.a.request("anything", {}, 5)
    assert refused.value.code == METHOD_NOT_FOUND
    await wire.b.notify("process/output", {"processId": "p1"})
    assert wire.notified == [("process/output", {"processId": "p1"})]


async def test_the_owners_error_types_are_raised() -> None:
    class MyError(RPCError):
        pass

    wire = Wire()
    wire.a = Peer(
        wire._to_b,
        on_notification=lambda m, p: None,
        rpc_error=MyError,
        timeout_error=lambda method, seconds: Closed(f"{method} {seconds}"),
    )
    with pytest.raises(MyError):
        await wire.a.request("x", {}, 5)
    wire.hold = True
    with pytest.raises(Closed, match=r"slow 0\.05"):
        await wire.a.request("slow", {}, 0.05)
    assert wire.a.awaiting == 0


async def test_close_fails_waiting_and_later_requests_and_a_late_answer_is_dropped() -> None:
    wire = Wire()
    wire.hold = True
    waiting = asyncio.create_task(wire.a.request("wait", {}, None))
    await asyncio.sleep(0.01)
    assert wire.a.awaiting == 1
    wire.a.close(Closed("gone"))
    with pytest.raises(Closed, match="gone"):
        await waiting
    with pytest.raises(Closed, match="gone"):
        await wire.a.request("again", {}, 5)
    with pytest.raises(Closed, match="gone"):
        await wire.a.notify("again", {})
    # An answer nobody waits for any more (and one that is not an object) changes nothing.
    await wire.a.receive({"id": 1, "result": "late"})
    await wire.a.receive(["not", "an", "object"])
    assert wire.a.awaiting == 0
