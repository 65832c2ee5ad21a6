"""``appgateway.auth``: TUI bearer tokens verified by a (fake, real HTTP) agentserver."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest
from django.conf import settings as django_settings

from appgateway import auth
from appgateway.auth import Identity
from bridge.ws_auth import Denial
from tests.fake_agentserver import VERIFY, FakeAgentserver, FakeResponse

_tokens = itertools.count(1)


def new_token() -> str:
    # Unique per test: the positive cache is process-wide.
    return f"ast_test{next(_tokens)}_{time.monotonic_ns()}"


@pytest.fixture
def agentserver(settings) -> Iterator[FakeAgentserver]:
    with FakeAgentserver(django_settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        settings.CXG_AGENTSERVER_INTERNAL_URL = fake.base_url
        yield fake


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_valid_token_gives_the_identity_and_sends_the_documented_request(agentserver):
    token = new_token()
    agentserver.add_token(token, user_id="user-1", workspace_id="ws-1")
    assert await auth.authenticate_tui(bearer(token)) == Identity(user_id="user-1", workspace_id="ws-1")
    [request] = agentserver.requests_to(VERIFY)
    assert request.body == {"token": token}
    assert request.headers["x-internal-secret"] == django_settings.CXG_AGENTSERVER_INTERNAL_SECRET
    assert request.headers["content-type"] == "application/json"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Basic dXNlcjpwdw=="}, {"authorization": "Bearer "}])
async def test_missing_bearer_is_401_without_asking_agentserver(agentserver, headers):
    assert await auth.authenticate_tui(headers) == Denial(401, "missing Bearer")
    assert agentserver.requests == []


async def test_token_agentserver_refuses_is_401(agentserver):
    assert await auth.authenticate_tui(bearer(new_token())) == Denial(401, "unauthorized")
    assert len(agentserver.requests_to(VERIFY)) == 1


@pytest.mark.parametrize(
    "response",
    [
        FakeResponse(500, {"error": "boom"}),
        FakeResponse(502, b"<html>bad gateway</html>"),
        FakeResponse(403, {"error": "forbidden"}),
        FakeResponse(200, b"not json"),
        FakeResponse(200, {"user_id": "u"}),
        FakeResponse(200, {"user_id": "u", "workspace_id": ""}),
        FakeResponse(200, ["u", "ws"]),
    ],
    ids=["500", "502-html", "403", "200-undecodable", "200-no-workspace", "200-empty-workspace", "200-array"],
)
async def test_agentserver_failure_is_503_not_401(agentserver, response):
    token = new_token()
    agentserver.add_token(token, user_id="u", workspace_id="ws")
    agentserver.respond("POST", VERIFY, response)
    assert await auth.authenticate_tui(bearer(token)) == Denial(503, "token verification unavailable, retry later")


async def test_outage_is_not_cached(agentserver):
    token = new_token()
    agentserver.add_token(token, user_id="u", workspace_id="ws")
    agentserver.respond("POST", VERIFY, FakeResponse(503))
    assert isinstance(await auth.authenticate_tui(bearer(token)), Denial)
    assert await auth.authenticate_tui(bearer(token)) == Identity("u", "ws")
    assert len(agentserver.requests_to(VERIFY)) == 2


async def test_refusal_is_not_cached(agentserver):
    token = new_token()
    assert await auth.authenticate_tui(bearer(token)) == Denial(401, "unauthorized")
    agentserver.add_token(token, user_id="u", workspace_id="ws")
    assert await auth.authenticate_tui(bearer(token)) == Identity("u", "ws")


async def test_timeout_is_503(agentserver, monkeypatch):
    monkeypatch.setattr(auth, "VERIFY_TIMEOUT", 0.3)
    token = new_token()
    agentserver.add_token(token, user_id="u", workspace_id="ws")
    agentserver.respond("POST", VERIFY, FakeResponse(200, {"user_id": "u", "workspace_id": "ws"}, delay=2.0))
    started = time.monotonic()
    assert (await auth.authenticate_tui(bearer(token))).status == 503  # type: ignore[union-attr]
    assert time.monotonic() - started < 1.5


def test_the_verify_timeout_is_five_seconds():
    assert auth.VERIFY_TIMEOUT == 5.0


async def test_connection_refused_is_503(settings):
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CXG_AGENTSERVER_INTERNAL_URL = f"http://127.0.0.1:{port}"
    assert await auth.authenticate_tui(bearer(new_token())) == Denial(
        503, "token verification unavailable, retry later"
    )


@pytest.mark.parametrize("setting", ["CXG_AGENTSERVER_INTERNAL_URL", "CXG_AGENTSERVER_INTERNAL_SECRET"])
async def test_unconfigured_agentserver_is_503(agentserver, settings, setting):
    setattr(settings, setting, "")
    token = new_token()
    agentserver.add_token(token, user_id="u", workspace_id="ws")
    assert (await auth.authenticate_tui(bearer(token))).status == 503  # type: ignore[union-attr]
    assert agentserver.requests == []


async def test_success_is_cached_by_token_hash_then_expires(agentserver, monkeypatch):
    monkeypatch.setattr(auth, "_cache", {})
    token = new_token()
    agentserver.add_token(token, user_id="u", workspace_id="ws")
    assert await auth.verify_token(token) == Identity("u", "ws")
    agentserver.tokens.clear()  # revoked at agentserver: the cache still answers
    assert await auth.verify_token(token) == Identity("u", "ws")
    assert len(agentserver.requests_to(VERIFY)) == 1
    assert token not in repr(auth._cache)  # keyed by a hash, never the token itself
    # Age the entry past its TTL (patching time.monotonic would also stop the event loop's clock).
    [(key, (identity, expires))] = auth._cache.items()
    assert expires - time.monotonic() == pytest.approx(auth.CACHE_TTL, abs=5)
    auth._cache[key] = (identity, time.monotonic() - 1)
    with pytest.raises(auth.InvalidToken):
        await auth.verify_token(token)
    assert len(agentserver.requests_to(VERIFY)) == 2


async def test_cache_is_bounded(agentserver, monkeypatch):
    monkeypatch.setattr(auth, "CACHE_MAX_ENTRIES", 3)
    monkeypatch.setattr(auth, "_cache", {})
    tokens = [new_token() for _ in range(5)]
    for token in tokens:
        agentserver.add_token(token, user_id="u", workspace_id="ws")
        await auth.verify_token(token)
    assert len(auth._cache) == 3
    # The newest are kept: verifying them again asks nobody.
    before = len(agentserver.requests_to(VERIFY))
    for token in tokens[-3:]:
        await auth.verify_token(token)
    assert len(agentserver.requests_to(VERIFY)) == before
