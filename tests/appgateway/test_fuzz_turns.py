"""Fuzz corpus: ``POST /api/turns`` in built-in mode, in process with DRF's APIClient: any JSON
(or non-JSON) body, any Authorization / X-Internal-Secret header, any token. Never a 5xx, every
error ``{"error": "<message>"}``, and the documented order: auth (401 ``unauthorized`` or the
token's reason, 403 ``missing scope: turns:submit``), then the body (400), then the token's
workspace (403 ``token not authorized for workspace <id>``), then the workspace's existence (404
``no workspace <id>``). No generated request is valid for an existing workspace, so no app-server
is ever started (``broker.pool.run_turn`` is replaced by a tripwire). Fixed seed, bounded examples."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from hypothesis import example, given
from hypothesis import strategies as st
from rest_framework.test import APIClient

from appgateway import broker
from appgateway.codexhome import CodexHomeError, validate_workspace_id
from tests import fuzzing
from tests.fuzzing import count, fuzz, run
from workspaces import tokens
from workspaces.models import Membership, Role, Workspace

KIND = "REST body (/api/turns)"
EXISTING = "ws-a"

latin1 = fuzzing.latin1(60)
json_values = fuzzing.json_values(2**63, 10**1100)
workspace_ids = st.sampled_from(["ws-other", "ws-b", "", " ws-a", "ws-a ", "WS-A", "../ws-a", "ws-a\x00"]) | st.text(
    max_size=30
)
turn_bodies = st.fixed_dictionaries(
    {},
    optional={
        "workspaceId": workspace_ids.filter(lambda w: w != EXISTING) | json_values,
        "threadId": st.none() | st.text(max_size=20) | json_values,
        "params": st.fixed_dictionaries({}, optional={"input": json_values, "threadId": json_values}) | json_values,
        "timeoutMs": st.none()
        | st.integers()
        | st.integers(min_value=10**20, max_value=10**1100)
        | st.floats()
        | st.text(max_size=5),
    },
)


def well_formed_workspace(body: Any) -> str | None:
    """The workspace a body that passes validation names, else None."""
    if not isinstance(body, dict) or not isinstance(body.get("workspaceId"), str):
        return None
    try:
        return validate_workspace_id(body["workspaceId"])
    except CodexHomeError:
        return None


@pytest.fixture
def turns_env(transactional_db: None, settings: Any, monkeypatch: Any) -> dict[str, str]:
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"

    async def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a generated request would have started a turn: {args!r}")

    monkeypatch.setattr(broker.pool, "run_turn", tripwire)
    owner = get_user_model().objects.create_user("fuzz-turns", password="pw")
    workspace = Workspace.objects.create(id=EXISTING, name="A")
    Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    return {
        "good": tokens.mint(workspace, owner, scopes=["turns:submit"]).token,
        "no-scope": tokens.mint(workspace, owner, scopes=["tui", "sdk"]).token,
    }


def test_turns_answer_any_request_with_a_documented_error(turns_env):
    api = APIClient()

    @fuzz(450)
    @given(
        auth=st.sampled_from(["none", "good", "good", "good", "no-scope", "secret", "secret", "garbage", "bad-secret"]),
        garbage=latin1,
        body=turn_bodies | json_values,
        raw=st.none()
        | st.tuples(
            st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
            st.binary(max_size=200),
        ),
        method=st.sampled_from(["POST", "POST", "POST", "POST", "GET", "PUT"]),
    )
    @example(
        auth="good", garbage="", body={"workspaceId": "ws-other", "params": {"input": []}}, raw=None, method="POST"
    )
    @example(auth="secret", garbage="", body={"workspaceId": "ws-b", "params": {}}, raw=None, method="POST")
    @example(auth="good", garbage="", body={"workspaceId": "ws-a\x00", "params": {}}, raw=None, method="POST")
    @example(
        auth="good",
        garbage="",
        body={"workspaceId": "ws-b", "params": {}, "timeoutMs": 10**1000},
        raw=None,
        method="POST",
    )
    def turn(auth, garbage, body, raw, method):
        count(KIND)
        headers: dict[str, str] = {}
        if auth in ("good", "no-scope"):
            headers["Authorization"] = f"Bearer {turns_env[auth]}"
        elif auth == "secret":
            headers["X-Internal-Secret"] = django_settings.CXG_AGENTSERVER_INTERNAL_SECRET
        elif auth == "garbage":
            headers["Authorization"] = garbage
        elif auth == "bad-secret":
            headers["X-Internal-Secret"] = garbage
        workspace = well_formed_workspace(body) if raw is None else None
        if workspace == EXISTING and auth in ("good", "secret"):
            return  # would be a real turn (only reachable by chance: the strategies avoid it)
        if raw is not None:
            response = api.generic(method, "/api/turns", raw[1], content_type=raw[0], headers=headers)
        else:
            response = api.generic(
                method, "/api/turns", json.dumps(body), content_type="application/json", headers=headers
            )
        status = response.status_code
        assert status < 500, (status, response.content[:300])
        payload = response.json()
        assert set(payload) == {"error"}, payload
        assert isinstance(payload["error"], str)
        if method != "POST":
            assert (status, payload) == (405, {"error": f'Method "{method}" not allowed.'})
        elif auth in ("none", "bad-secret") or (auth == "garbage" and not garbage.startswith("Bearer ")):
            assert (status, payload) == (401, {"error": "unauthorized"})
        elif auth == "garbage":
            assert status == 401
        elif auth == "no-scope":
            assert (status, payload) == (403, {"error": "missing scope: turns:submit"})
        elif status not in (400, 415):
            # Authorised and a valid body: refused for its workspace only.
            assert workspace is not None
            if auth == "good":
                assert (status, payload) == (403, {"error": f"token not authorized for workspace {workspace}"})
            else:
                assert (status, payload) == (404, {"error": f"no workspace {workspace}"})

    run(KIND, turn, 450)
