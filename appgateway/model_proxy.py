"""``/api/model-proxy/v1/…``: the app-servers' model provider, with the current upstream token.

A spawned codex calls ``{self base}/api/model-proxy/v1/responses`` with its workspace's proxy
credential as the Bearer (``appgateway.model_credentials``). The proxy maps it back to the
workspace (unknown → 401), replaces ``Authorization`` with the workspace's current upstream token
and forwards method, path under ``/v1``, query, body and end-to-end headers to
``CXG_MODEL_PROVIDER_BASE_URL``, streaming the answer back chunk by chunk (SSE is never
buffered). A client that goes away cancels the upstream request.

A raw ASGI app in front of Django (``model_proxy_app``, added for the app role in
``appgateway/apps.py``), like the relay: Django's handler would put its middleware around a
streaming body and could not abort an upstream failure mid-body. The request body is small JSON
and is read whole; each response chunk is sent as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from django.conf import settings

from appgateway import model_credentials
from codexgw.bearer import bearer_token
from codexgw.model_key import model_key_problem
from codexgw.raw_asgi import Receive, Scope, Send, header, send_json

logger = logging.getLogger(__name__)

# Connect and write are bounded; reading is not: a model may think for minutes between events,
# and codex's own stream idle timeout ends a stalled stream (by disconnecting, which cancels ours).
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=10.0)
# RFC 9110 §7.6.1 hop-by-hop headers, plus what the proxy sets itself.
_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"authorization",
        b"content-length",
    }
)


def _forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    connection = [value for key, value in headers if key.lower() == b"connection"]
    named = {name.strip().lower() for value in connection for name in value.split(b",")}
    return [(key, value) for key, value in headers if key.lower() not in _DROPPED and key.lower() not in named]


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(parts)


async def model_proxy_app(scope: Scope, receive: Receive, send: Send) -> None:
    prefix = model_credentials.PROXY_BASE_PATH
    path = scope["path"]
    # No dot segments: the upstream URL library would resolve them to paths outside /v1.
    if not (path == prefix or path.startswith(prefix + "/")) or {".", ".."} & set(path.split("/")):
        await send_json(send, 404, {"error": "not found"})
        return
    credential = bearer_token(header(scope, b"authorization"))
    workspace_id = model_credentials.workspace_for_credential(credential) if credential else None
    if workspace_id is None:
        await send_json(send, 401, {"error": "unauthorized"})
        return
    body = await _read_body(receive)
    if body is None:
        return
    upstream_token = await model_credentials.current_token(workspace_id)
    problem = None if upstream_token else model_key_problem()
    if problem is not None:
        # OpenAI's error shape: codex shows the message in the TUI and in a turn's error.
        logger.warning("model call refused: %s", problem, extra={"workspace_id": workspace_id})
        await send_json(
            send, 401, {"error": {"message": problem, "type": "invalid_request_error", "code": "no_api_key"}}
        )
        return
    url = settings.CXG_MODEL_PROVIDER_BASE_URL.rstrip("/") + path[len(prefix) :]
    if scope.get("query_string"):
        url += "?" + bytes(scope["query_string"]).decode("latin-1")
    headers = _forwarded(list(scope["headers"]))
    if header(scope, b"accept-encoding") is None:
        # Else httpx asks for gzip, and the raw bytes would reach a client that did not.
        headers.append((b"accept-encoding", b"identity"))
    if upstream_token:
        headers.append((b"authorization", f"Bearer {upstream_token}".encode("latin-1")))
    forward = asyncio.create_task(_forward(scope["method"], url, headers, body, send, workspace_id))
    # The request body is read, so the next receive() only ever reports the client leaving.
    gone = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({forward, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not forward.done():
            forward.cancel()  # closes the upstream stream
        with contextlib.suppress(asyncio.CancelledError):
            await forward


async def _forward(
    method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes, send: Send, workspace_id: str
) -> None:
    started = False
    try:
        async with (
            httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT) as client,
            client.stream(method, url, headers=headers, content=body) as response,
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": _forwarded(list(response.headers.raw)),
                }
            )
            started = True
            # Raw bytes as they arrive: any content-encoding passes through untouched.
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as exc:
        logger.warning(
            "model upstream failed", extra={"workspace_id": workspace_id, "error": f"{type(exc).__name__}: {exc}"}
        )
        if not started:
            await send_json(send, 502, {"error": "model provider unreachable"})
            return
    # After a mid-stream failure the body just ends: a Responses stream without its
    # response.completed event is an error to codex, which retries.
    await send({"type": "http.response.body", "body": b"", "more_body": False})
