"""The 16 MiB frame limit across the gateway's rewriting (``bridge/session.py``): a frame at the
limit can grow past it when the multiplexer namespaces a handle or puts the client's own id back,
and exec-server and codex drop the whole connection on a larger frame (codex-wire A.9). Such a
request is refused and such a response becomes an error; neither is forwarded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bridge import session as sessions
from bridge import session_events
from bridge.protocol import INVALID_REQUEST, MAX_FRAME_BYTES
from tests.bridge.test_session import Bridge, initialize, ready_session
from tests.e2e.harness import async_wait_for

__all__ = ["ready_session"]  # the fixture, used by name


def exactly(message: dict[str, Any], size: int, pad: Callable[[int], dict[str, Any]]) -> str:
    """``pad(n)`` as compact JSON of ``size`` bytes: ``message`` with ``n`` more ASCII characters."""
    bare = json.dumps(message, separators=(",", ":"))
    text = json.dumps(pad(size - len(bare)), separators=(",", ":"))
    assert len(text) == size
    return text


async def attached(session: sessions.ExecutorSession) -> Bridge:
    bridge = Bridge()
    await session.put(session_events.BridgeOpen("big", bridge))
    await session.put(session_events.BridgeFrame("big", initialize(1)))
    await session.put(session_events.BridgeFrame("big", json.dumps({"method": "initialized"})))
    assert await async_wait_for(lambda: bridge.received, 5)
    return bridge


@pytest.mark.django_db
async def test_a_request_the_rewriting_grows_past_16_mib_is_refused_not_forwarded(ready_session):
    session, executor = ready_session
    bridge = await attached(session)
    params = {"processId": "p", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {"PAD": ""}, "tty": False}
    request = {"id": 2, "method": "process/start", "params": params}

    def padded(n: int) -> dict[str, Any]:
        return {**request, "params": {**params, "env": {"PAD": "x" * n}}}

    # 16 MiB from the client (the server's limit lets it in); the namespaced processId adds 10 bytes.
    await session.put(session_events.BridgeFrame("big", exactly(request, MAX_FRAME_BYTES, padded)))
    assert await async_wait_for(lambda: len(bridge.received) == 2, 5)
    error = bridge.received[1]
    assert error["id"] == 2
    assert error["error"]["code"] == INVALID_REQUEST
    assert error["error"]["message"].startswith(f"request too large: {MAX_FRAME_BYTES + 10} bytes")
    assert [sent["method"] for sent in executor.sent] == ["initialize", "initialized"]
    assert session.mux.pending_count == 0

    # Refused like a start the executor refused: the same processId starts once it fits.
    await session.put(session_events.BridgeFrame("big", exactly(request, MAX_FRAME_BYTES - 10, padded)))
    assert await async_wait_for(lambda: len(executor.sent) == 3, 5)
    forwarded = executor.sent[2]
    assert len(json.dumps(forwarded, separators=(",", ":"))) == MAX_FRAME_BYTES
    assert forwarded["params"]["processId"].endswith(".p")


@pytest.mark.django_db
async def test_a_response_the_clients_id_grows_past_16_mib_becomes_an_error(ready_session):
    session, executor = ready_session
    bridge = await attached(session)
    long_id = "i" * 1000
    reply = {"id": long_id, "result": {"dataBase64": ""}}
    for expected_size in (MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1):
        await session.put(session_events.BridgeFrame("big", json.dumps({"id": long_id, "method": "fs/readFile"})))
        assert await async_wait_for(lambda: len(executor.sent) == 3, 5)
        forwarded = executor.sent.pop()
        # The executor's answer, sized so that the client's id makes it expected_size bytes.
        text = exactly(reply, expected_size, lambda n: {**reply, "result": {"dataBase64": "A" * n}})
        answer = {**json.loads(text), "id": forwarded["id"]}
        await session.put(session_events.ExecFrame(executor, json.dumps(answer, separators=(",", ":"))))
        assert await async_wait_for(lambda: len(bridge.received) == 2, 5)
        received = bridge.received.pop()
        assert received["id"] == long_id
        if expected_size == MAX_FRAME_BYTES:
            assert len(received["result"]["dataBase64"]) == len(answer["result"]["dataBase64"])
        else:
            assert received["error"]["code"] == INVALID_REQUEST
            assert received["error"]["message"].startswith(f"response too large: {expected_size} bytes")
    assert executor.closed is None
