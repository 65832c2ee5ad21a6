"""Short-lived HMAC tickets for the executor WebSocket URL handed out by the bearer
registration routes (older Codex builds), so the registration token never appears in a URL.

``ticket = exe_id "." expiry_unix "." b64url(HMAC-SHA256(key, exe_id "." expiry_unix))``. The key is
derived from ``CXG_CAPTOKEN_HMAC_SECRET`` with a label, so a ticket can never pass as a
capability token or the reverse.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from executors import b64

_LABEL = b"codexgw executor websocket ticket\x00"


def _mac(secret: str, message: str) -> bytes:
    key = hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def mint(secret: str, exe_id: str, ttl: float, *, now: float | None = None) -> str:
    if not secret:
        raise ValueError("ticket secret is empty")
    expiry = int((time.time() if now is None else now) + ttl)
    message = f"{exe_id}.{expiry}"
    return f"{message}.{b64.encode(_mac(secret, message))}"


def verify(secret: str, ticket: str, exe_id: str, *, now: float | None = None) -> bool:
    """True when the ticket was minted for this executor and has not expired."""
    if not secret:
        return False
    parts = ticket.rsplit(".", 2)
    if len(parts) != 3 or parts[0] != exe_id or not parts[1].isdigit():
        return False
    try:
        mac = b64.decode(parts[2])
    except ValueError:
        return False
    if not hmac.compare_digest(mac, _mac(secret, f"{parts[0]}.{parts[1]}")):
        return False
    return (time.time() if now is None else now) < int(parts[1])
