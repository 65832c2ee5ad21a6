"""Facts about the running gateway process that only exist once it serves."""

from __future__ import annotations

from django.conf import settings

_served_at: str | None = None


def set_served_at(base_url: str) -> None:
    """Called by ``manage.py serve`` with the address it listens on."""
    global _served_at
    _served_at = base_url.rstrip("/")


def self_http_base_url() -> str:
    """How this process reaches its own HTTP/WebSocket routes (the SDK's bridge dials, relay
    tickets): ``CXG_SELF_HTTP_BASE_URL``, else the address ``serve`` listens on."""
    base = settings.CXG_SELF_HTTP_BASE_URL or _served_at
    if not base:
        raise RuntimeError("this process does not know its own address: set CXG_SELF_HTTP_BASE_URL")
    return base.rstrip("/")


def self_ws_base_url() -> str:
    base = self_http_base_url()
    return "ws" + base[len("http") :] if base.startswith("http") else base
