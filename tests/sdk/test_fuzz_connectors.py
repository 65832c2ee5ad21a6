"""Fuzz corpus: ``/api/connectors/*`` and ``/api/sdk/*`` in built-in mode, in process with DRF's
APIClient: any route, path parameter, JSON (or non-JSON) body and Authorization header. Never a
5xx, every error in the SDK envelope ``{"error": {"code", "message"}}``, a bad token 401
``invalid_token`` (or ``missing_bearer``), a token without the ``sdk`` scope 403 ``forbidden``.
The workspace has no executor, so no tool reaches one. Fixed seed, bounded examples."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from hypothesis import example, given
from hypothesis import strategies as st
from rest_framework.test import APIClient

from sdk.tools import _TOOLS
from tests import fuzzing
from tests.fuzzing import count, fuzz, run
from workspaces import tokens
from workspaces.models import Membership, Role, Workspace

KIND = "REST body (/api/connectors)"
DOCUMENTED = {200, 400, 401, 403, 404, 405, 410, 415}

latin1 = fuzzing.latin1(60)
path_params = fuzzing.path_params
scalars = fuzzing.scalars(2**63, 10**1100)
json_values = fuzzing.json_values(2**63, 10**1100)
ARGUMENT_KEYS = [
    "environment_id",
    "session_id",
    "cmd",
    "path",
    "data_b64",
    "chars",
    "patch",
    "source",
    "dest",
    "yield_time_ms",
]
tool_bodies = st.fixed_dictionaries(
    {},
    optional={
        "tool": st.sampled_from(sorted(_TOOLS)) | st.text(max_size=15) | json_values,
        "arguments": st.dictionaries(st.sampled_from(ARGUMENT_KEYS), scalars, max_size=4) | json_values,
        "data_b64": st.text(max_size=20) | scalars,
        "since": scalars,
    },
)
ROUTES = [
    ("POST", "envs/list"),
    ("POST", "envs/{name}/tool/call"),
    ("POST", "processes/{sid}/stdin"),
    ("GET", "processes/{sid}/output"),
    ("POST", "processes/{sid}/terminate"),
]


@pytest.fixture
def sdk_env(transactional_db: None, settings: Any) -> dict[str, str]:
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    # Where this process's tools would dial its own bridge (manage.py serve sets it): nothing
    # listens there, and the workspace has no executor to reach anyway.
    settings.CXG_SELF_HTTP_BASE_URL = "http://127.0.0.1:1"
    owner = get_user_model().objects.create_user("fuzz-sdk", password="pw")
    workspace = Workspace.objects.create(id="ws-sdk", name="S")
    Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    return {
        "good": tokens.mint(workspace, owner, scopes=["sdk"]).token,
        "no-scope": tokens.mint(workspace, owner, scopes=["tui", "turns:submit"]).token,
    }


def found(route: tuple[str, str], **fields: Any) -> Any:
    """An input that once failed, run first on every run: ``route`` with ``fields`` over a
    plain request (the route's method, environment ``n``, session ``s``, a good token)."""
    plain: dict[str, Any] = {"prefix": "/api/connectors/", "method": "", "name": "n", "sid": "s", "since": None}
    return example(route=route, **{**plain, "auth": "good", "garbage": "", "body": {}, "raw": None, **fields})


def test_connectors_answer_any_request_in_the_sdk_envelope(sdk_env):
    api = APIClient()

    @fuzz(450)
    @given(
        prefix=st.sampled_from(["/api/connectors/", "/api/sdk/"]),
        route=st.sampled_from(ROUTES),
        method=st.sampled_from(["", "", "", "", "GET", "PUT", "DELETE"]),
        name=st.sampled_from(["laptop", "default"]) | path_params,
        sid=path_params,
        since=st.none() | latin1,
        auth=st.sampled_from(["good", "good", "good", "no-scope", "none", "garbage", "shaped"]),
        garbage=latin1,
        body=tool_bodies | json_values,
        raw=st.none()
        | st.tuples(
            st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
            st.binary(max_size=200),
        ),
    )
    @found(ROUTES[2], sid="\x00")
    @found(ROUTES[3], since="9" * 5000)
    @found(ROUTES[1], name="laptop", body={"tool": "write_stdin", "arguments": {"session_id": "\x00", "chars": "x"}})
    def request(prefix, route, method, name, sid, since, auth, garbage, body, raw):
        count(KIND)
        verb, template = route
        verb = method or verb
        path = prefix + template.format(name=quote(name, safe=""), sid=quote(sid, safe=""))
        if since is not None:
            path += "?since=" + quote(since, safe="")
        headers: dict[str, str] = {}
        if auth in ("good", "no-scope"):
            headers["Authorization"] = f"Bearer {sdk_env[auth]}"
        elif auth == "garbage":
            headers["Authorization"] = garbage
        elif auth == "shaped":
            headers["Authorization"] = "Bearer cxgt_AAAAAAAA_" + "A" * 43
        if raw is not None:
            response = api.generic(verb, path, raw[1], content_type=raw[0], headers=headers)
        else:
            response = api.generic(verb, path, json.dumps(body), content_type="application/json", headers=headers)
        status = response.status_code
        assert status < 500, (status, response.content[:300])
        assert status in DOCUMENTED, (status, response.content[:300])
        payload = response.json()
        if status >= 400:
            assert set(payload) == {"error"}, payload
            assert set(payload["error"]) == {"code", "message"}, payload
            assert isinstance(payload["error"]["code"], str)
            assert isinstance(payload["error"]["message"], str)
        if auth == "none" or (auth == "garbage" and not garbage.startswith("Bearer ")):
            assert status == 401
            assert payload["error"]["code"] in ("missing_bearer", "invalid_token")
        elif auth in ("garbage", "shaped"):
            assert status == 401
            assert payload["error"]["code"] == "invalid_token"
        elif auth == "no-scope":
            assert (status, payload["error"]["code"]) == (403, "forbidden")

    run(KIND, request, 450)
