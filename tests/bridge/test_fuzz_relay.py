"""Fuzz corpus: relay tickets on ``PUT|GET /relay/{ticket}`` (``bridge.relay_views.relay_app``,
in process against real Redis). Malformed tickets are 410 ``ticket not found or expired`` (401
``unauthorized`` when the Bearer is not the URL's ticket), expired ones 410, finished ones 410
``relay already finished``, reused sides 423; always the JSON error shape, never a 5xx.
Fixed seed, bounded examples (``tests/fuzzing.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge import relay, relay_tickets
from bridge.relay_views import relay_app
from tests.bridge.test_relay import redis_client
from tests.fuzzing import count, fuzz, run

KIND = "relay ticket"
UNKNOWN = {"error": "ticket not found or expired"}
UNAUTHORIZED = {"error": "unauthorized"}
path_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
methods = st.sampled_from(["PUT", "GET"])


async def call(method: str, ticket: str, authorization: str | None) -> tuple[int, Any]:
    headers = [] if authorization is None else [(b"authorization", authorization.encode("latin-1"))]
    scope = {
        "type": "http",
        "method": method,
        "path": "/relay/" + ticket,
        "headers": headers,
        "http_version": "1.1",
    }
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    requested = False

    async def receive() -> dict[str, Any]:
        # The (empty) body once; then, as a server does, nothing until the client leaves.
        nonlocal requested
        if requested:
            await asyncio.Future()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    await asyncio.wait_for(relay_app(scope, receive, send), 10)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert (b"content-type", b"application/json") in start["headers"]
    return start["status"], json.loads(body)


@pytest.fixture
def relay_on(settings: Any) -> Any:
    settings.CXG_PUBLIC_HTTPS_BASE_URL = "https://gw.example.test/"
    loop = asyncio.new_event_loop()
    yield lambda *args: loop.run_until_complete(call(*args))
    loop.close()


_workspaces = iter(range(10**9))


def new_ticket() -> str:
    """A fresh ticket, in a workspace of its own (the per-workspace cap never interferes)."""
    return relay_tickets.create_ticket(f"ws-fuzz-{next(_workspaces)}", "exe-src", "exe-dst", 60, 0).ticket


def test_malformed_tickets_are_410_or_401(relay_on):
    well_formed_unknown = st.binary(min_size=32, max_size=32).map(
        lambda raw: relay_tickets.TICKET_PREFIX + __import__("base64").urlsafe_b64encode(raw).rstrip(b"=").decode()
    )

    @fuzz(400)
    @given(
        method=methods,
        ticket=path_text | well_formed_unknown | path_text.map(lambda s: relay_tickets.TICKET_PREFIX + s),
        scheme=st.sampled_from(["Bearer ", "bearer ", "Bearer  ", "", None]),
        other=st.none() | st.text(st.characters(codec="latin-1"), max_size=60),
    )
    @example(method="GET", ticket="", scheme="Bearer ", other=None)
    @example(method="PUT", ticket="rly_" + "A" * 43, scheme="Bearer ", other=None)
    @example(method="PUT", ticket="rly_" + "A" * 42 + "=", scheme="Bearer ", other=None)
    def malformed(method, ticket, scheme, other):
        count(KIND)
        try:
            presented = ticket if other is None else other
            authorization = None if scheme is None else scheme + presented
            if authorization is not None:
                authorization.encode("latin-1")
        except UnicodeEncodeError:
            authorization = "Bearer " + (other or "x")  # a header cannot carry it: present another
        status, body = relay_on(method, ticket, authorization)
        if authorization is not None and authorization.startswith("Bearer ") and authorization[7:] == ticket and ticket:
            assert (status, body) == (410, UNKNOWN)
        else:
            assert (status, body) == (401, UNAUTHORIZED)

    run(KIND, malformed, 400)


def test_expired_tickets_are_410(relay_on):
    client = redis_client()

    @fuzz(300)
    @given(method=methods, ago_ms=st.integers(min_value=1, max_value=10**9), scheme_case=st.booleans())
    def expired(method, ago_ms, scheme_case):
        count(KIND)
        ticket = new_ticket()
        # Expired ago_ms ago (its keys outlive it by KEY_GRACE_MS, as in production).
        client.hset(relay_tickets.key("t", ticket), "expires", int(time.time() * 1000) - ago_ms)
        if scheme_case:
            assert relay_on(method, ticket, f"bearer {ticket}") == (401, UNAUTHORIZED)
        assert relay_on(method, ticket, f"Bearer {ticket}") == (410, UNKNOWN)
        # Nobody claimed a side of it.
        assert client.hmget(relay_tickets.key("t", ticket), "put", "get", "state") == ["0", "0", "open"]

    run(KIND, expired, 300)


def test_reused_and_finished_tickets_are_423_and_410(relay_on):
    client = redis_client()

    @fuzz(300)
    @given(
        method=methods,
        state=st.sampled_from(["claimed", "both-claimed", "finished"]),
        outcome=st.sampled_from(list(relay.Outcome)),
        suffix=st.just("") | st.text(st.characters(codec="latin-1"), min_size=1, max_size=40),
        tries=st.integers(min_value=1, max_value=3),
    )
    @example(method="PUT", state="claimed", outcome=relay.Outcome.OK, suffix="/", tries=1)
    def reused(method, state, outcome, suffix, tries):
        count(KIND)
        ticket = new_ticket()
        side = "put" if method == "PUT" else "get"
        key = relay_tickets.key("t", ticket)
        if state == "claimed":
            client.hset(key, side, "1")  # this side was used once already
        elif state == "both-claimed":
            client.hset(key, mapping={"put": "1", "get": "1"})
        else:
            client.hset(key, mapping={"state": "done", "outcome": outcome.value, "reason": "fuzz"})
        answers = [relay_on(method, ticket + suffix, f"Bearer {ticket + suffix}") for _ in range(tries)]
        assert answers == answers[:1] * tries  # a refusal changes nothing: the same again
        status, body = answers[0]
        if suffix:
            assert (status, body) == (410, UNKNOWN)  # one character more is another (malformed) ticket
        elif state == "finished":
            assert (status, body) == (410, {"error": "relay already finished"})
        else:
            assert (status, body) == (423, {"error": f"{method} side already claimed"})

    run(KIND, reused, 300)
