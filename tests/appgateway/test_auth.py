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
