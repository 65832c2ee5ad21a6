"""WebSocket facts of the gateway's server that every role shares (the server enforces them in
``manage.py serve``; the apps' own WebSocket clients use them too)."""

from __future__ import annotations

# Largest frame and message: exec-server's own limits (tungstenite defaults).
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Close codes a server may send (RFC 6455 §7.4.1; 1004-1006, 1010 and 1015 are not for the wire).
SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1010), *range(1011, 1015), *range(3000, 5000)})
