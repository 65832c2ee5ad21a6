from typing import Any

from django.urls import re_path

from bridge.consumers import BridgeConsumer, ExecutorConsumer

# Channels' URLRouter takes ASGI apps where Django's stubs expect views.
executor_app: Any = ExecutorConsumer.as_asgi()
bridge_app: Any = BridgeConsumer.as_asgi()

websocket_urlpatterns = [
    re_path(r"^codex-exec/(?P<exe_id>[^/]+)/?$", executor_app),
    re_path(r"^bridge/(?P<exe_id>[^/]+)/?$", bridge_app),
]
