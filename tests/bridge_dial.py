"""Dialling the gateway's ``/bridge/{exe_id}`` WebSocket with ``bridge.client`` (the gateway itself
reaches its bridge in process, ``bridge.inproc.connect``): ``Pool(websocket_connector(url), ...)``."""

from __future__ import annotations

import contextlib
import json

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from bridge.client import BridgeDialError, Connector
from bridge.protocol import MAX_MESSAGE_BYTES

# Keepalive: a dead gateway is noticed within a minute, and idle middleboxes see traffic.
PING_INTERVAL = 20.0
PING_TIMEOUT = 30.0


def _refusal_message(refused: InvalidStatus) -> str:
    response = refused.response
    text = response.body.decode(errors="replace").strip() if response.body else ""
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
    return f"{text or response.reason_phrase} (HTTP {response.status_code})"


def websocket_connector(ws_base_url: str) -> Connector:
    """Dials ``<ws_base_url>/bridge/<exe_id>``. Never offers permessage-deflate: exec-server drops
    connections that negotiate it, and the gateway relays frames verbatim."""
    base = ws_base_url.rstrip("/")

    async def connect_bridge(exe_id: str, token: str, open_timeout: float) -> ClientConnection:
        try:
            return await connect(
                f"{base}/bridge/{exe_id}",
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                open_timeout=open_timeout,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
            )
        except InvalidStatus as refused:
            raise BridgeDialError(_refusal_message(refused), refused.response.status_code) from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise BridgeDialError(f"cannot connect to the gateway: {error or type(error).__name__}") from None

    return connect_bridge
