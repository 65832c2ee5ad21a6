"""ProxyTokenAuth against a fake agentserver (a real HTTP server): caching, negative caching and
outages as 503 (never 401); the verifier itself: tests/workspaces/test_agentserver.py."""

from __future__ import annotations

import pytest
from django.conf import settings

from tests.fake_agentserver import FakeAgentserver, FakeResponse, RecordedRequest

VALIDATE = "/internal/validate-proxy-token"
ENVS = "/api/connectors/envs/list"


@pytest.fixture
def agentserver(settings):
    server = FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET)
    known = {"good-token": {"workspace_id": "ws-1", "user_id": "u-1"}}

    def validate(request: RecordedRequest) -> FakeResponse:
        if request.headers.get("x-internal-secret") != settings.CXG_AGENTSERVER_INTERNAL_SECRET:
            return FakeResponse(403, {"error": "forbidden"})
        identity = known.get(request.body.get("token"))
        return FakeResponse(200, identity) if identity else FakeResponse(401, {"error": "invalid_token"})

    server.route("POST", VALIDATE, validate)
    with server:
        settings.CXG_AGENTSERVER_INTERNAL_URL = server.base_url
        yield server


def test_missing_bearer_is_401_with_the_sdk_envelope(client, agentserver):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Basic abc"}, {"HTTP_AUTHORIZATION": "Bearer "}):
        response = client.post(ENVS, **headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "missing_bearer"
    assert agentserver.requests_to(VALIDATE) == []


@pytest.mark.django_db(transaction=True)
def test_good_token_is_cached(client, agentserver):
    for _ in range(5):
        response = client.post(ENVS, HTTP_AUTHORIZATION="Bearer good-token")
        assert response.status_code == 200
        assert response.json() == {"envs": []}
    [call] = agentserver.requests_to(VALIDATE)
    assert call.body == {"token": "good-token"}
    assert call.headers["x-internal-secret"] == settings.CXG_AGENTSERVER_INTERNAL_SECRET


def test_rejected_token_is_401_and_negatively_cached(client, agentserver):
    for _ in range(3):
        response = client.post(ENVS, HTTP_AUTHORIZATION="Bearer bad-token")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_token"
    assert len(agentserver.requests_to(VALIDATE)) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outage", [FakeResponse(500, {"error": "boom"}), FakeResponse(200, b"not json")])
def test_agentserver_failure_is_503_not_401_and_not_cached(client, agentserver, outage):
    agentserver.respond("POST", VALIDATE, outage)
    response = client.post(ENVS, HTTP_AUTHORIZATION="Bearer good-token")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "auth_unavailable"
    # The outage was not remembered: the next call asks again and succeeds.
    assert client.post(ENVS, HTTP_AUTHORIZATION="Bearer good-token").status_code == 200
    assert len(agentserver.requests_to(VALIDATE)) == 2
