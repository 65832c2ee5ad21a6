from typing import Any

from django.urls import re_path

from appgateway.consumers import TuiProxyConsumer

# Channels' URLRouter takes ASGI apps where Django's stubs expect views.
tui_app: Any = TuiProxyConsumer.as_asgi()

websocket_urlpatterns = [
    # Exactly "/": `codex --remote ws://host:port` cannot send a path. Anchored, so it shadows no
    # other WebSocket route.
    re_path(r"^$", tui_app),
    re_path(r"^codex-app/ws/?$", tui_app),
]
