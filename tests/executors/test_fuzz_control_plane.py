"""Fuzz corpus: REST bodies, headers and path parameters of the control plane
(``/api/codex-exec/*``, ``/api/exec-gateway/*`` including ``relay/create``, and the executor
registration routes), in process with DRF's APIClient on the real database and Redis.

Whatever is sent, the answer is never a 5xx (docs/api.md: 503 only for an outage, and there is
none here), every error is ``{"error": "<message>"}``, a request without the route's secret is
401 ``unauthorized``, and the status is one of the documented ones. Fixed seed, bounded examples."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.conf import settings as django_settings
from hypothesis import example, given
from hypothesis import strategies as st

from executors import captoken, services
from tests import fuzzing
from tests.fuzzing import count, fuzz, run

KIND = "REST body (control plane)"
DOCUMENTED = {200, 201, 204, 400, 401, 403, 404, 405, 409, 415, 429}

latin1 = fuzzing.latin1(40)
path_params = fuzzing.path_params
scalars = fuzzing.scalars(10**15, 10**1200)
json_values = fuzzing.json_values(10**15, 10**1200)
FIELDS = [
    "display_name",
    "exe_id",
    "name",
    "description",
    "is_default",
    "turn_id",
    "exp",
    "workspace_id",
    "source_exe_id",
    "dest_exe_id",
    "ttl_seconds",
    "max_bytes",
    "transport",
]
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), scalars | st.sampled_from(["exe-1", "ws-1", "\x00", " "]), max_size=6),
    json_values,
)
ROUTES = [
    ("POST", "/api/codex-exec/register"),
    ("DELETE", "/api/codex-exec/executors/{exe}"),
    ("POST", "/api/codex-exec/workspaces/{ws}/executors"),
    ("GET", "/api/codex-exec/workspaces/{ws}/executors/"),
    ("DELETE", "/api/codex-exec/workspaces/{ws}/executors/{exe}"),
    ("GET", "/api/exec-gateway/connected"),
    ("POST", "/api/exec-gateway/revoke-turn"),
    ("POST", "/api/exec-gateway/relay/create"),
    ("POST", "/cloud/environment/{exe}/direct/register"),
    ("POST", "/cloud/environment/{exe}/register"),
    ("POST", "/cloud/executor/{exe}/register"),
]


# Autocommit, as in production: a refused write must not poison a test-wide transaction.
@pytest.fixture
def plane(transactional_db: None, settings: Any) -> dict[str, str]:
    settings.CXG_PUBLIC_HTTPS_BASE_URL = "https://gw.example.test/"  # the relay is enabled
    created = services.register_executor("user-1", "laptop")
    exe_id = created.executor.exe_id
    services.bind_executor("ws-1", exe_id, "laptop", "", True)
    token = captoken.mint(django_settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="t-1", workspace_id="ws-1", ttl=600)
    return {"exe": exe_id, "registration": created.registration_token, "captoken": token}


def found(route: tuple[str, str], **fields: Any) -> Any:
    """An input that once failed, run first on every run: ``route`` with ``fields`` over a
    plain request (method of the route, executor ``e`` in workspace ``w``, the right token)."""
    plain: dict[str, Any] = {"method": "", "exe": "e", "ws": "w", "auth": "right", "wrong": "", "user_id": None}
    return example(route=route, **{**plain, "body": {}, "raw": None, "query": {}, **fields})


def test_control_plane_answers_any_request_without_a_5xx(api, plane):
    good = {
        "agentserver": django_settings.CXG_AGENTSERVER_INTERNAL_SECRET,
        "shared": django_settings.CXG_INTERNAL_SHARED_SECRET,
    }

    @fuzz(900)
    @given(
        route=st.sampled_from(ROUTES),
        method=st.sampled_from(["", "", "", "GET", "POST", "PUT", "PATCH", "DELETE"]),
        exe=st.sampled_from([plane["exe"], "exe-unknown"]) | path_params,
        ws=st.sampled_from(["ws-1", "ws-2"]) | path_params,
        auth=st.sampled_from(["none", "right", "right", "right", "wrong", "captoken", "registration"]),
        wrong=latin1,
        user_id=st.none() | latin1,
        body=bodies,
        raw=st.none()
        | st.tuples(
            st.sampled_from(
                [
                    "application/json",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                ]
            ),
            st.binary(max_size=200),
        ),
        query=st.dictionaries(st.sampled_from(["workspace_id", "x"]), latin1, max_size=2),
    )
    @found(ROUTES[3], ws="\x00")
    @found(ROUTES[0], user_id="\x00")
    @found(ROUTES[5], query={"workspace_id": "\x00"})
    @found(ROUTES[6], body={"turn_id": "t", "exp": 10**400})
    @found(ROUTES[9], exe="exe-unknown", ws="ws-1", auth="captoken")  # a Bearer over 72 bytes made bcrypt raise (500)
    @found(ROUTES[10], exe="\x00")
    @found(ROUTES[8], exe="\x00")
    def request(route, method, exe, ws, auth, wrong, user_id, body, raw, query):
        count(KIND)
        verb, template = route
        verb = method or verb
        path = template.format(exe=quote(exe, safe=""), ws=quote(ws, safe=""))
        if query:
            path += "?" + urlencode(query)
        codex_exec = template.startswith("/api/codex-exec/")
        cloud = template.startswith("/cloud/")
        headers: dict[str, str] = {}
        if auth == "right":
            if codex_exec:
                headers["X-Internal-Secret"] = good["agentserver"]
            elif cloud:
                headers["Authorization"] = f"Bearer {plane['registration']}"
            else:
                headers["Authorization"] = f"Bearer {good['shared']}"
        elif auth == "wrong":
            headers["X-Internal-Secret" if codex_exec else "Authorization"] = wrong
        elif auth == "captoken":
            headers["Authorization"] = f"Bearer {plane['captoken']}"
        elif auth == "registration":
            headers["Authorization"] = f"Bearer {plane['registration']}"
        if user_id is not None:
            headers["X-User-Id"] = user_id
        if raw is not None:
            response = api.generic(verb, path, raw[1], content_type=raw[0], headers=headers)
        else:
            response = api.generic(verb, path, json.dumps(body), content_type="application/json", headers=headers)
        status = response.status_code
        assert status < 500, (status, response.content[:300])
        assert status in DOCUMENTED, (status, response.content[:300])
        if status >= 400:
            payload = response.json()
            assert set(payload) == {"error"}
            assert isinstance(payload["error"], str)
            assert payload["error"]
        internal = codex_exec or template.startswith("/api/exec-gateway/")
        if internal and (auth == "none" or (auth == "wrong" and wrong != good["shared"])):
            assert status == 401  # without the route's secret: nothing else is looked at

    run(KIND, request, 900)
