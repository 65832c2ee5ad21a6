"""Agentserver-facing /api/codex-exec/* and cluster-internal /api/exec-gateway/* routes."""

from __future__ import annotations

import time

import bcrypt
import pytest

from executors import services
from executors.models import Executor, WorkspaceExecutor
from executors.presence import Holder, presence_store
from executors.revocation import revoked_set

pytestmark = pytest.mark.django_db

REGISTER = "/api/codex-exec/register"


def bindings_url(workspace_id: str) -> str:
    return f"/api/codex-exec/workspaces/{workspace_id}/executors"


def go_online(exe_id: str) -> None:
    presence_store().claim(
        exe_id, Holder(channel_name="test.channel", connection_id=f"conn-{exe_id}", since=time.time())
    )


@pytest.fixture
def executor() -> Executor:
    return services.register_executor("user-1", "laptop").executor


# --- guard: X-Internal-Secret --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", REGISTER),
        ("delete", "/api/codex-exec/executors/exe_x"),
        ("post", bindings_url("w1")),
        ("get", bindings_url("w1")),
        ("delete", bindings_url("w1") + "/exe_x"),
    ],
)
@pytest.mark.parametrize("secret", [None, "wrong", ""])
def test_agentserver_routes_refuse_missing_or_wrong_secret(api, method, path, secret):
    headers = {} if secret is None else {"HTTP_X_INTERNAL_SECRET": secret}
    response = getattr(api, method)(path, {}, format="json", HTTP_X_USER_ID="u", **headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


def test_agentserver_routes_refuse_everything_when_secret_unset(api, settings):
    settings.CXG_AGENTSERVER_INTERNAL_SECRET = ""
    for headers in ({}, {"HTTP_X_INTERNAL_SECRET": ""}):
        response = api.post(REGISTER, {}, format="json", HTTP_X_USER_ID="u", **headers)
        assert response.status_code == 503
        assert "not configured" in response.json()["error"]
    assert Executor.objects.count() == 0


# --- register ------------------------------------------------------------------------------


def test_register_creates_executor_with_verifiable_token(api, agentserver_headers):
    response = api.post(
        REGISTER, {"display_name": "my-mac"}, format="json", HTTP_X_USER_ID="user-7", **agentserver_headers
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"exe_id", "registration_token"}
    assert body["exe_id"].startswith("exe_")
    assert len(body["exe_id"]) == 40
    assert len(body["registration_token"]) == 64
    row = Executor.objects.get(exe_id=body["exe_id"])
    assert row.user_id == "user-7"
    assert row.display_name == "my-mac"
    assert bcrypt.checkpw(body["registration_token"].encode(), row.registration_token_hash.encode())
    assert body["registration_token"] not in row.registration_token_encrypted
    assert services.registration_secret(row.exe_id) == body["registration_token"]


def test_register_accepts_empty_body_and_ignores_unknown_fields(api, agentserver_headers):
    response = api.post(REGISTER, {"whatever": 1}, format="json", HTTP_X_USER_ID="u", **agentserver_headers)
    assert response.status_code == 201
    assert Executor.objects.get(exe_id=response.json()["exe_id"]).display_name == ""


def test_register_requires_user_header(api, agentserver_headers):
    response = api.post(REGISTER, {}, format="json", **agentserver_headers)
    assert response.status_code == 401
    assert response.json() == {"error": "missing user"}


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '"text"'])
def test_register_rejects_bad_json(api, agentserver_headers, body):
    response = api.post(REGISTER, body, content_type="application/json", HTTP_X_USER_ID="u", **agentserver_headers)
    assert response.status_code == 400
    assert response.json()["error"]
    assert Executor.objects.count() == 0


def test_register_rejects_wrong_field_type(api, agentserver_headers):
    response = api.post(REGISTER, {"display_name": {"a": 1}}, format="json", HTTP_X_USER_ID="u", **agentserver_headers)
    assert response.status_code == 400
    assert response.json()["error"].startswith("display_name")


def test_register_database_down_is_503(api, agentserver_headers, database_down):
    response = api.post(REGISTER, {}, format="json", HTTP_X_USER_ID="u", **agentserver_headers)
    assert response.status_code == 503
    assert response.json()["error"]


# --- delete executor -----------------------------------------------------------------------


def test_delete_executor_is_idempotent_and_cascades(api, agentserver_headers, executor):
    services.bind_executor("w1", executor.exe_id, "laptop", "", False)
    for _ in range(2):
        response = api.delete(f"/api/codex-exec/executors/{executor.exe_id}", **agentserver_headers)
        assert response.status_code == 204
        assert response.content == b""
    assert not Executor.objects.filter(exe_id=executor.exe_id).exists()
    assert not WorkspaceExecutor.objects.filter(executor_id=executor.exe_id).exists()


def test_delete_unknown_executor_is_204(api, agentserver_headers):
    assert api.delete("/api/codex-exec/executors/exe_nope", **agentserver_headers).status_code == 204


def test_delete_executor_database_down_is_503(api, agentserver_headers, database_down):
    assert api.delete("/api/codex-exec/executors/exe_x", **agentserver_headers).status_code == 503


# --- bind / list / unbind ------------------------------------------------------------------


def test_bind_list_unbind_round_trip(api, agentserver_headers, executor):
    body = {"exe_id": executor.exe_id, "name": "my-mac", "description": "Alice's laptop", "is_default": True}
    response = api.post(bindings_url("w1"), body, format="json", **agentserver_headers)
    assert response.status_code == 201
    assert response.json() == {"status": "ok"}

    listed = api.get(bindings_url("w1"), **agentserver_headers)
    assert listed.status_code == 200
    [entry] = listed.json()
    assert entry["exe_id"] == executor.exe_id
    assert entry["name"] == "my-mac"
    assert entry["description"] == "Alice's laptop"
    assert entry["is_default"] is True
    assert entry["is_online"] is False
    assert "last_seen_at" not in entry  # omitted while null, as the reference does

    assert api.delete(bindings_url("w1") + f"/{executor.exe_id}", **agentserver_headers).status_code == 204
    assert api.get(bindings_url("w1"), **agentserver_headers).json() == []
    # Unbinding again is still 204.
    assert api.delete(bindings_url("w1") + f"/{executor.exe_id}", **agentserver_headers).status_code == 204


def test_binding_collection_accepts_trailing_slash(api, agentserver_headers, executor):
    body = {"exe_id": executor.exe_id, "name": "n"}
    assert api.post(bindings_url("w1") + "/", body, format="json", **agentserver_headers).status_code == 201
    assert len(api.get(bindings_url("w1") + "/", **agentserver_headers).json()) == 1


def test_bind_is_an_upsert(api, agentserver_headers, executor):
    api.post(bindings_url("w1"), {"exe_id": executor.exe_id, "name": "a"}, format="json", **agentserver_headers)
    response = api.post(
        bindings_url("w1"),
        {"exe_id": executor.exe_id, "name": "b", "description": "d", "is_default": True},
        format="json",
        **agentserver_headers,
    )
    assert response.status_code == 201
    [binding] = WorkspaceExecutor.objects.filter(workspace_id="w1")
    assert (binding.name, binding.description, binding.is_default) == ("b", "d", True)


def test_bind_name_clash_in_workspace_is_409(api, agentserver_headers, executor):
    other = services.register_executor("user-1", "desktop").executor
    api.post(bindings_url("w1"), {"exe_id": executor.exe_id, "name": "box"}, format="json", **agentserver_headers)
    response = api.post(
        bindings_url("w1"), {"exe_id": other.exe_id, "name": "box"}, format="json", **agentserver_headers
    )
    assert response.status_code == 409
    assert response.json() == {"error": "bind failed (name may already be taken in this workspace)"}
    # The same name in another workspace is fine.
    response = api.post(
        bindings_url("w2"), {"exe_id": other.exe_id, "name": "box"}, format="json", **agentserver_headers
    )
    assert response.status_code == 201


def test_bind_unknown_executor_is_404(api, agentserver_headers):
    response = api.post(
        bindings_url("w1"), {"exe_id": "exe_missing", "name": "x"}, format="json", **agentserver_headers
    )
    assert response.status_code == 404
    assert response.json() == {"error": "executor not found"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"name": "x"}, "exe_id required"),
        ({"exe_id": "", "name": "x"}, "exe_id required"),
        ({"exe_id": "exe_1"}, "name required"),
        ({"exe_id": "exe_1", "name": "   "}, "name required"),
        ({"exe_id": "exe_1", "name": "a\nb"}, "name must not contain control characters"),
        ({"exe_id": "exe_1", "name": "x", "is_default": "maybe"}, "is_default"),
    ],
)
def test_bind_validation_errors_are_400(api, agentserver_headers, body, error):
    response = api.post(bindings_url("w1"), body, format="json", **agentserver_headers)
    assert response.status_code == 400
    assert response.json()["error"].startswith(error) or error in response.json()["error"]


def test_bind_bad_json_is_400(api, agentserver_headers):
    response = api.post(bindings_url("w1"), "{", content_type="application/json", **agentserver_headers)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid JSON"}


def test_binding_routes_database_down_are_503(api, agentserver_headers, database_down):
    body = {"exe_id": "exe_1", "name": "x"}
    assert api.post(bindings_url("w1"), body, format="json", **agentserver_headers).status_code == 503
    assert api.get(bindings_url("w1"), **agentserver_headers).status_code == 503
    assert api.delete(bindings_url("w1") + "/exe_1", **agentserver_headers).status_code == 503


def test_list_orders_by_binding_creation_and_marks_online(api, agentserver_headers):
    first = services.register_executor("u", "a").executor
    second = services.register_executor("u", "b").executor
    services.bind_executor("w1", second.exe_id, "second", "", False)
    services.bind_executor("w1", first.exe_id, "first", "", False)
    go_online(first.exe_id)
    listed = api.get(bindings_url("w1"), **agentserver_headers).json()
    assert [entry["name"] for entry in listed] == ["second", "first"]
    assert [entry["is_online"] for entry in listed] == [False, True]


# --- /api/exec-gateway/connected -----------------------------------------------------------


def test_connected_is_bound_and_online_only(api, shared_headers):
    online = services.register_executor("u", "on").executor
    offline = services.register_executor("u", "off").executor
    unbound_online = services.register_executor("u", "other").executor
    services.bind_executor("w1", online.exe_id, "on", "", True)
    services.bind_executor("w1", offline.exe_id, "off", "", False)
    services.bind_executor("w2", unbound_online.exe_id, "other", "", False)
    go_online(online.exe_id)
    go_online(unbound_online.exe_id)
    response = api.get("/api/exec-gateway/connected", {"workspace_id": "w1"}, **shared_headers)
    assert response.status_code == 200
    assert [(e["exe_id"], e["name"], e["is_default"]) for e in response.json()] == [(online.exe_id, "on", True)]


def test_connected_empty_is_an_empty_array(api, shared_headers):
    response = api.get("/api/exec-gateway/connected", {"workspace_id": "nobody"}, **shared_headers)
    assert response.status_code == 200
    assert response.content == b"[]"


def test_connected_requires_workspace_id(api, shared_headers):
    response = api.get("/api/exec-gateway/connected", **shared_headers)
    assert response.status_code == 400
    assert response.json() == {"error": "workspace_id required"}


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "bearer test-shared-secret", "Bearer wrong", "Basic test-shared-secret"],
)
def test_cluster_routes_refuse_bad_bearer(api, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    assert api.get("/api/exec-gateway/connected", {"workspace_id": "w"}, **headers).status_code == 401
    assert api.post("/api/exec-gateway/revoke-turn", {"turn_id": "t"}, format="json", **headers).status_code == 401


def test_cluster_routes_refuse_everything_when_secret_unset(api, settings):
    settings.CXG_INTERNAL_SHARED_SECRET = ""
    response = api.get("/api/exec-gateway/connected", {"workspace_id": "w"}, HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 503
    assert api.post("/api/exec-gateway/revoke-turn", {"turn_id": "t"}, format="json").status_code == 503


def test_connected_database_down_is_503(api, shared_headers, database_down):
    assert api.get("/api/exec-gateway/connected", {"workspace_id": "w1"}, **shared_headers).status_code == 503


# --- /api/exec-gateway/revoke-turn ---------------------------------------------------------


def test_revoke_turn_adds_to_the_shared_revoked_set(api, shared_headers):
    exp = int(time.time()) + 600
    response = api.post(
        "/api/exec-gateway/revoke-turn", {"turn_id": "trn_1", "exp": exp}, format="json", **shared_headers
    )
    assert response.status_code == 204
    assert response.content == b""
    assert revoked_set().contains("trn_1")


def test_revoke_turn_without_exp_defaults_to_an_hour(api, shared_headers, settings):
    from codexgw import redis as gwredis

    before = int(time.time())
    assert (
        api.post("/api/exec-gateway/revoke-turn", {"turn_id": "trn_2"}, format="json", **shared_headers).status_code
        == 204
    )
    client = gwredis.sync_client()
    assert client is not None
    score = client.zscore(gwredis.key("revoked"), "trn_2")
    assert score is not None
    assert before + 3600 <= score <= int(time.time()) + 3600


@pytest.mark.parametrize(
    ("body", "error"),
    [({}, "turn_id required"), ({"turn_id": ""}, "turn_id required"), ({"turn_id": "t", "exp": "soon"}, "exp")],
)
def test_revoke_turn_validation(api, shared_headers, body, error):
    response = api.post("/api/exec-gateway/revoke-turn", body, format="json", **shared_headers)
    assert response.status_code == 400
    assert error in response.json()["error"]


def test_revoke_turn_bad_json(api, shared_headers):
    response = api.post("/api/exec-gateway/revoke-turn", "nope", content_type="application/json", **shared_headers)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid JSON"}


def test_revoke_turn_redis_down_is_503(api, shared_headers, redis_down):
    response = api.post("/api/exec-gateway/revoke-turn", {"turn_id": "t"}, format="json", **shared_headers)
    assert response.status_code == 503
