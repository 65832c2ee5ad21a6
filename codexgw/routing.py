"""WebSocket routes. The executor (/codex-exec/{id}) and bridge (/bridge/{id}) consumers and the
TUI proxy (/ and /codex-app/ws) are added by the bridge and appgateway apps."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
