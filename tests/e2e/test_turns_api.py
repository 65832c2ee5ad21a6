"""``POST /api/turns`` on real gateway processes in front of the real ``codex app-server`` (model:
the fake Responses server; API-key validation: the fake agentserver). With two processes a
request that lands on the one not owning the workspace is relayed over Redis to the owner."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from appgateway.turns_auth import VALIDATE_PATH
from codexgw import redis as gwredis
from tests.appgateway.fake_model import FakeModel, Reply, Step
from tests.e2e.harness import GatewayCluster, GatewayProcess, http_json, http_request, internal_secret_headers
from tests.fake_agentserver import FakeAgentserver, FakeResponse, RecordedRequest

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-turns"
STALL = "(stall until released)"
KEY = "wak_turns_e2e"


class StallingModel(FakeModel):
    """A ``Reply(STALL)`` step holds its response stream open until ``release`` (a model that
    takes longer than the caller's timeout)."""

    released: threading.Event

    def _events(self, step: Step) -> list[tuple[str, dict[str, Any]]]:
        if step == Reply(STALL):
            self.released.wait(60)
        return super()._events(step)


@pytest.fixture
def fake_model() -> Iterator[StallingModel]:
    model = StallingModel(default_text="Hello from the broker")
    model.released = threading.Event()
    with model:
        try:
            yield model
        finally:
            model.released.set()


@pytest.fixture
def agentserver() -> Iterator[FakeAgentserver]:
    """Validates workspace API keys: ``keys`` maps a secret to its grant."""
    keys = {
        KEY: {"workspace_id": WORKSPACE, "key_id": "key-1", "scopes": ["turns:submit"]},
        "wak_other_workspace": {"workspace_id": "ws-other", "key_id": "key-2", "scopes": ["turns:submit"]},
        "wak_no_scope": {"workspace_id": WORKSPACE, "key_id": "key-3", "scopes": ["threads:read"]},
    }

    def validate(request: RecordedRequest) -> FakeResponse:
        if request.headers.get("x-internal-secret") != settings.CXG_AGENTSERVER_INTERNAL_SECRET:
            return FakeResponse(403, {"error": "forbidden"})
        secret = request.body.get("secret") if isinstance(request.body, dict) else None
        grant = keys.get(secret) if isinstance(secret, str) else None
        return FakeResponse(200, grant) if grant else FakeResponse(401, {"error": "invalid api key"})

    with FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as fake:
        fake.route("POST", VALIDATE_PATH, validate)
        yield fake


@pytest.fixture
def cluster(
    start_gateway_cluster: Any, tmp_path: Path, codex_bin: Path, fake_model: FakeModel, agentserver: FakeAgentserver
) -> GatewayCluster:
    (tmp_path / "work").mkdir()
    env = {
        "CODEXGW_ROLES": "exec,app",
        "CODEXGW_DATA_DIR": str(tmp_path / "data"),
        "CXG_CODEX_BIN": str(codex_bin),
        "CXG_TMP_ROOT": str(tmp_path / "homes"),
        "CXG_MODEL_PROVIDER": "fake",
        "CXG_MODEL": fake_model.model,
        "CXG_MODEL_PROVIDER_BASE_URL": fake_model.base_url,
        "CXG_MODEL_PROVIDER_ENV_KEY": "CXG_TEST_MODEL_KEY",
        "CXG_CODEX_API_KEY": "sk-fake",
        "CXG_PROJECT_TRUSTED_PATHS": str(tmp_path / "work"),
        "CXG_AGENTSERVER_INTERNAL_URL": agentserver.base_url,
        "CODEXGW_LOG_FORMAT": "text",
    }
    cluster: GatewayCluster = start_gateway_cluster(2, env)
    return cluster


def post_turn(
    gateway: GatewayProcess, text: str, *, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, Any]:
    payload = {"workspaceId": WORKSPACE, "params": {"input": [{"type": "text", "text": text}]}, **body}
    return http_json(
        "POST",
        gateway.base_url + "/api/turns",
        payload,
        headers=internal_secret_headers() if headers is None else headers,
        timeout=120,
    )


def agent_texts(turn: dict[str, Any]) -> list[str]:
    return [item["text"] for item in turn["items"] if item["type"] == "agentMessage"]


def owner_pid() -> int | None:
    client = gwredis.sync_client()
    assert client is not None
    raw = client.get(gwredis.key("appserver", WORKSPACE))
    return int(json.loads(str(raw))["process_id"].split(":")[1]) if raw else None


def test_turns_through_the_owner_and_the_other_process_and_a_continued_thread(cluster, fake_model):
    fake_model.script(Reply("noted: ALPHA"), Reply("second thread"), Reply("you said ALPHA"))
    status, first = post_turn(cluster[0], "remember ALPHA")
    assert status == 200, first
    assert owner_pid() == cluster[0].pid
    assert agent_texts(first["turn"]) == ["noted: ALPHA"]
    assert first["turn"]["status"] == "completed"
    assert [item["type"] for item in first["turn"]["items"]] == ["userMessage", "agentMessage"]

    # Through the process that does not own the workspace: relayed to the owner.
    status, other = post_turn(cluster[1], "a new thread")
    assert status == 200, other
    assert agent_texts(other["turn"]) == ["second thread"]
    assert other["threadId"] != first["threadId"]

    status, continued = post_turn(cluster[1], "what did I say?", threadId=first["threadId"])
    assert status == 200, continued
    assert continued["threadId"] == first["threadId"]
    assert agent_texts(continued["turn"]) == ["you said ALPHA"]
    assert fake_model.responses_requests()[-1].user_texts()[-2:] == ["remember ALPHA", "what did I say?"]
    assert "a new thread" not in fake_model.responses_requests()[-1].user_texts()
    assert owner_pid() == cluster[0].pid  # one app-server for the workspace, cluster-wide


def test_a_turn_past_its_timeout_is_a_broker_timeout_and_the_next_turn_succeeds(cluster, fake_model):
    fake_model.script(Reply(STALL))
    status, stalled = post_turn(cluster[1], "take your time", timeoutMs=3000)
    assert status == 200, stalled
    assert stalled["transport"]["code"] == "brokerTimeout", stalled
    assert "turn" not in stalled
    assert stalled["threadId"]
    status, answer = post_turn(cluster[1], "again", threadId=stalled["threadId"], timeoutMs=60_000)
    assert status == 200, answer
    assert agent_texts(answer["turn"]) == ["Hello from the broker"]


def test_auth_and_validation(cluster, agentserver, fake_model):
    gateway = cluster[0]

    def post(headers: dict[str, str], **body: Any) -> tuple[int, Any]:
        return post_turn(gateway, "hi", headers=headers, **body)

    bearer = {"Authorization": f"Bearer {KEY}"}
    assert post({}) == (401, {"error": "unauthorized"})
    assert post({"X-Internal-Secret": "wrong"}) == (401, {"error": "unauthorized"})
    assert post({"Authorization": "Bearer not-an-api-key"}) == (401, {"error": "unauthorized"})
    assert agentserver.requests_to(VALIDATE_PATH) == []  # not a wak_ key: not even asked
    assert post({"Authorization": "Bearer wak_unknown"}) == (401, {"error": "unauthorized"})
    assert post({"Authorization": "Bearer wak_other_workspace"}) == (
        403,
        {"error": f"api key not authorized for workspace {WORKSPACE}"},
    )
    assert post({"Authorization": "Bearer wak_no_scope"}) == (403, {"error": "missing scope: turns:submit"})
    assert agentserver.requests_to(VALIDATE_PATH)[-1].body == {"secret": "wak_no_scope"}
    agentserver.respond("POST", VALIDATE_PATH, FakeResponse(500, {"error": "down"}))
    assert post(bearer)[0] == 503  # an outage, not a bad key

    # Validation: our JSON error shape, before anything reaches codex.
    assert post(bearer, params=None)[0] == 400
    status, body = post(bearer, params=["not", "an", "object"])
    assert (status, body["error"].startswith("params:")) == (400, True)
    status, body = post(bearer, params={"threadId": "t", "input": []})
    assert status == 400
    assert "threadId" in body["error"]
    assert post(bearer, workspaceId="../escape")[0] == 400
    status, raw = http_request(
        "POST",
        gateway.base_url + "/api/turns",
        body=b"{not json",
        headers={**bearer, "Content-Type": "application/json"},
    )
    assert (status, json.loads(raw)) == (400, {"error": "invalid JSON"})
    assert fake_model.responses_requests() == []

    status, answer = post(bearer)
    assert status == 200, answer
    assert agent_texts(answer["turn"]) == ["Hello from the broker"]

    agentserver.stop()  # agentserver gone: still 503
    assert post(bearer)[0] == 503
