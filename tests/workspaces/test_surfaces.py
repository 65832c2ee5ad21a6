"""Built-in mode on every user-facing surface: the TUI upgrade, ``POST /api/turns``,
``/api/connectors/*`` and the model proxy. Bad tokens get 401, valid ones without the scope or
workspace 403, each with a one-line reason, and never 503: nothing external can be down."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from appgateway import auth, model_credentials
from appgateway.auth import Identity
from appgateway.model_proxy import model_proxy_app
from appgateway.supervisor import get_supervisor
from bridge.ws_auth import Denial
from codexgw.model_key import MISSING_KEY, model_key_problem
from workspaces import tokens
from workspaces.models import AccessToken, Workspace

# The identity interface checks tokens in a thread of its own: the rows must be committed.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("builtin")]

ENVS = "/api/connectors/envs/list"


@pytest.fixture
def agentserver_secret(settings: Any) -> dict[str, Any]:
    return {"HTTP_X_INTERNAL_SECRET": settings.CXG_AGENTSERVER_INTERNAL_SECRET}


def token_for(workspace: Workspace, owner: Any, scopes: list[str] | None = None) -> str:
    return tokens.mint(workspace, owner, scopes=scopes or list(tokens.ALL_SCOPES)).token


def revoked(workspace: Workspace, owner: Any) -> str:
    created = tokens.mint(workspace, owner)
    tokens.revoke(AccessToken.objects.filter(pk=created.record.pk))
    return created.token


def expired(workspace: Workspace, owner: Any) -> str:
    created = tokens.mint(workspace, owner, expires_in=timedelta(days=1))
    AccessToken.objects.filter(pk=created.record.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return created.token


BAD = {
    "unknown": (lambda w, o: "cxgt_AAAAAAAA_" + "A" * 43, "unknown token"),
    "malformed": (lambda w, o: "not-a-token", "not a codexgw access token"),
    "revoked": (revoked, "token revoked"),
    "expired": (expired, "token expired"),
}


# --- the TUI upgrade ---------------------------------------------------------------------------


async def test_tui_accepts_a_token_with_the_tui_scope(workspace: Workspace, owner: Any, settings: Any) -> None:
    settings.CXG_AGENTSERVER_INTERNAL_URL = "http://127.0.0.1:1"  # ignored in built-in mode
    token = await _async(token_for, workspace, owner, ["tui"])
    identity = await auth.authenticate_tui({"authorization": f"Bearer {token}"})
    # The token's visible prefix names it: its revocation closes this TUI (the token's group).
    assert identity == Identity(str(owner.pk), "ws-a", token_id=token[: len("cxgt_") + 8], expires_at=None)


@pytest.mark.parametrize("kind", sorted(BAD))
async def test_tui_refuses_bad_tokens_with_401_and_logs_why(
    workspace: Workspace, owner: Any, kind: str, caplog: Any
) -> None:
    make, reason = BAD[kind]
    token = await _async(make, workspace, owner)
    caplog.set_level("INFO", logger="appgateway.auth")
    assert await auth.authenticate_tui({"authorization": f"Bearer {token}"}) == Denial(401, reason)
    assert f"TUI token refused (401): {reason}" in caplog.text
    assert token not in caplog.text


async def test_tui_refuses_a_token_without_the_scope_with_403(workspace: Workspace, owner: Any) -> None:
    token = await _async(token_for, workspace, owner, ["sdk", "turns:submit"])
    assert await auth.authenticate_tui({"authorization": f"Bearer {token}"}) == Denial(403, "missing scope: tui")


# --- POST /api/turns ---------------------------------------------------------------------------


def post_turn(token: str, workspace_id: str = "ws-a", params: object = None) -> tuple[int, Any]:
    body = {"workspaceId": workspace_id, "params": params}
    response = APIClient().post("/api/turns", body, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    return response.status_code, response.json()


@pytest.mark.parametrize("kind", sorted(BAD))
def test_turns_refuse_bad_tokens_with_401(workspace: Workspace, owner: Any, kind: str) -> None:
    make, reason = BAD[kind]
    assert post_turn(make(workspace, owner)) == (401, {"error": reason})


def test_turns_refuse_a_token_without_the_scope_or_for_another_workspace(workspace: Workspace, owner: Any) -> None:
    assert post_turn(token_for(workspace, owner, ["tui"])) == (403, {"error": "missing scope: turns:submit"})
    good = token_for(workspace, owner, ["turns:submit"])
    assert post_turn(good, "ws-other", {"input": []}) == (
        403,
        {"error": "token not authorized for workspace ws-other"},
    )
    # Authenticated and authorised: what is left to refuse is the body (a turn itself is e2e).
    status, body = post_turn(good, "ws-a", ["not", "an", "object"])
    assert (status, body["error"].startswith("params:")) == (400, True)


def test_turns_without_a_bearer_are_401(workspace: Workspace) -> None:
    response = APIClient().post("/api/turns", {"workspaceId": "ws-a", "params": {}}, format="json")
    assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})


# --- /api/connectors/* -------------------------------------------------------------------------


def connectors(token: str) -> tuple[int, Any]:
    response = APIClient().post(ENVS, HTTP_AUTHORIZATION=f"Bearer {token}")
    return response.status_code, response.json()


def test_connectors_accept_a_token_with_the_sdk_scope(workspace: Workspace, owner: Any) -> None:
    assert connectors(token_for(workspace, owner, ["sdk"])) == (200, {"envs": []})


@pytest.mark.parametrize("kind", sorted(BAD))
def test_connectors_refuse_bad_tokens_with_401(workspace: Workspace, owner: Any, kind: str) -> None:
    make, reason = BAD[kind]
    assert connectors(make(workspace, owner)) == (401, {"error": {"code": "invalid_token", "message": reason}})


def test_connectors_refuse_a_token_without_the_scope_with_403(workspace: Workspace, owner: Any) -> None:
    assert connectors(token_for(workspace, owner, ["tui"])) == (
        403,
        {"error": {"code": "forbidden", "message": "missing scope: sdk"}},
    )


def test_a_revoked_token_stops_working_at_once(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner)
    assert connectors(created.token)[0] == 200
    tokens.revoke(AccessToken.objects.filter(pk=created.record.pk))
    assert connectors(created.token)[0] == 401


# --- model calls -------------------------------------------------------------------------------


async def test_spawns_use_the_model_proxy_so_the_key_stays_in_the_gateway(settings: Any) -> None:
    settings.CXG_CODEX_API_KEY = "sk-static"
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:6060"
    spawn = await model_credentials.spawn_settings("ws-a")
    assert spawn.provider_base_url == "http://127.0.0.1:6060/api/model-proxy/v1"
    assert spawn.env == {settings.CXG_MODEL_PROVIDER_ENV_KEY: model_credentials.proxy_credential("ws-a")}
    assert "sk-static" not in json.dumps(spawn.env)
    assert await model_credentials.current_token("ws-a") == "sk-static"


def test_a_missing_key_is_reported_only_in_builtin_mode(settings: Any) -> None:
    settings.CXG_CODEX_API_KEY = ""
    assert model_key_problem() == MISSING_KEY
    assert "CXG_CODEX_API_KEY" in MISSING_KEY
    assert "OPENAI_API_KEY" in MISSING_KEY
    settings.CXG_CODEX_API_KEY = "sk-x"
    assert model_key_problem() is None
    settings.CXG_CODEX_API_KEY = ""
    settings.CODEXGW_IDENTITY_BACKEND = "agentserver"
    assert model_key_problem() is None


async def test_the_model_proxy_explains_a_missing_key_in_openais_error_shape(settings: Any, caplog: Any) -> None:
    settings.CXG_CODEX_API_KEY = ""
    settings.CXG_MODEL_PROVIDER_BASE_URL = "http://127.0.0.1:1/v1"  # never reached
    sent: list[dict[str, Any]] = []
    received = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return received.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    credential = model_credentials.proxy_credential("ws-a")
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/model-proxy/v1/responses",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {credential}".encode())],
    }
    await model_proxy_app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"]) == {
        "error": {"message": MISSING_KEY, "type": "invalid_request_error", "code": "no_api_key"}
    }
    assert "CXG_CODEX_API_KEY" in caplog.text


async def _async(function: Any, *args: Any) -> Any:
    from asgiref.sync import sync_to_async

    return await sync_to_async(function)(*args)


def test_turns_for_a_workspace_that_does_not_exist_are_404_before_anything_spawns(
    workspace: Workspace, agentserver_secret: dict[str, Any]
) -> None:
    # Even the internal secret, which skips token checks, cannot make up a workspace.
    body = {"workspaceId": "W", "params": {"input": []}}
    response = APIClient().post("/api/turns", body, format="json", **agentserver_secret)
    assert (response.status_code, response.json()) == (404, {"error": "no workspace W"})
    assert get_supervisor().live_sessions() == []
