"""Per-workspace model tokens: the agentserver client, the cache and its fallbacks, the refresh
task, proxy credentials and spawn settings (against a real fake agentserver over HTTP)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from appgateway import model_credentials
from appgateway.credential_tasks import refresh_model_tokens
from appgateway.leases import LiveSession
from appgateway.model_credentials import Token
from appgateway.supervisor import get_supervisor
from tests.fake_agentserver import FakeAgentserver, FakeResponse, RecordedRequest

SECRET = "test-agentserver-secret"
STATIC_KEY = "sk-static"
KEY_NAME = "CXG_TEST_MODEL_KEY"


def token_path(workspace_id: str) -> str:
    return f"/internal/workspaces/{workspace_id}/modelserver-token"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class TokenIssuer:
    """The agentserver's token route for some workspaces: hands out ``token`` until changed."""

    def __init__(self, agentserver: FakeAgentserver) -> None:
        self.agentserver = agentserver
        self.token = "token-1"
        self.lifetime = 3600.0

    def serve(self, *workspace_ids: str) -> None:
        for workspace_id in workspace_ids:
            self.agentserver.route("GET", token_path(workspace_id), self._answer)

    def _answer(self, request: RecordedRequest) -> FakeResponse:
        return FakeResponse(200, {"access_token": self.token, "expires_at": iso(time.time() + self.lifetime)})

    def fetches(self, workspace_id: str) -> int:
        return len(self.agentserver.requests_to(token_path(workspace_id), "GET"))


@pytest.fixture
def creds(store_backend: str, settings: Any) -> Any:
    """Settings for the credential module, on Redis and on the embedded default's fakeredis."""
    settings.CXG_CODEX_API_KEY = STATIC_KEY
    settings.CXG_MODEL_PROVIDER_ENV_KEY = KEY_NAME
    return settings


@pytest.fixture
def issuer(creds: Any) -> Iterator[TokenIssuer]:
    with FakeAgentserver(SECRET) as agentserver:
        creds.CXG_AGENTSERVER_INTERNAL_URL = agentserver.base_url
        yield TokenIssuer(agentserver)


async def test_a_token_is_fetched_once_and_cached_until_it_expires(issuer):
    issuer.serve("ws-a")

    assert await model_credentials.current_token("ws-a") == "token-1"
    issuer.token = "token-2"
    assert await model_credentials.current_token("ws-a") == "token-1"  # from the cache
    assert issuer.fetches("ws-a") == 1
    request = issuer.agentserver.requests_to(token_path("ws-a"), "GET")[0]
    assert request.headers["x-internal-secret"] == SECRET
    cached = await model_credentials.cached_token("ws-a")
    assert cached is not None
    assert cached.access_token == "token-1"
    assert cached.expires_at == pytest.approx(time.time() + 3600, abs=5)

    # An expired token is never used: the next call fetches a fresh one.
    await model_credentials._store("ws-a", Token("token-1", time.time() + 0.3, time.time() - 3600))
    await asyncio.sleep(0.4)
    assert await model_credentials.current_token("ws-a") == "token-2"
    assert issuer.fetches("ws-a") == 2


async def test_404_means_the_static_key_and_is_remembered(issuer):
    issuer.agentserver.respond("GET", token_path("ws-none"), FakeResponse(404, {"error": "no connection"}))

    assert await model_credentials.current_token("ws-none") == STATIC_KEY
    assert await model_credentials.current_token("ws-none") == STATIC_KEY
    assert issuer.fetches("ws-none") == 1
    cached = await model_credentials.cached_token("ws-none")
    assert cached is not None
    assert cached.access_token == ""
    assert cached.expires_at == pytest.approx(time.time() + model_credentials.NO_TOKEN_TTL, abs=5)


async def test_errors_keep_the_last_good_token_while_it_is_unexpired(issuer, caplog):
    issuer.serve("ws-err")
    assert (await model_credentials.refresh("ws-err")) is not None
    issuer.agentserver.respond("GET", token_path("ws-err"), FakeResponse(500, {"error": "boom"}), FakeResponse(502))

    with caplog.at_level(logging.WARNING, logger="appgateway.model_credentials"):
        kept = await model_credentials.refresh("ws-err")
    assert kept is not None
    assert kept.access_token == "token-1"
    assert await model_credentials.current_token("ws-err") == "token-1"
    [record] = [r for r in caplog.records if r.getMessage() == "model token fetch failed"]
    assert record.workspace_id == "ws-err"
    assert "status=500" in record.error

    # The last good token has expired and the agentserver still fails: the static key.
    await model_credentials._store("ws-err", Token("token-1", time.time() + 0.3, time.time() - 3600))
    await asyncio.sleep(0.4)
    assert await model_credentials.current_token("ws-err") == STATIC_KEY
    assert issuer.fetches("ws-err") == 3


async def test_errors_without_a_last_good_token_mean_the_static_key(issuer):
    issuer.agentserver.respond("GET", token_path("ws-down"), FakeResponse(200, {"access_token": "x"}))
    assert await model_credentials.current_token("ws-down") == STATIC_KEY  # no expires_at: refused
    issuer.agentserver.stop()
    assert await model_credentials.current_token("ws-down") == STATIC_KEY  # unreachable
    assert await model_credentials.cached_token("ws-down") is None


def test_refresh_is_due_before_min_of_ten_minutes_or_a_fifth_of_the_lifetime():
    hour = Token("t", expires_at=3600.0, fetched_at=0.0)
    assert not hour.due(2999.0)
    assert hour.due(3001.0)
    five_minutes = Token("t", expires_at=300.0, fetched_at=0.0)
    assert not five_minutes.due(239.0)
    assert five_minutes.due(241.0)
    assert not hour.expired(3599.0)
    assert hour.expired(3600.0)


def test_the_beat_task_refreshes_only_due_tokens_of_live_workspaces(issuer, monkeypatch):
    issuer.serve("ws-due", "ws-fresh", "ws-idle", "ws-new")
    now = time.time()
    store: Callable[[str, Token], Any] = async_to_sync(model_credentials._store)
    store("ws-due", Token("token-1", now + 300, now - 3300))  # 5 of 60 minutes left
    store("ws-fresh", Token("token-1", now + 3000, now - 600))
    store("ws-idle", Token("token-1", now + 300, now - 3300))  # due, but its app-server is gone
    live = ["ws-due", "ws-fresh", "ws-new"]
    monkeypatch.setattr(
        get_supervisor(),
        "live_sessions",
        lambda: [LiveSession(ws, "process", 1, "ws://x", now, now) for ws in live],
    )
    issuer.token = "token-2"

    assert refresh_model_tokens.apply().get() == 2

    cached = [async_to_sync(model_credentials.cached_token)(ws) for ws in ("ws-due", "ws-fresh", "ws-idle", "ws-new")]
    assert [token.access_token if token else None for token in cached] == ["token-2", "token-1", "token-1", "token-2"]
    assert [issuer.fetches(ws) for ws in ("ws-due", "ws-fresh", "ws-idle", "ws-new")] == [1, 0, 0, 1]


def test_the_beat_task_does_nothing_without_an_agentserver(creds, monkeypatch):
    creds.CXG_AGENTSERVER_INTERNAL_URL = ""
    monkeypatch.setattr(get_supervisor(), "live_sessions", lambda: pytest.fail("must not look for workspaces"))
    assert refresh_model_tokens.apply().get() == 0


def test_the_task_is_on_the_beat_schedule_and_found_by_workers_and_the_in_process_beat(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert refresh_model_tokens.name in tasks
    # A fresh process, as a worker starts: the task must be registered without this test's import.
    probe = (
        "import django; django.setup(); from codexgw.celery import app; "
        "app.loader.import_default_modules(); print(sorted(app.tasks))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert refresh_model_tokens.name in result.stdout


def test_proxy_credentials_name_their_workspace_and_cannot_be_forged(creds):
    credential = model_credentials.proxy_credential("ws.with-dots_1")
    assert model_credentials.workspace_for_credential(credential) == "ws.with-dots_1"
    signature = credential.rpartition(".")[2]
    assert model_credentials.workspace_for_credential(f"cxgm.other.{signature}") is None
    flipped = credential[:-1] + ("1" if credential.endswith("0") else "0")
    assert model_credentials.workspace_for_credential(flipped) is None
    assert model_credentials.workspace_for_credential(credential[:-2]) is None
    assert model_credentials.workspace_for_credential(credential.removeprefix("cxgm.")) is None
    assert model_credentials.workspace_for_credential("") is None
    creds.SECRET_KEY = "another-secret-key"
    assert model_credentials.workspace_for_credential(credential) is None


async def test_spawn_settings_point_codex_at_the_proxy(issuer, creds):
    creds.CXG_SELF_HTTP_BASE_URL = "http://10.0.0.5:6060/"
    spawn = await model_credentials.spawn_settings("ws-s")
    assert spawn.provider_base_url == "http://10.0.0.5:6060/api/model-proxy/v1"
    assert spawn.env == {KEY_NAME: model_credentials.proxy_credential("ws-s")}
    assert issuer.fetches("ws-s") == 0  # the token is the proxy's business, not the spawn's

    creds.CXG_AGENTSERVER_INTERNAL_URL = ""
    spawn = await model_credentials.spawn_settings("ws-s")
    assert (spawn.env, spawn.provider_base_url) == ({}, None)  # the supervisor's static key and base_url
