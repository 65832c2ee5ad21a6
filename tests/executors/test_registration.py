"""Executor registration routes: SigV4 ``POST /cloud/environment/{id}/direct/register`` (codex
0.169.0 direct transport) and the bearer routes of older Codex builds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings as django_settings

from executors import services, wsticket
from executors.models import Executor
from tests.executors.test_sigv4 import sign

pytestmark = pytest.mark.django_db

REGISTER_BODY = b'{"transport":"direct_jsonrpc_v1"}'
REGISTRATION_ID = re.compile(r"^reg_[0-9a-f]{32}$")
CODEX_UA = "codex_cli_rs/0.169.0 (Linux 6.1; x86_64)"


@pytest.fixture
def new_executor() -> services.NewExecutor:
    return services.register_executor("user-1", "laptop")


def direct_path(exe_id: str) -> str:
    return f"/cloud/environment/{exe_id}/direct/register"


def post_signed(
    api: Any,
    exe_id: str,
    secret: str,
    *,
    body: bytes = REGISTER_BODY,
    access_key_id: str | None = None,
    query: str = "",
    at: datetime | None = None,
    extra_headers: dict[str, str] | None = None,
    signed_body: bytes | None = None,
) -> Any:
    """POST the registration as codex does: Content-Type, Host and X-Amz-Date signed."""
    path = direct_path(exe_id)
    signed = sign(
        method="POST",
        path=path,
        query=query,
        headers={"content-type": "application/json", "host": "testserver"},
        body=body if signed_body is None else signed_body,
        access_key_id=access_key_id or exe_id,
        secret=secret,
        at=at or datetime.now(UTC),
    )
    headers = {name: value for name, value in signed.items() if name != "content-type"}
    headers.update(extra_headers or {})
    return api.post(
        f"{path}?{query}" if query else path, data=body, content_type=signed["content-type"], headers=headers
    )


def refreshed(exe_id: str) -> Executor:
    return Executor.objects.get(exe_id=exe_id)


# --- SigV4 direct registration ---------------------------------------------------------------


def test_direct_register_returns_the_executor_websocket(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"environment_id", "transport", "registration_id", "url"}
    assert body["environment_id"] == exe_id
    assert body["transport"] == "direct_jsonrpc_v1"
    assert REGISTRATION_ID.match(body["registration_id"])
    assert body["url"] == f"ws://testserver/codex-exec/{exe_id}"
    assert new_executor.registration_token not in response.content.decode()


def test_direct_register_issues_a_fresh_registration_id_each_time(api, new_executor):
    exe_id = new_executor.executor.exe_id
    ids = {post_signed(api, exe_id, new_executor.registration_token).json()["registration_id"] for _ in range(3)}
    assert len(ids) == 3


def test_direct_register_accepts_an_empty_body_and_a_signed_query(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token, body=b"", query="a=b%2Fc&d=e+f")
    assert response.status_code == 200, response.content
    assert response.json()["transport"] == "direct_jsonrpc_v1"


def test_direct_register_public_ws_base_url_overrides_host(api, new_executor, settings):
    settings.CXG_PUBLIC_WS_BASE_URL = "wss://exec.example.com/gw/"
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token)
    assert response.status_code == 200
    assert response.json()["url"] == f"wss://exec.example.com/gw/codex-exec/{exe_id}"


def test_direct_register_behind_tls_proxy_returns_wss(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token, extra_headers={"x-forwarded-proto": "https"})
    assert response.status_code == 200
    assert response.json()["url"] == f"wss://testserver/codex-exec/{exe_id}"


def test_direct_register_records_client_metadata(api, new_executor):
    exe_id = new_executor.executor.exe_id
    assert refreshed(exe_id).last_seen_at is None
    before = datetime.now(UTC)
    response = post_signed(
        api,
        exe_id,
        new_executor.registration_token,
        extra_headers={"x-forwarded-for": "203.0.113.7, 10.0.0.1", "user-agent": CODEX_UA},
    )
    assert response.status_code == 200
    row = refreshed(exe_id)
    assert row.last_seen_at is not None
    assert before - timedelta(seconds=1) <= row.last_seen_at <= datetime.now(UTC)
    assert row.client_ip == "203.0.113.7"
    assert row.client_ua == CODEX_UA
    assert row.codex_version == "0.169.0"
    assert row.client_os == "Linux 6.1; x86_64"


def test_direct_register_without_proxy_headers_records_peer_and_no_version(api, new_executor):
    """The real codex 0.169.0 sends no User-Agent: the peer address is recorded, version stays empty."""
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token, extra_headers={"x-real-ip": "198.51.100.4"})
    assert response.status_code == 200
    row = refreshed(exe_id)
    assert row.last_seen_at is not None
    assert row.client_ip == "198.51.100.4"
    assert (row.client_ua, row.codex_version, row.client_os) == ("", "", "")

    response = post_signed(api, exe_id, new_executor.registration_token)
    assert response.status_code == 200
    assert refreshed(exe_id).client_ip == "127.0.0.1"


def test_direct_register_wrong_secret_is_401_and_not_recorded(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token + "0", extra_headers={"user-agent": CODEX_UA})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    row = refreshed(exe_id)
    assert row.last_seen_at is None
    assert row.client_ua == ""


def test_direct_register_another_executors_credentials_are_401(api, new_executor):
    other = services.register_executor("user-2", "other")
    exe_id = new_executor.executor.exe_id
    # Signed correctly with the other executor's id and token, sent to this executor's path.
    response = post_signed(api, exe_id, other.registration_token, access_key_id=other.executor.exe_id)
    assert response.status_code == 401
    # The other executor's token under this executor's id.
    response = post_signed(api, exe_id, other.registration_token)
    assert response.status_code == 401
    assert refreshed(exe_id).last_seen_at is None
    assert refreshed(other.executor.exe_id).last_seen_at is None


def test_direct_register_unknown_executor_is_401(api):
    response = post_signed(api, "exe_00000000-0000-0000-0000-000000000000", "any-secret")
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


def test_direct_register_unsigned_is_401(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = api.post(direct_path(exe_id), data=REGISTER_BODY, content_type="application/json")
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    response = api.post(
        direct_path(exe_id),
        data=REGISTER_BODY,
        content_type="application/json",
        headers={"authorization": f"Bearer {new_executor.registration_token}"},
    )
    assert response.status_code == 401
    assert refreshed(exe_id).last_seen_at is None


def test_direct_register_stale_signature_is_401(api, new_executor, settings):
    exe_id = new_executor.executor.exe_id
    stale = datetime.now(UTC) - timedelta(seconds=settings.CXG_SIGV4_MAX_SKEW + 60)
    response = post_signed(api, exe_id, new_executor.registration_token, at=stale)
    assert response.status_code == 401
    assert refreshed(exe_id).last_seen_at is None


def test_direct_register_tampered_body_is_401(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(
        api,
        exe_id,
        new_executor.registration_token,
        body=b'{"transport":"direct_jsonrpc_v1", "x": 1}',
        signed_body=REGISTER_BODY,
    )
    assert response.status_code == 401


@pytest.mark.parametrize("body", [b'{"transport":"noise"}', b'{"transport":null}', b"[]", b'"direct_jsonrpc_v1"'])
def test_direct_register_unsupported_transport_is_400(api, new_executor, body):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token, body=body)
    assert response.status_code == 400
    assert "unsupported transport" in response.json()["error"]
    assert "direct_jsonrpc_v1" in response.json()["error"]
    assert refreshed(exe_id).last_seen_at is None


def test_direct_register_invalid_json_is_400(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, new_executor.registration_token, body=b'{"transport":')
    assert response.status_code == 400
    assert response.json() == {"error": "invalid JSON"}
    assert refreshed(exe_id).last_seen_at is None


def test_direct_register_checks_the_signature_before_parsing(api, new_executor):
    exe_id = new_executor.executor.exe_id
    response = post_signed(api, exe_id, "wrong-secret", body=b"{not json")
    assert response.status_code == 401


def test_direct_register_database_down_is_503(api, database_down):
    response = post_signed(api, "exe_00000000-0000-0000-0000-000000000001", "some-secret")
    assert response.status_code == 503
    assert "retry" in response.json()["error"]


# --- bearer registration (older Codex builds) ------------------------------------------------

BEARER_ROUTES = ["/cloud/executor/{}/register", "/cloud/environment/{}/register"]


@pytest.mark.parametrize("route", BEARER_ROUTES)
def test_bearer_register_returns_a_ticketed_url(api, new_executor, route):
    exe_id = new_executor.executor.exe_id
    token = new_executor.registration_token
    response = api.post(
        route.format(exe_id),
        headers={"authorization": f"Bearer {token}", "x-forwarded-for": "192.0.2.10", "user-agent": CODEX_UA},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"id", "executor_id", "environment_id", "url"}
    assert body["id"] == body["executor_id"] == body["environment_id"] == exe_id
    url = urlsplit(body["url"])
    assert (url.scheme, url.netloc, url.path) == ("ws", "testserver", f"/codex-exec/{exe_id}")
    query = parse_qs(url.query)
    assert list(query) == ["ticket"]
    (ticket,) = query["ticket"]
    assert wsticket.verify(django_settings.CXG_CAPTOKEN_HMAC_SECRET, ticket, exe_id)
    assert not wsticket.verify(django_settings.CXG_CAPTOKEN_HMAC_SECRET, ticket, "exe_other")
    assert token not in body["url"]
    assert token not in response.content.decode()
    row = refreshed(exe_id)
    assert row.last_seen_at is not None
    assert (row.client_ip, row.codex_version) == ("192.0.2.10", "0.169.0")


def test_bearer_ticket_expires_with_the_configured_ttl(api, new_executor, settings):
    settings.CXG_WS_TICKET_TTL = 30.0
    exe_id = new_executor.executor.exe_id
    response = api.post(
        BEARER_ROUTES[0].format(exe_id), headers={"authorization": f"Bearer {new_executor.registration_token}"}
    )
    (ticket,) = parse_qs(urlsplit(response.json()["url"]).query)["ticket"]
    secret = django_settings.CXG_CAPTOKEN_HMAC_SECRET
    now = datetime.now(UTC).timestamp()
    assert wsticket.verify(secret, ticket, exe_id, now=now + 25)
    assert not wsticket.verify(secret, ticket, exe_id, now=now + 35)


def test_bearer_register_behind_tls_proxy_and_public_base(api, new_executor, settings):
    exe_id = new_executor.executor.exe_id
    headers = {
        "authorization": f"Bearer {new_executor.registration_token}",
        "host": "testserver",
        "x-forwarded-proto": "https",
    }
    url = api.post(BEARER_ROUTES[1].format(exe_id), headers=headers).json()["url"]
    assert url.startswith(f"wss://testserver/codex-exec/{exe_id}?ticket=")
    settings.CXG_PUBLIC_WS_BASE_URL = "wss://exec.example.com"
    url = api.post(BEARER_ROUTES[1].format(exe_id), headers=headers).json()["url"]
    assert url.startswith(f"wss://exec.example.com/codex-exec/{exe_id}?ticket=")


@pytest.mark.parametrize("route", BEARER_ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer ",
        "Bearer",
        "bearer {token}",
        "BEARER {token}",
        "Basic {token}",
        "{token}",
        "Bearer wrong-token",
    ],
)
def test_bearer_register_refuses_missing_or_wrong_token(api, new_executor, route, authorization):
    exe_id = new_executor.executor.exe_id
    headers = (
        {} if authorization is None else {"authorization": authorization.format(token=new_executor.registration_token)}
    )
    response = api.post(route.format(exe_id), headers=headers)
    assert response.status_code == 401
    assert "error" in response.json()
    assert refreshed(exe_id).last_seen_at is None


@pytest.mark.parametrize("route", BEARER_ROUTES)
def test_bearer_register_another_executors_token_is_401(api, new_executor, route):
    other = services.register_executor("user-1", "other")
    response = api.post(
        route.format(new_executor.executor.exe_id), headers={"authorization": f"Bearer {other.registration_token}"}
    )
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


@pytest.mark.parametrize("route", BEARER_ROUTES)
def test_bearer_register_unknown_executor_is_401(api, new_executor, route):
    response = api.post(
        route.format("exe_00000000-0000-0000-0000-000000000000"),
        headers={"authorization": f"Bearer {new_executor.registration_token}"},
    )
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


def test_bearer_register_without_ticket_secret_is_503(api, new_executor, settings):
    settings.CXG_CAPTOKEN_HMAC_SECRET = ""
    exe_id = new_executor.executor.exe_id
    response = api.post(
        BEARER_ROUTES[0].format(exe_id), headers={"authorization": f"Bearer {new_executor.registration_token}"}
    )
    assert response.status_code == 503
    assert "not configured" in response.json()["error"]
    assert refreshed(exe_id).last_seen_at is None


@pytest.mark.parametrize("route", BEARER_ROUTES)
def test_bearer_register_database_down_is_503(api, database_down, route):
    response = api.post(
        route.format("exe_00000000-0000-0000-0000-000000000001"), headers={"authorization": "Bearer some-token"}
    )
    assert response.status_code == 503
    assert "retry" in response.json()["error"]
