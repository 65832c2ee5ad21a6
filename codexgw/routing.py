"""WebSocket routes of the roles this process serves."""

from __future__ import annotations

from typing import Any

from django.conf import settings

websocket_urlpatterns: list[Any] = []
if "exec" in settings.CODEXGW_ROLES:
    from bridge.routing import websocket_urlpatterns as exec_routes

    websocket_urlpatterns += exec_routes
if "app" in settings.CODEXGW_ROLES:
    from appgateway.routing import websocket_urlpatterns as app_routes

    websocket_urlpatterns += app_routes
