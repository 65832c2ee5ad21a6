"""What the ASGI application (``codexgw/asgi.py``) serves besides Django's views, added by the
apps in their ``AppConfig.ready()`` for the roles this process serves:

- WebSocket routes (``add_websocket_routes``), behind the drain's upgrade refusal;
- raw ASGI apps for HTTP paths under a prefix (``add_http_app``), in front of Django: Django's
  handler reads a whole request body before it calls a view and cannot abort a streaming
  response, which the byte relay and the model proxy need.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from codexgw.raw_asgi import ASGIApp, Receive, Scope, Send

# Channels' URLRouter takes the apps' re_path() patterns.
websocket_urlpatterns: list[Any] = []
_http_apps: list[tuple[str, ASGIApp]] = []


def add_websocket_routes(routes: Iterable[Any]) -> None:
    websocket_urlpatterns.extend(routes)


def add_http_app(prefix: str, app: ASGIApp) -> None:
    """Answer HTTP requests whose path starts with ``prefix`` with ``app`` instead of Django."""
    _http_apps.append((prefix, app))


def with_http_apps(django_app: ASGIApp) -> ASGIApp:
    """``django_app`` with the registered prefixes answered by their apps."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for prefix, app in _http_apps:
                if scope["path"].startswith(prefix):
                    await app(scope, receive, send)
                    return
        await django_app(scope, receive, send)

    return route
