"""Frames the gateway writes, made to fit what codex accepts: a frame codex would refuse or drop
the connection on (too large for a WebSocket frame, nested too deep) becomes the JSON-RPC error
the sender would have got, where there is a sender to tell."""

from __future__ import annotations

from typing import Any

from bridge import frame_json
from bridge.multiplexer import rpc_error
from bridge.protocol import INVALID_REQUEST, JSON, MAX_FRAME_BYTES

# exec-server 0.171.0 reads a frame nested 127 levels deep and refuses one of 128 (measured).
EXEC_SERVER_DEPTH = 127


def for_client(message: JSON) -> tuple[str | None, tuple[str, str] | None]:
    """``message`` as a frame for a client, and the (reason, detail) of a drop. Only a response can
    outgrow the executor's frame it came from (the client chose its id): one too large becomes an
    error. One nested too deep to write (only an executor gone wrong sends it) becomes an error too."""
    response = "id" in message and "method" not in message
    try:
        text = frame_json.encode(message)
    except ValueError:
        dropped = ("frame_nested_too_deep", "")
        if response:
            return frame_json.encode(rpc_error(message["id"], INVALID_REQUEST, "response nested too deep")), dropped
        return None, dropped
    size = _oversize(text)
    if not size:
        return text, None
    if response:
        text = frame_json.encode(_too_large(message["id"], "response", size))
        if not _oversize(text):
            return text, None
    return None, ("frame_too_large", f"{size} bytes")


def _oversize(text: str) -> int:
    """The UTF-8 size of ``text`` if it is over the WebSocket frame limit, else 0. codex and
    exec-server drop the connection on a larger frame (codex-wire A.9)."""
    if len(text) <= MAX_FRAME_BYTES // 4:
        return 0
    size = len(text) if text.isascii() else len(text.encode())
    return size if size > MAX_FRAME_BYTES else 0


def for_executor(message: JSON) -> tuple[str, JSON | None]:
    """``message`` as a frame for the executor, or the error that refuses it instead, as if by
    the executor: a client's request nested deeper than exec-server reads (its refusal has id
    -1, so the client would wait for ever) or than can be written, or one grown past the frame
    limit by the rewriting (id, handles), on which exec-server would drop the connection every
    client shares."""
    try:
        text = frame_json.encode(message)
    except ValueError:  # nested past what can be written
        text = ""
    if not text or frame_json.nested_deeper_than(EXEC_SERVER_DEPTH, text, message):
        return "", rpc_error(message.get("id"), INVALID_REQUEST, "request nested too deep")
    size = _oversize(text)
    return text, _too_large(message.get("id"), "request", size) if size else None


def _too_large(request_id: Any, what: str, size: int) -> JSON:
    return rpc_error(
        request_id,
        INVALID_REQUEST,
        f"{what} too large: {size} bytes, over the {MAX_FRAME_BYTES}-byte WebSocket frame limit",
    )
