"""``workspaces.agentserver.TokenVerifier`` against a fake agentserver (a real HTTP server): what
it caches and for how long, the bound, one call for concurrent misses, outages never cached."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings

from tests.fake_agentserver import VERIFY, FakeAgentserver, FakeResponse
from workspaces import agentserver as api
from workspaces import identity


@pytest.fixture
def agentserver(settings) -> Iterator[FakeAgentserver]:
    with FakeAgentserver(django_settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        settings.CXG_AGENTSERVER_INTERNAL_URL = fake.base_url
        yield fake


def verifier(**ttls: float) -> api.TokenVerifier:
    return api.TokenVerifier(
        VERIFY, identity.TUI, accept_ttl=ttls.get("accept", 30.0), reject_ttl=ttls.get("reject", 0)
    )


async def test_an_acceptance_is_cached_by_a_hash_then_expires(agentserver):
    tokens = verifier()
    agentserver.add_token("tok-1", user_id="u", workspace_id="ws")
    assert await tokens.verify("tok-1") == api.Verified("u", "ws")
    agentserver.tokens.clear()  # revoked at agentserver: the cache still answers
    assert await tokens.verify("tok-1") == api.Verified("u", "ws")
    assert len(agentserver.requests_to(VERIFY)) == 1
    assert "tok-1" not in repr(tokens.cache)  # keyed by a hash, never the token itself
    [(key, (verified, expires))] = tokens.cache.items()
    assert expires - time.monotonic() == pytest.approx(30.0, abs=5)
    tokens.cache[key] = (verified, time.monotonic() - 1)  # aged past its TTL
    with pytest.raises(api.InvalidToken):
        await tokens.verify("tok-1")
    assert len(agentserver.requests_to(VERIFY)) == 2


async def test_refusals_are_cached_only_with_a_reject_ttl(agentserver):
    plain, remembering = verifier(), verifier(reject=30.0)
    for tokens in (plain, remembering):
        for _ in range(2):
            with pytest.raises(api.InvalidToken):
                await tokens.verify("unknown")
    assert len(agentserver.requests_to(VERIFY)) == 3  # twice for plain, once for remembering
    agentserver.add_token("unknown", user_id="u", workspace_id="ws")
    assert await plain.verify("unknown") == api.Verified("u", "ws")


async def test_an_outage_is_not_cached_and_a_grant_says_503(agentserver):
    tokens = verifier(reject=30.0)
    agentserver.add_token("tok-2", user_id="u", workspace_id="ws")
    agentserver.respond("POST", VERIFY, FakeResponse(500, {"error": "boom"}), FakeResponse(200, b"not json"))
    for _ in range(2):
        with pytest.raises(identity.Unavailable):
            await tokens.grant("tok-2")
    grant = await tokens.grant("tok-2")
    assert (grant.workspace_id, grant.user_id, grant.scopes) == ("ws", "u", frozenset({identity.TUI}))
    assert len(agentserver.requests_to(VERIFY)) == 3


async def test_another_agentserver_is_asked_again(agentserver, settings):
    tokens = verifier()
    agentserver.add_token("tok-3", user_id="u", workspace_id="ws")
    await tokens.verify("tok-3")
    with FakeAgentserver(django_settings.CXG_AGENTSERVER_INTERNAL_SECRET) as other:
        settings.CXG_AGENTSERVER_INTERNAL_URL = other.base_url
        with pytest.raises(api.InvalidToken):  # the other one does not know the token
            await tokens.verify("tok-3")


async def test_the_cache_is_bounded_least_recently_used_first(agentserver):
    tokens = api.TokenVerifier(VERIFY, identity.TUI, accept_ttl=30.0, max_entries=3)
    for name in ("a", "b", "c", "d"):
        agentserver.add_token(name, user_id="u", workspace_id="ws")
    for name in ("a", "b", "c"):
        await tokens.verify(name)
    await tokens.verify("a")  # used again: "b" is now the oldest
    await tokens.verify("d")
    assert len(tokens.cache) == 3
    before = len(agentserver.requests_to(VERIFY))
    for name in ("a", "c", "d"):
        await tokens.verify(name)
    assert len(agentserver.requests_to(VERIFY)) == before
    await tokens.verify("b")
    assert len(agentserver.requests_to(VERIFY)) == before + 1


async def test_concurrent_misses_share_one_call_and_its_refusal(agentserver):
    tokens = verifier()
    agentserver.respond("POST", VERIFY, FakeResponse(200, {"workspace_id": "ws-9", "user_id": "u"}, delay=0.5))
    results = await asyncio.gather(*(tokens.verify("slow") for _ in range(8)))
    assert results == [api.Verified("u", "ws-9")] * 8
    agentserver.respond("POST", VERIFY, FakeResponse(401, {"error": "invalid_token"}, delay=0.3))
    refused = await asyncio.gather(*(tokens.verify("revoked") for _ in range(4)), return_exceptions=True)
    assert [type(error) for error in refused] == [api.InvalidToken] * 4
    assert len(agentserver.requests_to(VERIFY)) == 2


async def test_unreachable_slow_or_unconfigured_is_an_outage(agentserver, settings, monkeypatch):
    tokens = verifier()
    monkeypatch.setattr(api, "TIMEOUT", 0.3)
    agentserver.respond("POST", VERIFY, FakeResponse(200, {"user_id": "u", "workspace_id": "ws"}, delay=2.0))
    started = time.monotonic()
    with pytest.raises(api.VerifierUnavailable):
        await tokens.verify("slow")
    assert time.monotonic() - started < 1.5
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CXG_AGENTSERVER_INTERNAL_URL = f"http://127.0.0.1:{port}"
    with pytest.raises(api.VerifierUnavailable):
        await tokens.verify("any")
    settings.CXG_AGENTSERVER_INTERNAL_URL = ""
    with pytest.raises(api.VerifierUnavailable, match="not set"):
        await tokens.verify("any")


def test_the_timeout_is_five_seconds():
    assert api.TIMEOUT == 5.0


async def test_callers_waiting_on_a_cancelled_call_ask_again(agentserver):
    """The caller whose request went to the agentserver hangs up (a TUI leaving mid-handshake):
    the callers waiting for the same answer are not cancelled with it."""
    tokens = verifier()
    agentserver.add_token("tok-4", user_id="u", workspace_id="ws")
    agentserver.respond("POST", VERIFY, FakeResponse(200, {"workspace_id": "ws", "user_id": "u"}, delay=0.5))
    first = asyncio.ensure_future(tokens.verify("tok-4"))
    await asyncio.sleep(0.1)
    waiting = asyncio.ensure_future(tokens.verify("tok-4"))
    await asyncio.sleep(0.1)
    first.cancel()
    assert await asyncio.wait_for(waiting, 10) == api.Verified("u", "ws")
    assert first.cancelled()
