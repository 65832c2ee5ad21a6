"""Executor registration: what ``codex exec-server --remote`` POSTs before it opens its WebSocket.

Status codes decide what the real executor does next: it exits on any 4xx (so bad credentials
are 401) and retries 5xx on the WebSocket (so outages are 503, see ``codexgw.api_errors``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from urllib.parse import quote

from django.conf import settings
from django.http import HttpRequest

from executors import services, sigv4, wsticket
from executors.executor_command import public_ws_base_url

logger = logging.getLogger(__name__)

DIRECT_TRANSPORT = "direct_jsonrpc_v1"


def lower_headers(request: HttpRequest) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def raw_path_and_query(request: HttpRequest) -> tuple[str, str]:
    """The path and query exactly as the client sent them (SigV4 signs the raw form)."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        return raw_path.decode("latin-1"), scope.get("query_string", b"").decode("latin-1")
    return request.path, request.META.get("QUERY_STRING", "")


def executor_ws_url(request: HttpRequest, exe_id: str) -> str:
    return f"{public_ws_base_url(request)}/codex-exec/{quote(exe_id, safe='')}"


def verify_sigv4_request(request: HttpRequest, exe_id: str, headers: Mapping[str, str]) -> None:
    """Raise ``sigv4.SigV4Error`` unless the request is signed with this executor's token."""
    raw_path, raw_query = raw_path_and_query(request)
    sigv4.verify(
        method=request.method or "POST",
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        body=request.body,
        secret_for=services.registration_secret,
        expected_access_key_id=exe_id,
        max_skew=settings.CXG_SIGV4_MAX_SKEW,
    )


def new_registration_id() -> str:
    return f"reg_{uuid.uuid4().hex}"


def bearer_ws_url(request: HttpRequest, exe_id: str) -> str:
    ticket = wsticket.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, exe_id, settings.CXG_WS_TICKET_TTL)
    return f"{executor_ws_url(request, exe_id)}?ticket={quote(ticket, safe='')}"


def record(request: HttpRequest, exe_id: str, headers: dict[str, str]) -> None:
    services.record_registration(exe_id, services.client_meta(headers, request.META.get("REMOTE_ADDR", "")))
